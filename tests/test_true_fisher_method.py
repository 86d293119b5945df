"""SSD on the true Fisher as a method: unlearn, the registry, configs and the runner."""

from __future__ import annotations

import pytest
import torch

import lfssd_tutorial as lf
from lfssd_tutorial import experiments as E
from lfssd_tutorial.digits import digits_request
from lfssd_tutorial.methods import METHODS, run_method
from lfssd_tutorial.options import MethodOptions
from lfssd_tutorial.training import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def request_():
    return digits_request(8, train_config=TrainConfig(epochs=3, lr=0.05, milestones=(2,)))


def test_unlearn_with_the_true_fisher_needs_no_labels(request_):
    loaders = request_.loaders
    bare = [x for x, _ in loaders.forget]  # inputs only
    full = lf.compute_importance(request_.original, loaders.full, objective="true_fisher", label_samples=1, seed=0)
    a, report_a = lf.unlearn(request_.original, bare, method="ssd_true_fisher", full_importance=full, alpha=2.0,
                             label_samples=1, seed=0, warn=False)
    b, report_b = lf.unlearn(request_.original, loaders.forget, method="ssd_true_fisher", full_importance=full, alpha=2.0,
                             label_samples=1, seed=0, warn=False)
    assert report_a.total_selected == report_b.total_selected > 0
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="label_samples applies"):
        lf.unlearn(request_.original, loaders.forget, method="lfssd", full_importance=full, alpha=2.0, label_samples=1)


def test_registry_and_config(request_):
    assert "ssd_true_fisher" in METHODS
    result = run_method("ssd_true_fisher", request_.original, request_.loaders, MethodOptions(alpha=2.0, label_samples=1))
    assert result.report is not None
    spec = E.MethodSpec("ssd_true_fisher", alpha=2.0, label_samples=1)
    assert spec.dampening and E.method_label(spec) == "SSD-true-Fisher (alpha=2, sampled labels)"
    assert E.default_alpha("ssd_true_fisher", "resnet18", "full_class") == E.default_alpha("ssd", "resnet18", "full_class")
    with pytest.raises(E.ConfigError, match="label_samples"):
        E.MethodSpec("ssd", label_samples=1)


def test_runner_row(tmp_path):
    cfg = E.config_from_dict({
        "name": "t-tf", "data": {"dataset": "digits", "train_subset": 60, "test_subset": 30},
        "model": {"name": "small_cnn", "width": 4}, "train": {"epochs": 1, "lr": 0.05, "milestones": []},
        "scenario": {"kind": "full_class", "targets": ["3"]},
        "methods": ["original", {"method": "ssd_true_fisher", "alpha": 2},
                    {"method": "ssd_true_fisher", "alpha": 2, "granularity": "sample", "label_samples": 1}],
        "seeds": [0],
    })
    records = E.run_forget(cfg, out_dir=str(tmp_path), device="cpu")
    assert [r["label"] for r in records] == ["Original", "SSD-true-Fisher (alpha=2)",
                                             "SSD-true-Fisher-sample (alpha=2, sampled labels)"]
    assert all("selected" in r for r in records[1:])
