"""The command line: ``python -m lfssd_tutorial {demo,train,forget,report,sweep}``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lfssd_tutorial.__main__ import main

CONFIG = """\
name: cli-test
data: {dataset: digits, train_subset: 120, test_subset: 50}
model: {name: small_cnn, width: 4}
train: {epochs: 1, lr: 0.05, milestones: []}
scenario: {kind: full_class, targets: ["1"]}
methods: [original, retrain, finetune, ssd, {method: lfssd, alpha: 2}]
baselines: {finetune_epochs: 1}
seeds: [0, 1]
"""


def _run(*args, timeout=240):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "lfssd_tutorial", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_usage_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "train", "forget", "report", "sweep"):
        assert cmd in out
    assert main(["nonsense"]) == 2


def test_invalid_config_exits_with_the_field_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("epochs: 1", "epochs: -3"))
    with pytest.raises(SystemExit) as e:
        main(["forget", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "train.epochs" in capsys.readouterr().err


def test_killed_forget_resumes_then_report_and_sweep(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    results = out / "results.jsonl"
    common = ["--config", str(cfg), "--out", str(out), "--device", "cpu", "--threads", "1", "--no-progress"]

    # a real kill: SIGKILL the process as soon as two cells are on disk
    proc = subprocess.Popen([sys.executable, "-m", "lfssd_tutorial", "forget", *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    partial = [json.loads(line) for line in results.read_text().splitlines()]
    assert 2 <= len(partial) < 10, "the run should have been killed part-way"

    r = _run("forget", *common)
    assert r.returncode == 0, r.stderr
    lines = results.read_text().splitlines()
    assert len(lines) == 10  # 2 seeds x 5 methods, no duplicates
    assert [json.loads(x) for x in lines[: len(partial)]] == partial
    assert len({json.loads(x)["key"] for x in lines}) == 10

    r = _run("report", str(out))
    assert r.returncode == 0, r.stderr
    assert "| Retrain |" in r.stdout and "±" in r.stdout
    assert (out / "report.md").exists() and (out / "summary.csv").exists()

    r = _run("sweep", *common, "--alphas", "1", "3", "--lambdas", "1")
    assert r.returncode == 0, r.stderr
    assert any(p.startswith("sweep-lfssd") and p.endswith(".png") for p in os.listdir(out))
