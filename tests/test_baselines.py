"""The baselines: fresh retraining, the head-only variant, and that every method returns a new model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfssd_tutorial import baselines as B
from lfssd_tutorial.experiments import build_split_loaders, config_from_dict, load_data, make_split
from lfssd_tutorial.models import SmallCNN
from lfssd_tutorial.training import TrainConfig, seed_everything, train_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    cfg = config_from_dict({
        "name": "t", "data": {"dataset": "digits", "train_subset": 160, "test_subset": 80},
        "model": {"name": "small_cnn", "width": 4}, "train": {"epochs": 1, "lr": 0.05, "milestones": []},
        "scenario": {"kind": "full_class", "targets": ["3"]}, "methods": ["original"], "seeds": [0],
    })
    train_data, eval_data = load_data(cfg, augment=True), load_data(cfg, augment=False)
    split = make_split(cfg, eval_data, "3")
    loaders = build_split_loaders(cfg, train_data, eval_data, split, device=torch.device("cpu"), seed=0)
    seed_everything(0)
    model = SmallCNN(1, 10, width=4)
    train_model(model, loaders.retain_train, TrainConfig(epochs=1, lr=0.05, milestones=()), device="cpu")
    factory = lambda: SmallCNN(1, 10, width=4)  # noqa: E731
    fast = B.BaselineConfig(retrain=TrainConfig(epochs=1, lr=0.05, milestones=()), finetune_epochs=1, amnesiac_epochs=1,
                            unsir_noise_steps=2, unsir_noise_batch=4, unsir_noise_copies=2)
    return model, loaders, factory, fast


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("use_factory", [True, False])
def test_retrain_starts_from_fresh_weights(setup, use_factory):
    model, loaders, factory, _ = setup
    untrained = B.BaselineConfig(retrain=TrainConfig(epochs=0, milestones=()))
    seed_everything(1)
    fresh = B.retrain(model, loaders, untrained, model_factory=factory if use_factory else None, device="cpu")
    orig = _params(model)
    for name, p in fresh.named_parameters():
        assert not torch.equal(p, orig[name]), f"retrain reused the original's {name}"


def test_retrain_trains_and_leaves_original_alone(setup):
    model, loaders, factory, fast = setup
    before = _params(model)
    new = B.retrain(model, loaders, fast, model_factory=factory, device="cpu")
    assert new is not model
    for name, p in new.named_parameters():
        assert not torch.equal(p, before[name])
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])


def test_retrain_head_keeps_the_original_features(setup):
    model, loaders, _, _ = setup
    untrained = B.BaselineConfig(retrain=TrainConfig(epochs=0, milestones=()))
    head = B.retrain_head(model, loaders, untrained, device="cpu")
    orig = _params(model)
    for name, p in head.named_parameters():
        same = torch.equal(p, orig[name])
        assert same != name.startswith("classifier"), name


@pytest.mark.parametrize("name", ["original", "finetune", "bad_teacher", "amnesiac", "unsir"])
def test_each_baseline_returns_a_new_model_deterministically(setup, name):
    model, loaders, factory, fast = setup
    before = _params(model)
    outs = []
    for _ in range(2):
        seed_everything(5)
        out = B.BASELINES[name](model, loaders, fast, model_factory=factory, device="cpu", seed=5)
        assert out is not model
        outs.append(_params(out))
        assert out(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    for k in before:
        assert torch.equal(model.state_dict()[k], before[k]), "the original model was modified"
        assert torch.equal(outs[0][k], outs[1][k]), f"{name} is not reproducible with the same seed"
    changed = any(not torch.equal(outs[0][k], before[k]) for k in before)
    assert changed == (name != "original")


def test_amnesiac_labels_are_always_wrong():
    labels = np.arange(1000) % 7
    wrong = B._random_other_labels(labels, 7, seed=0)
    assert (wrong != labels).all() and wrong.min() >= 0 and wrong.max() < 7
    assert len(np.unique(wrong)) == 7


def test_dampening_method_reports_nothing_selected(setup):
    model, loaders, _, _ = setup
    out, report = B.dampening_method(model, loaders, method="lfssd", alpha=1e6)
    assert report.nothing_selected and report.total_selected == 0
    for (k, a), b in zip(model.state_dict().items(), out.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("field,value", [("finetune_lr", 0.0), ("amnesiac_epochs", -1), ("bad_teacher_retain_fraction", 1.5)])
def test_baseline_config_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        B.BaselineConfig(**{field: value})
