"""The benchmark scripts run end to end on tiny data (their numbers are not checked here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .fake_data import write_cifar100

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_host_memory_script_on_synthetic_cifar100(tmp_path):
    write_cifar100(str(tmp_path / "data"), n_train=200, n_test=100)
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: tiny-vit\n"
        "data: {dataset: cifar100, root: null, batch_size: 32, image_size: 48}\n"
        "model: {name: small_vit, options: {patch_size: 8, num_layers: 1, hidden_dim: 32, mlp_dim: 64, num_heads: 2}}\n"
        "train: {epochs: 1, lr: 0.01}\n"
        "scenario: {kind: full_class, targets: [rocket]}\n"
        "methods: [original]\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "host_memory.py"), "--config", str(config), "--data-root",
         str(tmp_path / "data"), "--device", "cpu", "--workers", "1", "--steps", "2", "--model-batch", "4",
         "--threads", "1", "--out", str(out), "--no-integrity-check"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("host-memory-cpu-*core.json")
    result = json.loads(path.read_text())
    assert result["checksums_verified"] is False and result["training_images"] == 200
    data = result["data"]
    assert data["images"] == 200 and data["batch_shape"] == [32, 3, 48, 48]  # resized on the fly
    assert len(data["worker_peaks_MiB"]) == 1
    assert data["main_plus_workers_MiB"] >= data["main_peak_MiB"] > 0
    assert 0 < data["pss_sum_max_sampled_MiB"] <= data["main_plus_workers_MiB"]
    model = result["model_steps"]
    assert model["steps"] == 2 and model["batch_size"] == 4 and model["main_peak_MiB"] >= data["main_peak_MiB"]
    assert "peak RSS" in proc.stdout


def test_importance_benchmark_runs_on_the_digits_cnn(tmp_path):
    """One repetition on the small CNN: every ratio of the report is there, the estimators agree."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_importance.py"), "--models", "small_cnn", "--reps", "1",
         "--head-reps", "2", "--no-memory", "--threads", "1", "--out", str(tmp_path), "--host", "test"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench-test.json").read_text())
    assert result["reps"] == 1 and result["precision_reps"] == 1 and result["head_reps"] == 2
    assert result["scale"] == "cpu" and result["complete"] and result["min_measurement_s"] == 0.25
    assert result["command"].endswith("--models small_cnn --reps 1 --head-reps 2 --no-memory --threads 1 --host test")
    for objective in ("l2", "fisher"):
        o = result["models"]["small_cnn"]["objectives"][objective]
        assert o["correctness"]["allclose"]
        # The floor / package / reference group: two repetitions, so a median between min and max.
        for key in ("importance_vs_floor", "importance_vs_reference", "reference_vs_floor"):
            assert len(o["times_s"]["floor_B"]) == 2
            low, high = o["ratio_ranges"][key]
            assert 0 < low <= o["ratios"][key] <= high, key
            q1, q3 = o["ratio_quartiles"][key]
            assert low <= q1 <= q3 <= high
        for key in ("sample_vs_batch", "forget_inplace_vs_floor_Df", "forget_cached_vs_floor_Df", "model_copy_vs_floor_Df",
                    "dampen_vs_importance_Df", "accumulate_vs_reference", "bf16_vs_fp32", "channels_last_vs_default"):
            assert o["ratios"][key] > 0, key
            low, high = o["ratio_ranges"][key]
            assert low == high == o["ratios"][key]  # one repetition
        assert 0 < o["precision"]["bf16_autocast"]["rel_l1"] < 0.05
    md = (tmp_path / "bench-test.md").read_text()
    assert "## The accumulation step alone" in md and "importance / reference loop (≤1.0x)" in md


@pytest.fixture
def benchmarks_on_path():
    """The benchmark scripts' folder on sys.path, as when a script runs, for importing their modules."""
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def test_benchmark_sizes(benchmarks_on_path):
    """--scale gpu enlarges the synthetic sets; the digits set is the same at both scales."""
    import bench_setup as bench

    small, large = bench.sized("resnet18", "cpu"), bench.sized("resnet18", "gpu")
    assert "gpu" not in small and "gpu" not in large
    assert small["batch_size"] * small["n_batches"] < large["batch_size"] * large["n_batches"]
    assert bench.sized("small_cnn", "gpu") == bench.sized("small_cnn", "cpu")
    with pytest.raises(ValueError, match="scale"):
        bench.sized("resnet18", "tpu")


@pytest.mark.parametrize("host", ["cpu-2core", "gpu-nvidia-h100-80gb-hbm3"])
def test_report_writer_renders_the_committed_results(benchmarks_on_path, host):
    """The report of a committed JSON result is its committed markdown, byte for byte."""
    from bench_report import markdown

    result = json.loads((ROOT / "results" / f"bench-{host}.json").read_text())
    assert markdown(result) == (ROOT / "results" / f"bench-{host}.md").read_text()


def test_paired_ratio_summary(benchmarks_on_path):
    """Ratios pair the repetitions of one group; median, range and quartiles of those ratios."""
    import harness

    wall = {"a": [2.0, 4.0, 3.0], "b": [1.0, 2.0, 1.0], "c": [1.0, 1.0, 1.0]}
    group = (wall, {k: [x / 2 for x in v] for k, v in wall.items()}, {k: 1 for k in wall})
    other = ({"d": [5.0]}, {"d": [5.0]}, {"d": 2})
    s = harness.summarise([group, other], {"a_vs_b": ("a", "b"), "a_vs_c": ("a", "c"), "a_vs_d": ("a", "d")})
    assert s["ratios"] == {"a_vs_b": 2.0, "a_vs_c": 3.0} and s["ratio_ranges"]["a_vs_c"] == [2.0, 4.0]
    assert s["ratio_quartiles"]["a_vs_c"] == [2.5, 3.5] and s["cpu_ratios"] == s["ratios"]
    assert s["median_s"] == {"a": 3.0, "b": 1.0, "c": 1.0, "d": 5.0} and s["calls_per_measurement"]["d"] == 2
    assert harness.command_line("x.py", ["--out", "o", "--reps", "1", "--out=p"]) == "python benchmarks/x.py --reps 1"


def test_dampening_only_benchmark(tmp_path):
    """--only dampening times the dampening against the importance pass over D_f and writes its own files."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_importance.py"), "--models", "small_cnn", "--only", "dampening",
         "--forget-images", "83", "--reps", "1", "--threads", "1", "--min-measurement", "0.01", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| small_cnn |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["l2", "83"], ["fisher", "83"]]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
    (path,) = tmp_path.glob("bench-dampening-*.json")
    result = json.loads(path.read_text())
    objectives = result["models"]["small_cnn"]["objectives"]
    assert set(objectives) == {"l2", "fisher"} and all(o["ratios"]["dampen_vs_importance_Df"] > 0 for o in objectives.values())


def test_gpu_tuning_script_runs_on_the_cpu(tmp_path):
    """The chunk sweep and the counts run end to end (on the CPU here) and are written as JSON."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_tuning.py"), "--device", "cpu", "--models", "small_cnn",
         "--chunks", "16", "--batches", "1", "--reps", "1", "--damp-reps", "1", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("gpu-tuning-cpu-*core.json")
    result = json.loads(path.read_text())
    assert [row["chunk"] for row in result["chunks"]["small_cnn"]["rows"]] == [16]
    assert result["counts"]["small_cnn"]["pieces"] > 0
