"""The experiment runner: every scenario x method end to end, resume, splits, configs, reports."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from lfssd_tutorial import experiments as E
from lfssd_tutorial.data import CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES, CIFAR100_FINE_TO_COARSE

torch.set_num_threads(1)

ALL_METHODS = ["original", "retrain", "retrain_head", "finetune", "bad_teacher", "amnesiac", "unsir", "ssd", "lfssd",
               {"method": "ssd", "granularity": "sample", "alpha": 2}, {"method": "lfssd", "granularity": "sample", "alpha": 2}]
FAST = {"finetune_epochs": 1, "amnesiac_epochs": 1, "unsir_noise_steps": 2, "unsir_noise_batch": 4, "unsir_noise_copies": 2}
TRAIN = {"epochs": 1, "lr": 0.05, "milestones": []}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- tiny CIFAR in the official format


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(n, rng):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    """CIFAR-10 and CIFAR-100 files as torchvision reads them (pickled dicts), a few images each."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        _dump(c10 / f"data_batch_{i}", {"data": _images(12, rng), "labels": [int(v) for v in (np.arange(12) + i) % 10]})
    _dump(c10 / "test_batch", {"data": _images(20, rng), "labels": [int(v) for v in np.arange(20) % 10]})
    _dump(c10 / "batches.meta", {"label_names": CIFAR10_CLASSES})
    c100 = root / "cifar-100-python"
    c100.mkdir()
    for split, n in (("train", 100), ("test", 100)):
        fine = np.arange(n) % 100
        coarse = np.asarray(CIFAR100_FINE_TO_COARSE)[fine]
        _dump(c100 / split, {"data": _images(n, rng), "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()})
    _dump(c100 / "meta", {"fine_label_names": list(CIFAR100_FINE_CLASSES), "coarse_label_names": list(CIFAR100_COARSE_CLASSES)})
    return root


@pytest.fixture
def no_checksum(monkeypatch):
    """torchvision verifies the real files' MD5 sums; the fake files cannot match them."""
    from torchvision.datasets import CIFAR10, cifar

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture(scope="module")
def fake_image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        for c in ("cat", "dog", "ship"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.jpg")
    return root


def _cfg(name, data, scenario, model=None, methods=None, seeds=(0,)):
    return E.config_from_dict({
        "name": name, "data": data, "model": model or {"name": "small_cnn", "width": 4}, "train": TRAIN,
        "scenario": scenario, "methods": methods or ALL_METHODS, "baselines": FAST, "seeds": list(seeds),
    })


SCENARIOS = {
    "digits-full-cnn": ({"dataset": "digits", "train_subset": 60, "test_subset": 30}, {"kind": "full_class", "targets": ["3"]}, None),
    "digits-sub-resnet": ({"dataset": "digits-super", "train_subset": 60, "test_subset": 30}, {"kind": "sub_class", "targets": ["8"]},
                          {"name": "resnet18", "width": 2}),
    "digits-random-vit": ({"dataset": "digits", "train_subset": 60, "test_subset": 30}, {"kind": "random", "forget_n": 6},
                          {"name": "small_vit", "options": {"patch_size": 4, "num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 8}}),
    "cifar100-full": ({"dataset": "cifar100"}, {"kind": "full_class", "targets": ["rocket"]}, None),
    "cifar20-full": ({"dataset": "cifar20"}, {"kind": "full_class", "targets": ["vehicles_2"]}, None),
    "cifar20-sub": ({"dataset": "cifar20"}, {"kind": "sub_class", "targets": ["rocket"]}, None),
    "cifar10-random": ({"dataset": "cifar10"}, {"kind": "random", "forget_n": 6}, {"name": "resnet18", "width": 2}),
    "imagefolder-full": ({"dataset": "imagefolder"}, {"kind": "full_class", "targets": ["dog"]}, None),
}


@pytest.mark.parametrize("case", list(SCENARIOS))
def test_every_method_runs_end_to_end(case, tmp_path, fake_cifar, fake_image_folder, no_checksum):
    data, scenario, model = SCENARIOS[case]
    data = dict(data)
    if data["dataset"].startswith("cifar"):
        data["root"] = str(fake_cifar)
    elif data["dataset"] == "imagefolder":
        data["root"] = str(fake_image_folder)
    cfg = _cfg(f"t-{case}", data, scenario, model)
    records = E.run_forget(cfg, out_dir=str(tmp_path), device="cpu")
    assert [r["label"] for r in records] == cfg.labels()
    for r in records:
        for k in ("acc_retain", "acc_forget", "mia"):
            assert 0.0 <= r[k] <= 100.0
        assert r["scenario"] == scenario["kind"] and r["n_forget"] > 0
    dampened = [r for r in records if r["method"] in ("ssd", "lfssd")]
    assert dampened and all("selected" in r and "max_ratio" in r for r in dampened)
    rep = E.write_report(str(tmp_path))
    assert os.path.exists(tmp_path / "report.md") and os.path.exists(tmp_path / "summary.csv")
    assert any(f.endswith(".png") for f in rep["files"])


def test_cifar20_sub_class_split_keeps_superclass_labels(fake_cifar, no_checksum):
    cfg = _cfg("t", {"dataset": "cifar20", "root": str(fake_cifar)}, {"kind": "sub_class", "targets": ["rocket"]})
    data = E.load_data(cfg, augment=False)
    split = E.make_split(cfg, data, "rocket")
    rocket = CIFAR100_FINE_CLASSES.index("rocket")
    vehicles_2 = CIFAR100_COARSE_CLASSES.index("vehicles_2")
    assert CIFAR100_FINE_TO_COARSE[rocket] == vehicles_2
    assert (data.train_fine[split.forget] == rocket).all() and (data.train_labels[split.forget] == vehicles_2).all()
    assert (data.test_labels[split.test_forget] == vehicles_2).all()
    # the superclass stays a retained label (its other fine classes are kept) ...
    assert (data.train_labels[split.retain] == vehicles_2).any()
    assert not (data.train_fine[split.retain] == rocket).any()
    # ... and the samples the loaders yield carry the superclass label, not the fine one
    _, y = split.forget_set(data)[0]
    assert y == vehicles_2
    assert split.meta["superclass"] == "vehicles_2"


def test_digits_sub_class_split_keeps_superclass_labels():
    cfg = _cfg("t", {"dataset": "digits-super"}, {"kind": "sub_class", "targets": ["8"]})
    data = E.load_data(cfg, augment=False)
    split = E.make_split(cfg, data, "8")
    assert set(data.train_labels[split.forget]) == {data.class_index("three_eight")}
    assert (data.train_labels[split.retain] == data.class_index("three_eight")).any()


def _digits_cfg(seeds=(0, 1)):
    return _cfg("t-resume", {"dataset": "digits", "train_subset": 60, "test_subset": 30},
                {"kind": "full_class", "targets": ["1", "2"]}, methods=["original", "retrain", "amnesiac", "ssd", "lfssd"], seeds=seeds)


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_identical_results_file(tmp_path):
    cfg = _digits_cfg()
    clean = tmp_path / "clean"
    E.run_forget(cfg, out_dir=str(clean), device="cpu")
    total = len(cfg.seeds) * len(cfg.scenario.targets) * len(cfg.methods)

    resumed = tmp_path / "resumed"
    seen = []

    def kill_after_seven(record):
        seen.append(record["key"])
        if len(seen) == 7:
            raise _Interrupt  # as if the process were killed after the 7th cell was written

    with pytest.raises(_Interrupt):
        E.run_forget(cfg, out_dir=str(resumed), device="cpu", on_cell=kill_after_seven)
    assert len(E.read_results(resumed / "results.jsonl")) == 7
    # a second interruption by cell budget, then the rest
    E.run_forget(cfg, out_dir=str(resumed), device="cpu", max_cells=4)
    assert len(E.read_results(resumed / "results.jsonl")) == 11
    final = E.run_forget(cfg, out_dir=str(resumed), device="cpu")
    assert len(final) == total
    assert (resumed / "results.jsonl").read_bytes() == (clean / "results.jsonl").read_bytes()
    # nothing is recomputed once complete
    calls = []
    E.run_forget(cfg, out_dir=str(resumed), device="cpu", on_cell=calls.append)
    assert calls == []
    # timings live in their own file, one per cell
    assert len(E.read_results(resumed / "timings.jsonl")) == total


def test_methods_filter_runs_chosen_rows_first_and_the_rest_gives_the_same_cells(tmp_path):
    cfg = _digits_cfg(seeds=(0,))
    clean = tmp_path / "clean"
    E.run_forget(cfg, out_dir=str(clean), device="cpu")
    parts = tmp_path / "parts"
    first = E.run_forget(cfg, out_dir=str(parts), device="cpu", methods=["*SSD*", "Original"])
    assert sorted({r["label"] for r in first}) == ["LFSSD (alpha=10)", "Original", "SSD (alpha=10)"]
    E.run_forget(cfg, out_dir=str(parts), device="cpu")
    by_key = lambda path: {r["key"]: r for r in E.read_results(path / "results.jsonl")}
    assert by_key(parts) == by_key(clean)
    with pytest.raises(ValueError, match="match no row"):
        E.run_forget(cfg, out_dir=str(parts), device="cpu", methods=["Finetune"])


def test_checkpoints_are_state_dicts_with_a_sidecar(tmp_path):
    cfg = _digits_cfg(seeds=(0,))
    E.run_train(cfg, out_dir=str(tmp_path), device="cpu")
    ckpts = sorted(p for p in os.listdir(tmp_path / "checkpoints") if p.endswith(".pt"))
    assert len(ckpts) == 3  # the original and one retrained model per target
    for name in ckpts:
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        with open(tmp_path / "checkpoints" / (name + ".json")) as f:
            side = json.load(f)
        for key in ("config", "seed", "wall_seconds", "hardware", "peak_rss_mb"):
            assert key in side, key
        assert ("test_accuracy" in side) or ("acc_retain" in side and "acc_forget" in side)
    # load-or-train: a second call loads instead of training
    before = {n: os.path.getmtime(tmp_path / "checkpoints" / n) for n in ckpts}
    E.run_train(cfg, out_dir=str(tmp_path), device="cpu")
    assert before == {n: os.path.getmtime(tmp_path / "checkpoints" / n) for n in ckpts}


def test_sweep_writes_a_grid_and_a_heatmap(tmp_path):
    cfg = _digits_cfg(seeds=(0,))
    recs = E.run_sweep(cfg, out_dir=str(tmp_path), method="lfssd", alphas=[1, 2, 1e6], lambdas=[0.5, 1], device="cpu")
    assert sorted((r["alpha"], r["lambda"]) for r in recs) == sorted((a, lam) for a in (1.0, 2.0, 1e6) for lam in (0.5, 1.0))
    assert all(r["selected"] == 0 for r in recs if r["alpha"] == 1e6)
    assert any(p.endswith(".png") for p in os.listdir(tmp_path))


def test_summary_is_mean_and_sample_sd_with_retrain_beside_original():
    recs = []
    for seed, (a, b) in enumerate([(80.0, 10.0), (90.0, 30.0)]):
        for method, label, acc in (("ssd", "SSD (alpha=10)", a), ("retrain", "Retrain", b), ("original", "Original", 99.0)):
            recs.append({"key": f"k{seed}{label}", "experiment": "x", "scenario": "full_class", "target": "t", "label": label,
                         "method": method, "seed": seed, "acc_retain": acc, "acc_forget": acc, "mia": acc, "selected": 1, "max_ratio": 2.0}
                        if method == "ssd" else
                        {"key": f"k{seed}{label}", "experiment": "x", "scenario": "full_class", "target": "t", "label": label,
                         "method": method, "seed": seed, "acc_retain": acc, "acc_forget": acc, "mia": acc})
    rows = E.summarise(recs)
    assert [r["method"] for r in rows] == ["original", "retrain", "ssd"]
    ssd = rows[2]
    assert ssd["acc_retain_mean"] == pytest.approx(85.0) and ssd["acc_retain_sd"] == pytest.approx(np.std([80, 90], ddof=1))
    md = E.markdown_tables(rows)
    assert "85.00 ± 7.07" in md and "| Retrain |" in md


def test_default_alpha_follows_the_spec():
    assert E.default_alpha("ssd", "resnet18", "sub_class") == 10
    assert E.default_alpha("ssd", "vit_b_16", "full_class") == 5
    assert E.default_alpha("ssd", "vit_b_16", "sub_class") == 25
    assert E.default_alpha("ssd", "vit_b_16", "random") == 10
    assert E.default_alpha("lfssd", "resnet18", "full_class", "cifar20") == 5
    assert E.default_alpha("lfssd", "resnet18", "full_class", "cifar100") == 10
    assert E.default_alpha("lfssd", "vit_b_16", "sub_class") == 10
    assert E.default_alpha("lfssd", "resnet18", "random") == 3.5


BASE = {"name": "ok", "data": {"dataset": "digits"}, "model": {"name": "small_cnn"}, "scenario": {"kind": "full_class", "targets": ["1"]},
        "methods": ["original"]}


def _with(path, value):
    import copy

    raw = copy.deepcopy(BASE)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("path,value,field", [
    ("data.nme", "x", "data.nme"),
    ("data.dataset", "cifar11", "data.dataset"),
    ("data.batch_size", 0, "data.batch_size"),
    ("train.epochs", "ten", "train.epochs"),
    ("train.epochs", -1, "train.epochs"),
    ("model.name", "resnet50", "model.name"),
    ("scenario.kind", "half_class", "scenario.kind"),
    ("scenario.targets", [], "scenario.targets"),
    ("methods", [{"method": "ssd", "alpha": -1}], "methods[0].alpha"),
    ("methods", ["ssd", {"method": "forget_all"}], "methods[1].method"),
    ("methods", [{"method": "lfssd", "lambda": -2}], "methods[0].lambda"),
    ("methods", [{"method": "finetune", "alpha": 3}], "methods[0].alpha"),
    ("methods", ["ssd", "ssd"], "methods"),
    ("baselines", {"finetune_lr": -1}, "baselines.finetune_lr"),
    ("baselines", {"finetune_lrr": 1}, "baselines.finetune_lrr"),
    ("seeds", [0, "one"], "seeds[1]"),
    ("colour", "blue", "colour"),
])
def test_invalid_configs_name_the_field(path, value, field):
    with pytest.raises(E.ConfigError) as err:
        E.config_from_dict(_with(path, value))
    assert str(err.value).startswith(field), str(err.value)


def test_random_and_sub_class_constraints():
    with pytest.raises(E.ConfigError, match=r"^scenario\.forget_n"):
        E.config_from_dict(_with("scenario", {"kind": "random"}))
    with pytest.raises(E.ConfigError, match=r"^scenario\.kind"):
        E.config_from_dict(_with("scenario", {"kind": "sub_class", "targets": ["1"]}))


def test_committed_configs_are_valid():
    root = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
    files = sorted(f for f in os.listdir(root) if f.endswith((".yaml", ".yml", ".json")))
    assert len(files) >= 8
    names = set()
    for f in files:
        cfg = E.load_config(os.path.join(root, f))
        assert cfg.name not in names
        names.add(cfg.name)
        assert len(cfg.seeds) >= 3, f"{f}: at least three training seeds"
        assert any(m.method == "retrain" for m in cfg.methods), f"{f}: the retrained model belongs beside the others"
    paper = {(c.data.dataset, c.scenario.kind, c.model.family) for c in (E.load_config(os.path.join(root, f)) for f in files if f.startswith("paper_"))}
    assert paper == {(d, s, m) for d, s in (("cifar100", "full_class"), ("cifar20", "full_class"), ("cifar20", "sub_class"), ("cifar10", "random"))
                     for m in ("resnet", "vit")}


def test_load_config_reads_json_and_yaml(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(BASE))
    (tmp_path / "b.yaml").write_text("name: ok\ndata: {dataset: digits}\nscenario: {kind: random, forget_n: 5}\nmethods: [original]\n")
    assert E.load_config(tmp_path / "a.json").name == "ok"
    assert E.load_config(tmp_path / "b.yaml", data={"train_subset": 10}).data.train_subset == 10
    (tmp_path / "c.yaml").write_text("name: [unclosed\n")
    with pytest.raises(E.ConfigError, match="^config"):
        E.load_config(tmp_path / "c.yaml")


def test_forget_request_reuses_the_checkpoints_of_an_output_folder(tmp_path):
    cfg = _digits_cfg(seeds=(0,))
    E.run_train(cfg, out_dir=str(tmp_path), device="cpu")
    saved = torch.load(E.original_checkpoint(cfg, str(tmp_path), 0), weights_only=True)
    with torch.no_grad():  # mark the stored original, so that a retrained copy could not match it
        saved = {k: v + 1 if v.is_floating_point() else v for k, v in saved.items()}
    torch.save(saved, E.original_checkpoint(cfg, str(tmp_path), 0))
    request = E.forget_request(cfg, seed=0, device="cpu", out_dir=str(tmp_path))
    loaded = request.original.state_dict()
    assert all(torch.equal(loaded[k].cpu(), saved[k]) for k in saved)
    in_memory = E.forget_request(cfg, seed=0, device="cpu").original.state_dict()
    assert not all(torch.equal(in_memory[k].cpu(), saved[k]) for k in saved)
