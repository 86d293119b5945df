#!/usr/bin/env python
"""Two measurements behind the package's GPU defaults, side by side in one process.

1. The per-sample estimator's chunk: ``compute_importance(granularity="sample")`` at
   several ``sample_chunk_size`` values against ``granularity="batch"`` on the same data,
   with the chunk the package picks by default (``default_sample_chunk_size``) marked.
2. The dampening's grouping: ``select_and_dampen_`` with the GPU grouping (every
   parameter concatenated, counts from one cumulative sum) against the CPU grouping
   (large parameters in groups of their own, one sum per parameter), interleaved; both
   must give the same weights.

    python benchmarks/gpu_tuning.py [--device cuda] [--models resnet18 small_vit] [--out results]

Writes ``gpu-tuning-<host>.json`` when ``--out`` is given.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_importance as bench  # noqa: E402

from lfssd_tutorial import compute_importance, select_and_dampen_  # noqa: E402
from lfssd_tutorial import dampening as dampening_module  # noqa: E402
from lfssd_tutorial.dampening import NothingSelectedWarning, max_importance_ratio  # noqa: E402
from lfssd_tutorial.importance import default_sample_chunk_size  # noqa: E402


def timed(fn, device, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        bench._sync(device)
        t0 = time.perf_counter()
        fn()
        bench._sync(device)
        out.append(time.perf_counter() - t0)
    return out


def chunk_sweep(name, device, chunks, n_batches, reps, log) -> dict:
    cfg = bench.sized(name, "gpu" if device.type == "cuda" else "cpu")
    torch.manual_seed(0)
    model = cfg["build"]().to(device).eval()
    B, _, _, _ = bench.make_data(name, cfg, 0)
    B = bench.to_device(B[:n_batches] if n_batches else B, device)
    auto = default_sample_chunk_size(model.parameters(), device)
    compute_importance(model, B[:1], objective="l2")  # warm-up
    batch = statistics.median(timed(lambda: compute_importance(model, B, objective="l2"), device, reps))
    rows = []
    for chunk in sorted(set(chunks) | {auto}):
        compute_importance(model, [(B[0][0][:chunk], B[0][1][:chunk])], objective="l2", granularity="sample", sample_chunk_size=chunk)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = statistics.median(timed(
            lambda: compute_importance(model, B, objective="l2", granularity="sample", sample_chunk_size=chunk), device, reps
        ))
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        rows.append({"chunk": chunk, "seconds": t, "sample_over_batch": t / batch, "peak_allocated_MiB": peak,
                     "default": chunk == auto})
        log(f"  {name} chunk {chunk:4d}{' (default)' if chunk == auto else '          '}: {t:.3f} s = "
            f"{t / batch:.2f}x the batch estimator" + (f", peak {peak:.0f} MiB allocated" if peak else ""))
    return {"images": sum(len(y) for _, y in B), "batch_seconds": batch, "default_chunk": auto, "rows": rows}


def grouping(name, device, reps, log) -> dict:
    cfg = bench.sized(name, "gpu" if device.type == "cuda" else "cpu")
    torch.manual_seed(0)
    model = cfg["build"]().to(device).eval()
    g = torch.Generator().manual_seed(1)
    full = {n: torch.rand(p.shape, generator=g).to(device) for n, p in model.named_parameters()}
    forget = {n: (f.cpu() * torch.rand(f.shape, generator=g) * 2).to(device) for n, f in full.items()}
    alpha = max_importance_ratio(full, forget) / 2
    pristine = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    results = {}

    def run(gpu_grouping: bool):
        with torch.no_grad():
            torch._foreach_copy_(params, pristine)
        old = dampening_module._on_gpu
        dampening_module._on_gpu = lambda d: gpu_grouping
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NothingSelectedWarning)
                select_and_dampen_(model, full, forget, alpha=alpha, lambda_=1.0, warn=False)
        finally:
            dampening_module._on_gpu = old

    for flag in (False, True):
        run(flag)
        results[flag] = [p.detach().clone() for p in params]
    same = all(torch.equal(a, b) for a, b in zip(results[False], results[True]))
    times = {False: [], True: []}
    for r in range(reps):
        for flag in ((False, True) if r % 2 == 0 else (True, False)):
            times[flag] += timed(lambda: run(flag), device, 1)
    ratios = [a / b for a, b in zip(times[True], times[False])]
    row = {"parameters": sum(p.numel() for p in params), "tensors": len(params), "same_weights": same,
           "gpu_grouping_s": statistics.median(times[True]), "cpu_grouping_s": statistics.median(times[False]),
           "gpu_over_cpu_grouping": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}
    log(f"  {name}: GPU grouping {1e3 * row['gpu_grouping_s']:.2f} ms, CPU grouping {1e3 * row['cpu_grouping_s']:.2f} ms, "
        f"ratio {row['gpu_over_cpu_grouping']:.2f} [{min(ratios):.2f}-{max(ratios):.2f}], same weights: {same}")
    return row


def count_methods(name, device, reps, log) -> dict:
    """Per-parameter counts of a (2, n) 0/1 float32 tensor cut at the parameters' sizes, three
    ways: one sum per piece (the CPU grouping), a cumulative sum along the rows, and the
    fused multi-tensor l1 norm (the GPU grouping). All three are exact here."""
    cfg = bench.sized(name, "gpu" if device.type == "cuda" else "cpu")
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
        row[key + "_ms"] = 1e3 * statistics.median(timed(fn, device, reps))
    log(f"  {name} ({n:,} elements, {len(sizes)} pieces): " + ", ".join(
        f"{k} {row[k + '_ms']:.3f} ms" for k in ways))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--models", nargs="+", default=["resnet18", "small_vit"], choices=list(bench.CONFIGS))
    p.add_argument("--chunks", nargs="+", type=int, default=[16, 32, 64, 128, 256])
    p.add_argument("--batches", type=int, default=4, help="batches of B for the sweep (default 4; 0: all)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-chunks", action="store_true", help="skip the chunk sweep")
    p.add_argument("--damp-reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log = lambda m: print(m, flush=True)  # noqa: E731
    log(f"# GPU tuning on {bench.host_name(device)} (torch {torch.__version__})")
    result = {"host": bench.host_name(device), "hardware": bench.hardware(device),
              "command": bench.command_line("gpu_tuning.py", argv), "chunks": {}, "grouping": {}, "counts": {}}
    if not args.no_chunks:
        log("## per-sample chunk (objective l2)")
        for name in args.models:
            result["chunks"][name] = chunk_sweep(name, device, args.chunks, args.batches, args.reps, log)
    log("## dampening grouping")
    for name in args.models:
        result["grouping"][name] = grouping(name, device, args.damp_reps, log)
    log("## per-parameter counts")
    for name in args.models:
        result["counts"][name] = count_methods(name, device, args.damp_reps, log)
    if args.out:
        out = Path(args.out) / f"gpu-tuning-{result['host']}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {out}")
    return 0 if all(r["same_weights"] for r in result["grouping"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
