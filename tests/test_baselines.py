"""The baselines: fresh retraining, the head-only variant, and that every method returns a new model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from torch.utils.data import Subset

from lfssd_tutorial import baselines as B
from lfssd_tutorial.data import DataBundle, full_class_split, load_digits
from lfssd_tutorial.methods import METHODS, run_method
from lfssd_tutorial.models import SmallCNN
from lfssd_tutorial.options import BaselineConfig, MethodOptions
from lfssd_tutorial.request import build_split_loaders
from lfssd_tutorial.training import TrainConfig, seed_everything, train_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    data = _first(load_digits(), n_train=160, n_test=80)
    split = full_class_split(data, "3")
    loaders = build_split_loaders(data, data, split, batch_size=64, seed=0)
    seed_everything(0)
    model = SmallCNN(1, 10, width=4)
    train_model(model, loaders.retain_train, TrainConfig(epochs=1, lr=0.05, milestones=()), device="cpu")
    factory = lambda: SmallCNN(1, 10, width=4)  # noqa: E731
    fast = BaselineConfig(retrain=TrainConfig(epochs=1, lr=0.05, milestones=()), finetune_epochs=1, amnesiac_epochs=1,
                            unsir_noise_steps=2, unsir_noise_batch=4, unsir_noise_copies=2)
    return model, loaders, factory, fast


def _first(data: DataBundle, *, n_train: int, n_test: int) -> DataBundle:
    """The first ``n_train`` training and ``n_test`` test samples of ``data``."""
    return DataBundle(name=data.name, train=Subset(data.train, range(n_train)), test=Subset(data.test, range(n_test)),
                      train_labels=data.train_labels[:n_train], test_labels=data.test_labels[:n_test],
                      classes=data.classes, input_shape=data.input_shape)


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("use_factory", [True, False])
def test_retrain_starts_from_fresh_weights(setup, use_factory):
    model, loaders, factory, _ = setup
    untrained = BaselineConfig(retrain=TrainConfig(epochs=0, milestones=()))
    seed_everything(1)
    options = MethodOptions(baselines=untrained, model_factory=factory if use_factory else None, device="cpu")
    fresh = B.retrain(model, loaders, options).model
    orig = _params(model)
    for name, p in fresh.named_parameters():
        assert not torch.equal(p, orig[name]), f"retrain reused the original's {name}"


def test_retrain_trains_and_leaves_original_alone(setup):
    model, loaders, factory, fast = setup
    before = _params(model)
    new = B.retrain(model, loaders, MethodOptions(baselines=fast, model_factory=factory, device="cpu")).model
    assert new is not model
    for name, p in new.named_parameters():
        assert not torch.equal(p, before[name])
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])


def test_retrain_head_keeps_the_original_features(setup):
    model, loaders, _, _ = setup
    untrained = BaselineConfig(retrain=TrainConfig(epochs=0, milestones=()))
    head = B.retrain_head(model, loaders, MethodOptions(baselines=untrained, device="cpu")).model
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
        result = METHODS[name](model, loaders, MethodOptions(baselines=fast, model_factory=factory, device="cpu", seed=5))
        out = result.model
        assert out is not model and result.report is None
        outs.append(_params(out))
        assert out(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    for k in before:
        assert torch.equal(model.state_dict()[k], before[k]), "the original model was modified"
        assert torch.equal(outs[0][k], outs[1][k]), f"{name} is not reproducible with the same seed"
    changed = any(not torch.equal(outs[0][k], before[k]) for k in before)
    assert changed == (name != "original")


def test_amnesiac_labels_are_always_wrong():
    labels = np.arange(1000) % 7
    wrong = B.random_other_labels(labels, 7, seed=0)
    assert (wrong != labels).all() and wrong.min() >= 0 and wrong.max() < 7
    assert len(np.unique(wrong)) == 7


@pytest.mark.parametrize("method", ["ssd", "lfssd"])
def test_dampening_method_reports_nothing_selected(setup, method):
    model, loaders, _, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the registry's methods record it in the report, without a warning
        result = run_method(method, model, loaders, MethodOptions(alpha=1e6))
    out, report = result.model, result.report
    assert report.nothing_selected and report.total_selected == 0
    for (k, a), b in zip(model.state_dict().items(), out.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("field,value", [("finetune_lr", 0.0), ("amnesiac_epochs", -1), ("bad_teacher_retain_fraction", 1.5)])
def test_baseline_config_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        BaselineConfig(**{field: value})


def test_dampening_methods_need_alpha(setup):
    model, loaders, _, _ = setup
    with pytest.raises(ValueError, match="alpha"):
        run_method("lfssd", model, loaders, MethodOptions())


def test_run_method_names_the_choices(setup):
    model, loaders, _, _ = setup
    with pytest.raises(ValueError, match="'unsir'"):
        run_method("nope", model, loaders, MethodOptions())
    assert set(METHODS) == {"original", "retrain", "retrain_head", "finetune", "bad_teacher", "amnesiac", "unsir", "ssd", "lfssd",
                            "ssd_true_fisher"}
