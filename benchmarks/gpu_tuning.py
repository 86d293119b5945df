#!/usr/bin/env python
"""Two measurements behind the package's GPU defaults, side by side in one process.

1. The per-sample estimator's chunk: ``compute_importance(granularity="sample")`` at
   several ``sample_chunk_size`` values against ``granularity="batch"`` on the same data,
   with the chunk the package picks by default (``default_sample_chunk_size``) marked.
2. Per-parameter counts of 0/1 flags over all of a model's weights, three ways (one sum
   per parameter, a cumulative sum, the fused multi-tensor norm); all three must agree.

    python benchmarks/gpu_tuning.py [--device cuda] [--models resnet18 small_vit] [--out results]

Writes ``gpu-tuning-<host>.json`` when ``--out`` is given. The models and data are those of
``bench_importance.py`` (``bench_setup.py``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

# Passive OpenMP waiting, as in bench_importance.py (it must be set before torch is loaded).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import harness  # noqa: E402
from bench_setup import CONFIGS, make_data, sized, to_device  # noqa: E402
from lfssd_tutorial import compute_importance  # noqa: E402
from lfssd_tutorial.importance import default_sample_chunk_size  # noqa: E402


def chunk_sweep(name, device, chunks, n_batches, reps, log) -> dict:
    cfg = sized(name, "gpu" if device.type == "cuda" else "cpu")
    torch.manual_seed(0)
    model = cfg["build"]().to(device).eval()
    B, _, _, _ = make_data(name, cfg, 0)
    B = to_device(B[:n_batches] if n_batches else B, device)
    auto = default_sample_chunk_size(model.parameters(), device)
    compute_importance(model, B[:1], objective="l2")  # warm-up
    batch = statistics.median(harness.time_calls(lambda: compute_importance(model, B, objective="l2"), device, reps))
    rows = []
    for chunk in sorted(set(chunks) | {auto}):
        compute_importance(model, [(B[0][0][:chunk], B[0][1][:chunk])], objective="l2", granularity="sample", sample_chunk_size=chunk)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = statistics.median(harness.time_calls(
            lambda: compute_importance(model, B, objective="l2", granularity="sample", sample_chunk_size=chunk), device, reps
        ))
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        rows.append({"chunk": chunk, "seconds": t, "sample_over_batch": t / batch, "peak_allocated_MiB": peak,
                     "default": chunk == auto})
        log(f"  {name} chunk {chunk:4d}{' (default)' if chunk == auto else '          '}: {t:.3f} s = "
            f"{t / batch:.2f}x the batch estimator" + (f", peak {peak:.0f} MiB allocated" if peak else ""))
    return {"images": sum(len(y) for _, y in B), "batch_seconds": batch, "default_chunk": auto, "rows": rows}


def count_methods(name, device, reps, log) -> dict:
    """Per-parameter counts of a (2, n) 0/1 float32 tensor cut at the parameters' sizes, three
    ways: one sum per piece, a cumulative sum along the rows, and the fused multi-tensor l1
    norm. All three are exact here (checked)."""
    cfg = sized(name, "gpu" if device.type == "cuda" else "cpu")
    sizes = [p.numel() for p in cfg["build"]().parameters()]
    n = sum(sizes)
    g = torch.Generator().manual_seed(2)
    flags = (torch.rand(2, n, generator=g) < 0.7).float().to(device)
    ends = torch.tensor(list(itertools.accumulate(sizes)), device=device) - 1
    ways = {
        "sum_per_piece": lambda: torch.stack([f.sum(dim=-1) for f in flags.split(sizes, dim=1)]),
        "cumsum_rows": lambda: torch.diff(flags.cumsum(dim=1)[:, ends], dim=1, prepend=flags.new_zeros(2, 1)).t(),
        "foreach_norm": lambda: torch.stack([torch.stack(torch._foreach_norm(list(r.split(sizes)), 1)) for r in flags], dim=1),
    }
    want = ways["sum_per_piece"]()
    row = {"n": n, "pieces": len(sizes)}
    for key, fn in ways.items():
        assert torch.equal(fn(), want), key
        fn()
        row[key + "_ms"] = 1e3 * statistics.median(harness.time_calls(fn, device, reps))
    log(f"  {name} ({n:,} elements, {len(sizes)} pieces): " + ", ".join(
        f"{k} {row[k + '_ms']:.3f} ms" for k in ways))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--models", nargs="+", default=["resnet18", "small_vit"], choices=list(CONFIGS))
    p.add_argument("--chunks", nargs="+", type=int, default=[16, 32, 64, 128, 256])
    p.add_argument("--batches", type=int, default=4, help="batches of B for the sweep (default 4; 0: all)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-chunks", action="store_true", help="skip the chunk sweep")
    p.add_argument("--damp-reps", type=int, default=20, help="repetitions of each way of counting (default 20)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log = lambda m: print(m, flush=True)  # noqa: E731
    log(f"# GPU tuning on {harness.host_name(device)} (torch {torch.__version__})")
    result = {"host": harness.host_name(device), "hardware": harness.hardware(device),
              "command": harness.command_line("gpu_tuning.py", argv), "chunks": {}, "counts": {}}
    if not args.no_chunks:
        log("## per-sample chunk (objective l2)")
        for name in args.models:
            result["chunks"][name] = chunk_sweep(name, device, args.chunks, args.batches, args.reps, log)
    log("## per-parameter counts")
    for name in args.models:
        result["counts"][name] = count_methods(name, device, args.damp_reps, log)
    if args.out:
        out = Path(args.out) / f"gpu-tuning-{result['host']}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
