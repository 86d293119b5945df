"""What the well-trained CPU runs add: the ResNet-9, the one-cycle recipe, images decoded into
memory, validation and test halves, alpha "auto" rows and the shared Imp_D of the runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfssd_tutorial import experiments as E
from lfssd_tutorial.data import ImageTensor, full_class_split, load_digits, load_image_folder, random_split
from lfssd_tutorial.experiments import runner
from lfssd_tutorial.experiments.build import uses_channels_last
from lfssd_tutorial.models import build_model, cifar_resnet9, count_parameters
from lfssd_tutorial.request import build_split_loaders, half_accuracies, retain_sample, validation_test_halves
from lfssd_tutorial.training import TrainConfig

from .fake_data import write_image_folder

torch.set_num_threads(1)


# ---------------------------------------------------------------- model and recipe


def test_resnet9_sizes_and_output():
    assert count_parameters(cifar_resnet9(width=16)) == 412_954
    assert count_parameters(cifar_resnet9(width=64)) == 6_573_130
    model = build_model("resnet9", 7, in_channels=1, width=4).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="width"):
        cifar_resnet9(width=0)


def test_channels_last_on_the_cpu_only_for_the_resnet9():
    def cfg(name):
        return E.config_from_dict({"name": "t", "model": {"name": name}, "scenario": {"kind": "full_class", "targets": ["1"]}, "methods": ["original"]})

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_channels_last(cfg("resnet9"), cpu) and not uses_channels_last(cfg("resnet18"), cpu)
    assert uses_channels_last(cfg("resnet18"), cuda) and not uses_channels_last(cfg("small_vit"), cuda)


def test_onecycle_rises_then_falls_to_zero():
    cfg = TrainConfig(epochs=4, lr=0.2, schedule="onecycle", warmup_epochs=1)
    lrs = [cfg.lr_at(step, 10) for step in range(40)]
    assert lrs[0] == pytest.approx(0.02) and lrs[9] == pytest.approx(0.2)
    assert lrs[10] == pytest.approx(0.2)  # the first step after the warm-up starts the fall from the peak
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.2 / 30) and cfg.lr_at(40, 10) == 0


def test_multistep_matches_warmup_then_milestones():
    cfg = TrainConfig(epochs=6, lr=0.1, milestones=(2, 4), gamma=0.5, warmup_epochs=1)
    expected = [0.1 * (s + 1) / 5 for s in range(5)] + [0.1] * 5 + [0.05] * 10 + [0.025] * 10
    assert [cfg.lr_at(s, 5) for s in range(30)] == pytest.approx(expected)


@pytest.mark.parametrize("bad", [{"schedule": "cosine"}, {"label_smoothing": 1.0}, {"warmup_epochs": -1},
                                 {"nesterov": True, "momentum": 0.0}])
def test_bad_recipes_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_label_smoothing_changes_training():
    from lfssd_tutorial.models import SmallCNN
    from lfssd_tutorial.data import make_loader
    from lfssd_tutorial.training import train_model

    data = load_digits()
    weights = []
    for smoothing in (0.0, 0.2):
        torch.manual_seed(0)
        model = train_model(SmallCNN(width=4), make_loader(data.train, batch_size=128),
                            TrainConfig(epochs=1, lr=0.05, milestones=(), label_smoothing=smoothing))
        weights.append(model.classifier.weight.detach().clone())
    assert not torch.equal(*weights)


# ---------------------------------------------------------------- images in memory


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(str(root), per_class=6)
    return root


def test_in_memory_images_equal_the_streamed_ones(folder):
    streamed = load_image_folder(folder, augment=False)
    memory = load_image_folder(folder, augment=False, in_memory=True)
    assert memory.classes == streamed.classes and memory.input_shape == (3, 32, 32)
    assert np.array_equal(memory.train_labels, streamed.train_labels)
    for i in range(len(streamed.test)):
        x, y = streamed.test[i]
        x2, y2 = memory.test[i]
        assert y == y2 and torch.equal(x, x2)


def test_in_memory_augmentation_is_a_padded_crop_and_a_flip(folder):
    data = load_image_folder(folder, augment=True, in_memory=True)
    plain = ImageTensor(data.train.images, data.train.labels, (0, 0, 0), (1, 1, 1))
    raw = plain[0][0]
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    candidates = [w for dy in range(9) for dx in range(9) for w in (padded[:, dy:dy + 32, dx:dx + 32],)]
    candidates += [c.flip(-1) for c in candidates]
    aug = ImageTensor(data.train.images, data.train.labels, (0, 0, 0), (1, 1, 1), augment=True)
    torch.manual_seed(0)
    seen = [aug[0][0] for _ in range(20)]
    assert all(any(torch.equal(s, c) for c in candidates) for s in seen)
    assert len({s.sum().item() for s in seen}) > 1  # the draws differ


def test_in_memory_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        ImageTensor(torch.zeros(2, 3, 4, 4), [0, 1], (0,), (1,))
    with pytest.raises(ValueError, match="one label per image"):
        ImageTensor(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), [0], (0,), (1,))
    with pytest.raises(ValueError, match="must all be 64x64"):
        load_image_folder(folder, in_memory=True, size=64)
    with pytest.raises(E.ConfigError, match="data.in_memory"):
        E.config_from_dict({"name": "t", "data": {"dataset": "digits", "in_memory": True},
                            "scenario": {"kind": "full_class", "targets": ["1"]}, "methods": ["original"]})


# ---------------------------------------------------------------- halves and the retained sample


def test_half_accuracies_partition_the_test_set():
    from lfssd_tutorial.models import SmallCNN

    data = load_digits()
    torch.manual_seed(0)
    model = SmallCNN(width=4).eval()
    val, test = validation_test_halves(data.test_labels, seed=0)
    assert not np.intersect1d(val, test).size and len(val) + len(test) == len(data.test_labels)
    split = full_class_split(data, "3")
    acc = half_accuracies(model, data, split, {"val": val, "test": test, "all": np.arange(len(data.test_labels))})
    from lfssd_tutorial.metrics import evaluate_accuracy
    from lfssd_tutorial.data import make_loader
    assert acc["all_retain"] == pytest.approx(evaluate_accuracy(model, make_loader(split.test_retain_set(data))))
    n_val = np.isin(split.test_retain, val).sum()
    n_test = len(split.test_retain) - n_val
    assert acc["all_retain"] == pytest.approx((acc["val_retain"] * n_val + acc["test_retain"] * n_test) / (n_val + n_test))
    rand = random_split(data, n=20, seed=0)
    acc = half_accuracies(model, data, rand, {"val": val, "test": test})
    assert acc["val_forget"] == acc["test_forget"]  # D_f is training data: no half


def test_retain_sample_draws_without_replacement_and_ignores_nothing():
    data = load_digits()
    loaders = build_split_loaders(data, data, full_class_split(data, "3"), batch_size=64)
    sample = retain_sample(loaders, 100, seed=1)
    assert len(sample.dataset) == 100 and len(set(sample.dataset.indices)) == 100
    assert sample.dataset.indices == retain_sample(loaders, 100, seed=1).dataset.indices
    assert len(retain_sample(loaders, 10**6).dataset) == len(loaders.retain.dataset)


# ---------------------------------------------------------------- the runner


def test_memory_resnet9_run_with_validation_auto_alpha_and_one_imp_d_per_method(folder, tmp_path, monkeypatch):
    calls = []
    real = runner.compute_importance

    def counting(model, loader, **kwargs):
        calls.append(kwargs["objective"])
        return real(model, loader, **kwargs)

    monkeypatch.setattr(runner, "compute_importance", counting)
    cfg = E.config_from_dict({
        "name": "t-scale", "data": {"dataset": "imagefolder", "root": str(folder), "in_memory": True, "validation": True,
                                    "batch_size": 8},
        "model": {"name": "resnet9", "width": 2},
        "train": {"epochs": 1, "lr": 0.05, "schedule": "onecycle", "warmup_epochs": 0.5, "nesterov": True,
                  "label_smoothing": 0.2},
        "scenario": {"kind": "full_class", "targets": ["dog", "cat"]},
        "methods": ["original", "retrain", "lfssd", {"method": "lfssd", "alpha": 2},
                    {"method": "lfssd", "alpha": "auto", "calibration_lambdas": [0.5, 1], "calibration_forget_sample": 5},
                    {"method": "ssd", "alpha": 2}, {"method": "lfssd", "granularity": "sample", "alpha": 2}],
        "seeds": [0],
    })
    assert cfg.labels()[4] == "LFSSD (alpha=auto, lambda=auto)"
    records = E.run_forget(cfg, out_dir=str(tmp_path), device="cpu")
    # Imp_D once per target and method at batch granularity, once per seed at sample granularity
    # (the forget passes are not the runner's)
    assert sorted(calls) == ["fisher", "fisher", "l2", "l2", "l2"]
    random_cfg = E.config_from_dict({**cfg.to_dict(), "name": "t-scale-random",
                                     "scenario": {"kind": "random", "forget_n": 3},
                                     "methods": [{"method": "lfssd", "granularity": "sample", "alpha": 2}]})
    calls.clear()
    E.run_forget(random_cfg, out_dir=str(tmp_path), device="cpu")
    assert calls == []  # the other config of the same models reads the saved per-sample Imp_D
    for r in records:
        for k in ("val_retain", "val_forget", "test_retain", "test_forget"):
            assert 0.0 <= r[k] <= 100.0
    auto = records[4]
    assert auto["alpha_rule"] == "auto" and isinstance(auto["alpha"], float) and "calibration_warning" in auto
    assert auto["lambda"] in (0.5, 1.0) and auto["set_aside"] >= 0


# ---------------------------------------------------------------- batches cut on the device


def test_device_batches_cover_each_sample_once_and_augment_like_the_dataset(folder):
    from lfssd_tutorial.data import DeviceBatches

    data = load_image_folder(folder, augment=False, in_memory=True)
    subset = torch.utils.data.Subset(data.train, list(range(3, 18)))
    batches = DeviceBatches(subset, batch_size=4, seed=0, augment=False, indices=[0, 2, 4, 6, 8, 10, 12])
    assert len(batches) == 2
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(data.train_labels[[3, 5, 7, 9, 11, 13, 15]].tolist())
    plain = {i: data.train[i][0] for i in (3, 5, 7, 9, 11, 13, 15)}
    for x, _ in DeviceBatches(subset, batch_size=7, seed=1, augment=False, shuffle=False, indices=[0, 2, 4, 6, 8, 10, 12]):
        assert all(torch.equal(x[k], plain[i]) for k, i in enumerate((3, 5, 7, 9, 11, 13, 15)))
    # augmented: every image is a padded crop of its source, possibly flipped
    raw = ImageTensor(data.train.images, data.train.labels, (0, 0, 0), (1, 1, 1))
    aug = DeviceBatches(ImageTensor(data.train.images, data.train.labels, (0, 0, 0), (1, 1, 1)), batch_size=64, seed=2,
                        shuffle=False)
    (x, _), = list(aug)
    for i in range(len(x)):
        padded = torch.nn.functional.pad(raw[i][0], (4, 4, 4, 4))
        crops = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(x[i], c) or torch.equal(x[i], c.flip(-1)) for c in crops)
    again = [b for b, _ in DeviceBatches(ImageTensor(data.train.images, data.train.labels, (0, 0, 0), (1, 1, 1)),
                                         batch_size=64, seed=2, shuffle=False)]
    assert torch.equal(again[0], x)  # seeded
    with pytest.raises(TypeError, match="ImageTensor"):
        DeviceBatches(load_digits().train, batch_size=4)


def test_runner_trains_from_device_batches(folder, tmp_path):
    cfg = E.config_from_dict({
        "name": "t-device", "data": {"dataset": "imagefolder", "root": str(folder), "in_memory": True,
                                     "device_batches": True, "batch_size": 8},
        "model": {"name": "resnet9", "width": 2}, "train": {"epochs": 1, "lr": 0.05, "milestones": []},
        "scenario": {"kind": "full_class", "targets": ["dog"]}, "methods": ["original", "retrain"], "seeds": [0],
    })
    records = E.run_forget(cfg, out_dir=str(tmp_path), device="cpu")
    assert [r["label"] for r in records] == ["Original", "Retrain"]
    with pytest.raises(E.ConfigError, match="device_batches"):
        E.config_from_dict({**cfg.to_dict(), "data": {"dataset": "imagefolder", "device_batches": True}})


def test_committed_training_sidecars_match_their_configs():
    """The CPU run's checkpoints are named by training_id: a schema change must not rename them."""
    import json
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "cifar10-resnet9-cpu")
    sidecars = sorted(os.listdir(os.path.join(root, "trainings")))
    assert sidecars
    ids = {runner.training_id(E.load_config(os.path.join(root, "..", "..", "configs", f"cifar10_cpu_resnet9_{kind}.yaml")))
           for kind in ("full_class", "random")}
    assert len(ids) == 1
    for name in sidecars:
        assert name.split("-")[1] in ids, name
        with open(os.path.join(root, "trainings", name)) as f:
            info = json.load(f)
        assert info["config"]["model"] == {"name": "resnet9", "width": 16, "pretrained": True, "options": {}}
        if info["kind"] == "original":
            assert info["test_accuracy"] >= 80.0  # the bar of this run for a well-trained model


