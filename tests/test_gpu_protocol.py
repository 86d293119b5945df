"""The GPU protocol script (results/cifar10-gpu/run.sh), run at tiny scale on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from lfssd_tutorial import experiments as E

from .fake_data import write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {kind: os.path.join(ROOT, "configs", f"cifar10_gpu_resnet18_{kind}.yaml") for kind in ("full_class", "random")}


def test_configs_are_the_papers_protocol():
    for path in CONFIGS.values():
        c = E.load_config(path)
        assert (c.model.name, c.model.width, c.data.batch_size) == ("resnet18", None, 64)
        assert (c.train.epochs, c.train.lr, tuple(c.train.milestones), c.train.warmup_epochs) == (20, 0.1, (8, 12, 16), 1)
        assert c.data.in_memory and c.data.device_batches and c.data.validation
        assert c.data.train_subset is None and c.data.test_subset is None  # all 50,000 images
    assert E.load_config(CONFIGS["random"]).scenario.forget_n == 83
    assert E.runner.training_id(E.load_config(CONFIGS["full_class"])) == E.runner.training_id(E.load_config(CONFIGS["random"]))


def _tiny(path, out, **scenario):
    with open(path) as f:
        raw = yaml.safe_load(f)
    raw["data"].update(train_subset=None, test_subset=None, batch_size=8)
    raw["model"]["width"] = 2
    raw["train"].update(epochs=1, milestones=[], warmup_epochs=0)
    raw["baselines"] = {"unsir_noise_steps": 2, "finetune_epochs": 1, "amnesiac_epochs": 1}
    raw["scenario"].update(scenario)
    with open(out, "w") as f:
        yaml.safe_dump(raw, f)
    return out


def test_the_script_runs_every_method_and_keeps_the_checkpoints_apart(tmp_path):
    data = tmp_path / "data"
    write_image_folder(str(data), classes=("cat", "dog", "ship"), per_class=8)
    full = _tiny(CONFIGS["full_class"], tmp_path / "full.yaml", targets=["dog"])
    rand = _tiny(CONFIGS["random"], tmp_path / "rand.yaml", forget_n=4)
    env = {**os.environ, "PY": sys.executable, "FULL": str(full), "RAND": str(rand), "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", os.path.join(ROOT, "results", "cifar10-gpu", "run.sh"), str(data), "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    records = [json.loads(line) for line in open(out / "results.jsonl")]
    expected = E.load_config(full).labels() + E.load_config(rand).labels()
    assert [r["label"] for r in records] == expected
    assert all(k in r for r in records for k in ("val_retain", "test_retain", "mia"))
    assert sorted(os.listdir(out / "trainings")) == sorted(
        f for f in os.listdir(tmp_path / "work" / "checkpoints") if f.endswith(".pt.json"))
    assert len(os.listdir(out / "trainings")) == 3  # the original and two retrained models
    assert not [f for _, _, files in os.walk(out) for f in files if f.endswith(".pt")]  # no checkpoint comes back
    log = open(out / "logs" / "seed0.log").read()
    assert "card: cpu" in log and "forget-random took" in log and "== done in" in log
    assert (out / "report.md").exists()
