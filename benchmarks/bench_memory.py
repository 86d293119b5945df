"""Peak memory of one importance pass: host RSS in a fresh process per variant on the CPU, or
the GPU memory torch allocates on CUDA (the methods are stated in MEMORY_METHOD and
CUDA_MEMORY_METHOD, which the results file records)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import harness
from bench_setup import Batches, floor_pass, make_data, n_images, reference_loop, sized
from lfssd_tutorial import compute_importance

#: The script whose ``--memory-probe`` option measures one variant in a fresh process.
BENCHMARK = Path(__file__).with_name("bench_importance.py")


CUDA_MEMORY_METHOD = (
    "Method (CUDA): in the benchmark's process, with the model and the data already on the GPU, each variant "
    "runs once on one sample (one-time initialisation); then torch's caching allocator is emptied, its peak "
    "counter reset, torch.cuda.memory_allocated read as the baseline, the pass run, and "
    "torch.cuda.max_memory_allocated read. Peak increase = peak - baseline: activations, gradients, "
    "accumulators and temporaries allocated by torch (cuDNN / cuBLAS workspaces that torch allocates count; "
    "the CUDA context does not). Sample rows run one batch whose size equals the chunk."
)

MEMORY_METHOD = (
    "Method: each row is a fresh Python subprocess that builds the model and the data, runs the variant "
    "once on one sample (one-time initialisation), returns freed heap to the OS (malloc_trim), resets the "
    "kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`), reads VmRSS as the baseline, runs the "
    "pass, and reads VmHWM (peak RSS since the reset). Peak increase = VmHWM - baseline: activations, "
    "gradients, accumulators and temporaries (the parameters themselves are in the baseline). tracemalloc "
    "cannot see torch's allocations. Sample rows run one batch whose size equals the chunk, so one full "
    "chunk of per-sample gradients is live at the peak."
)


def _probe_batches(B: Batches, variant: str, chunk: int) -> Batches:
    """B itself, or for a sample variant one batch of ``chunk`` images (so that a chunk is full)."""
    if not variant.startswith("sample"):
        return B
    xs = torch.cat([x for x, _ in B])
    ys = torch.cat([y for _, y in B])
    reps = (chunk + len(xs) - 1) // len(xs)
    return [(xs.repeat(reps, *[1] * (xs.dim() - 1))[:chunk], ys.repeat(reps)[:chunk])]


def _probe_run(model: nn.Module, batches: Batches, variant: str, objective: str, chunk: int) -> None:
    if variant == "floor":
        floor_pass(model, batches, objective)
    elif variant == "reference":
        reference_loop(model, batches, objective)
    elif variant == "batch":
        compute_importance(model, batches, objective=objective, granularity="batch")
    elif variant.startswith("sample"):
        compute_importance(model, batches, objective=objective, granularity="sample", sample_chunk_size=chunk)
    else:
        raise ValueError(variant)


def probe(model: nn.Module, B: Batches, variant: str, objective: str, chunk: int, device: torch.device) -> dict:
    """Peak memory increase of one pass of ``variant`` over B (a sample variant: one batch of
    ``chunk`` images), after one run on a single sample (one-time initialisation is not
    counted): torch's CUDA allocations on a GPU (:func:`harness.cuda_peak_increase`), else
    this process's resident memory (:func:`harness.rss_peak_increase`)."""
    B = _probe_batches(B, variant, chunk)
    _probe_run(model, [(B[0][0][:1], B[0][1][:1])], variant, objective, chunk)

    def run():
        _probe_run(model, B, variant, objective, chunk)

    peak = harness.cuda_peak_increase(run, device) if device.type == "cuda" else harness.rss_peak_increase(run)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {
        "variant": variant,
        "objective": objective,
        "chunk": chunk if variant.startswith("sample") else None,
        "images": n_images(B),
        "batch_size": int(B[0][1].shape[0]),
        "peak_increase_MiB": peak / 2**20,
        "param_MiB": param_bytes / 2**20,
    }


def memory_probe(model_name: str, variant: str, objective: str, chunk: int, seed: int, scale: str = "cpu") -> dict:
    """Peak resident-memory increase of one pass, measured inside this (fresh) process.

    Method: build the model and the data, run the variant once on a single sample (so
    that one-time initialisation is not counted), return freed heap to the OS
    (``malloc_trim``), reset the kernel's peak-RSS counter (``echo 5 >
    /proc/self/clear_refs``), read ``VmRSS`` as the baseline, run the pass over B, and
    read ``VmHWM`` (the peak RSS since the reset). The difference is the extra memory the
    pass needed at its peak: activations, gradients, accumulators and temporaries.
    ``tracemalloc`` cannot see torch's allocations, which is why RSS is used.
    """
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    cfg = sized(model_name, scale)
    model = cfg["build"]().eval()
    B, _, _, _ = make_data(model_name, cfg, seed)
    return probe(model, B, variant, objective, chunk, torch.device("cpu"))


def run_memory_probes(
    model_name: str, cfg: dict, seed: int, log, scale: str, model: nn.Module, B: Batches, device: torch.device,
) -> list[dict]:
    """Peak memory of each variant: host RSS in fresh subprocesses on the CPU, or, on CUDA,
    the GPU memory allocated by torch, in this process, with ``model`` and ``B`` already there."""
    on_gpu = device.type == "cuda"
    if not on_gpu and not harness.can_reset_peak_rss():
        log("  memory: /proc/self/clear_refs is not available; skipped")
        return []
    probes = [("floor", 0), ("reference", 0), ("batch", 0)] + [("sample", c) for c in cfg["memory_chunks"]]
    out = []
    for variant, chunk in probes:
        if on_gpu:
            rec = probe(model, B, variant, "l2", chunk, device)
        else:
            cmd = [sys.executable, str(BENCHMARK), "--memory-probe", model_name, variant, "l2", str(chunk), str(seed), scale]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                log(f"  memory probe {variant} failed:\n{proc.stderr[-2000:]}")
                continue
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
        rec["peak_over_params"] = rec["peak_increase_MiB"] / rec["param_MiB"]
        out.append(rec)
        chunk_txt = f" chunk {chunk}" if variant == "sample" else ""
        log(
            f"  memory {variant}{chunk_txt} ({rec['images']} images): +{rec['peak_increase_MiB']:.0f} MiB "
            f"= {rec['peak_over_params']:.2f}x the parameters ({rec['param_MiB']:.1f} MiB)"
        )
    return out
