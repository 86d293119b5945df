"""The baselines' defaults are the authors' settings, and each documented difference is real."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lfssd_tutorial import baselines as B
from lfssd_tutorial.options import BaselineConfig, MethodOptions
from lfssd_tutorial.reference import BASELINE_SETTINGS, baseline_settings_table

torch.set_num_threads(1)

# The authors' code at cdfdc0e, read setting by setting (see lfssd_tutorial/reference.py).
PINNED = {
    "retrain_head_lr": 0.01,
    "finetune_epochs": 5, "finetune_lr": 0.02, "finetune_momentum": 0.9, "finetune_weight_decay": 5e-4,
    "bad_teacher_epochs": 1, "bad_teacher_lr": 1e-4, "bad_teacher_retain_fraction": 0.3,
    "bad_teacher_temperature": 1.0, "bad_teacher_batch_size": 256,
    "amnesiac_epochs": 3, "amnesiac_lr": 1e-4, "amnesiac_batch_size": 128,
    "unsir_noise_steps": 25, "unsir_noise_batch": 32, "unsir_noise_lr": 0.1, "unsir_noise_copies": 80,
    "unsir_noise_kept": None, "unsir_samples_per_class": 500, "unsir_batch_size": 32, "unsir_repair_batch_size": 128,
    "unsir_impair_lr": 1e-4, "unsir_repair_lr": 1e-4,
}


def test_defaults_are_pinned():
    defaults = BaselineConfig()
    assert {k: getattr(defaults, k) for k in PINNED} == PINNED


@pytest.mark.parametrize("setting", [s for s in BASELINE_SETTINGS if s.field is not None], ids=lambda s: s.field)
def test_each_field_equals_the_reference_unless_a_reason_is_given(setting):
    if setting.why is None:
        assert setting.value() == setting.reference
    else:  # a documented difference: it must really differ, and the reference's value must be settable
        assert setting.value() != setting.reference
        assert getattr(BaselineConfig(**{setting.field: setting.reference}), setting.field) == setting.reference


def test_every_field_of_the_table_exists_and_every_row_renders():
    fields = {f.name for f in dataclasses.fields(BaselineConfig)}
    assert all(s.field in fields for s in BASELINE_SETTINGS if s.field is not None)
    rows = baseline_settings_table()
    assert len(rows) == len(BASELINE_SETTINGS)
    assert all(r["ours"] for r in rows)
    assert all((r["reference"] == r["ours"]) == (r["why"] == "") for r in rows)
    by_setting = {(r["baseline"], r["setting"]): r for r in rows}
    assert by_setting[("finetune", "learning rate")] == {"baseline": "finetune", "setting": "learning rate",
                                                         "reference": "0.02", "ours": "0.02", "why": ""}
    assert by_setting[("unsir", "noise images kept per batch")]["ours"] == "all"
    assert baseline_settings_table(BaselineConfig(unsir_noise_kept=3))[
        [r["setting"] for r in rows].index("noise images kept per batch")]["ours"] == "3"


@pytest.mark.parametrize("bad", [{"unsir_noise_kept": 0}, {"unsir_noise_kept": 33}, {"amnesiac_batch_size": 0},
                                 {"finetune_momentum": -0.1}, {"retrain_head_lr": 0}])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BaselineConfig(**bad)


class _Recorder:
    """Replaces ``baselines._fit`` to record each training's optimiser and data instead of training."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, loader, epochs, opt, device, amp, progress, desc):
        self.calls.append({"desc": desc, "opt": opt, "loader": loader, "epochs": epochs})
        return model


@pytest.fixture()
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(B, "_fit", rec)
    return rec


@pytest.fixture(scope="module")
def request_():
    from lfssd_tutorial.data import full_class_split, load_digits
    from lfssd_tutorial.models import SmallCNN
    from lfssd_tutorial.request import build_split_loaders

    data = load_digits()
    loaders = build_split_loaders(data, data, full_class_split(data, "3"), batch_size=64, seed=0)
    torch.manual_seed(0)
    return SmallCNN(1, 10, width=4), loaders


def test_finetune_is_sgd_with_momentum_and_weight_decay(recorder, request_):
    model, loaders = request_
    B.finetune(model, loaders, MethodOptions(device="cpu"))
    (call,) = recorder.calls
    assert isinstance(call["opt"], torch.optim.SGD) and call["epochs"] == 5
    group = call["opt"].param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.9, 5e-4)
    assert call["loader"].batch_size == 64 and len(call["loader"].dataset) == len(loaders.retain.dataset)


def test_amnesiac_and_bad_teacher_batch_sizes(recorder, request_):
    model, loaders = request_
    B.amnesiac(model, loaders, MethodOptions(device="cpu"))
    (call,) = recorder.calls
    assert isinstance(call["opt"], torch.optim.Adam) and call["loader"].batch_size == 128
    assert len(call["loader"].dataset) == len(loaders.retain.dataset) + len(loaders.forget.dataset)


@pytest.mark.parametrize("kept", [None, 3])
def test_unsir_noisy_set_and_retained_sample(recorder, request_, kept):
    model, loaders = request_
    config = BaselineConfig(unsir_noise_steps=1, unsir_noise_kept=kept, unsir_samples_per_class=20)
    B.unsir(model, loaders, MethodOptions(baselines=config, device="cpu"))
    impair, repair = recorder.calls
    retained = repair["loader"].dataset
    assert len(retained) == 9 * 20  # 20 images of each of the nine retained digits
    labels = loaders.retain_labels[np.asarray(retained.indices) if hasattr(retained, "indices") else None]
    assert np.bincount(labels, minlength=10).tolist() == [20, 20, 20, 0, 20, 20, 20, 20, 20, 20]
    assert len(impair["loader"].dataset) == 80 * (kept or 32) + 9 * 20
    assert (impair["loader"].batch_size, repair["loader"].batch_size) == (32, 128)