def test_committed_checkpoints_load_into_the_configs_model():
    """The CPU run's committed models are state_dicts of the config's ResNet-9, each with its
    sidecar, and a model trained again gives the accuracy the first run recorded."""
    import json
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "cifar10-resnet9-cpu")
    folder = os.path.join(root, "checkpoints")
    models = sorted(n for n in os.listdir(folder) if n.endswith(".pt")) if os.path.isdir(folder) else []
    if not models:
        pytest.skip("no committed checkpoint")
    config = E.load_config(os.path.join(root, "..", "..", "configs", "cifar10_cpu_resnet9_full_class.yaml"))
    model = build_model(config.model.name, 10, width=config.model.width)
    for name in models:
        state = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # raises on a missing, extra or misshapen tensor
        with open(os.path.join(folder, name + ".json")) as f:
            info = json.load(f)
        first = os.path.join(root, "trainings", name + ".json")
        if os.path.exists(first):
            with open(first) as f:
                recorded = json.load(f)
            for key in ("test_accuracy", "acc_retain", "acc_forget"):
                assert info.get(key) == recorded.get(key), (name, key)


def test_committed_cpu_run_has_every_cell_and_sweep_of_its_configs():
    """The CPU run is complete: one record per row of both configs, seed and request (none of a
    row the configs no longer have), calibrated rows that record the lambda and set-aside
    count they chose, and every alpha x lambda sweep of run.sh at both granularities."""
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "cifar10-resnet9-cpu")
    records = E.read_results(os.path.join(root, "results.jsonl"))
    expected, sweeps = set(), set()
    for kind in ("full_class", "random"):
        config = E.load_config(os.path.join(root, "..", "..", "configs", f"cifar10_cpu_resnet9_{kind}.yaml"))
        for target in config.scenario.target_list():
            for seed in config.seeds:
                expected |= {(config.name, str(target), label, seed) for label in config.labels()}
                sweeps |= {f"sweep-{method}-{granularity}-{E.file_slug(target)}-seed{seed}.jsonl"
                           for method in ("ssd", "lfssd") for granularity in ("batch", "sample")}
    found = [(r["experiment"], r["target"], r["label"], r["seed"]) for r in records]
    assert len(found) == len(set(found)), "a cell is recorded twice"
    assert set(found) == expected
    auto = [r for r in records if r.get("alpha_rule") == "auto"]
    assert len(auto) == 18 and all(r["lambda"] in (0.5, 1.0, 2.0) and r["set_aside"] >= 0 for r in auto)
    grid = {(a, lam) for a in (1.5, 2, 3, 5, 7, 10) for lam in (0.5, 1)}
    for name in sorted(sweeps):
        points = E.read_results(os.path.join(root, name))
        assert {(p["alpha"], p["lambda"]) for p in points} == grid, name
