#!/usr/bin/env python
"""Benchmark of the importance estimators, a forget request and the dampening step.

Run it with ``make bench`` (or ``python benchmarks/bench_importance.py``). It measures,
side by side in one process, interleaved over several repetitions, and reports medians:

1. ``compute_importance(granularity="batch")`` against a plain forward+backward pass over
   the same data (the floor: the estimator needs exactly one per batch).      goal <= 1.15x
2. the same against a straightforward reference-style loop (per batch: ``zero_grad``,
   forward, ``backward``, accumulate ``p.grad.clone().pow(2)`` / ``.abs()`` per parameter,
   divide by the number of batches).                                         goal <= 1.0x
3. ``granularity="sample"`` against ``"batch"``.                   goal <= 4x on ResNet18
4. a forget request (:func:`lfssd_tutorial.unlearn`) with a cached ``Imp_D`` against a
   forward+backward over ``D_f`` alone, and against a request that recomputes ``Imp_D``.
   The goal applies to the request itself (``inplace=True``); the default
   ``inplace=False`` also deep-copies the model, reported beside it.       goal <= 1.2x
5. the dampening step (:func:`lfssd_tutorial.select_and_dampen_`) against the importance
   pass over ``D_f`` (the only importance pass of a cached request).       goal <= 5%
6. the peak memory of an importance pass against the model's parameter memory, measured
   in a fresh subprocess per variant (see :func:`memory_probe` for the method).

It also times the only step in which the package and the reference loop differ, the
accumulation of one batch's gradients, on its own, and checks correctness: the reference
loop's result must equal ``compute_importance(granularity="batch")`` under
``torch.allclose``'s default tolerances.

A ratio is the median over repetitions of the ratio of the two variants' times within one
repetition (the variants of a repetition run back to back, so a change of machine load hits
both); the results also keep the smallest and largest of those per-repetition ratios.
Rows 1 and 2 are closer calls than the others (the two loops differ in a step worth about
1% of a pass), so their three variants (floor, package, reference loop) run as a group of
their own with more repetitions (``--head-reps``, default three times ``--reps``). In every
group the order is rotated each repetition (ABC, BCA, CAB, ...): each variant runs equally
often first, second and last, and never twice in a row.

Results go to ``results/bench-<host>.json`` and ``results/bench-<host>.md``. ``<host>`` is a
short, stable name (``cpu-<N>core`` or ``gpu-<card>``), never the machine's host name.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# On a shared (oversubscribed) machine, OpenMP threads that spin while waiting slow every
# parallel op down by several times and make timings erratic. Passive waiting must be set
# before torch (and its OpenMP runtime) is loaded; an explicit setting is respected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import lfssd_tutorial  # noqa: E402
from lfssd_tutorial import compute_importance, select_and_dampen_, unlearn  # noqa: E402
from lfssd_tutorial.dampening import NothingSelectedWarning, max_importance_ratio  # noqa: E402
from lfssd_tutorial.importance import _accumulate_, default_sample_chunk_size  # noqa: E402
from lfssd_tutorial.models import SmallCNN, cifar_resnet18, small_vit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

GOALS = {
    "importance_vs_floor": 1.15,
    "importance_vs_reference": 1.0,
    "sample_vs_batch": 4.0,
    "forget_inplace_vs_floor_Df": 1.2,
    "dampen_vs_importance_Df": 0.05,
}

def _vit_with_random_head() -> nn.Module:
    """torchvision initialises the ViT head to zero: logits 0, so the l2 objective's gradient
    (2 f df) vanishes everywhere. A random head makes the untrained model's importances
    non-trivial (timings are the same either way, but the dampening then selects weights)."""
    model = small_vit(10)
    for m in model.heads.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
    return model


# Fixed, small sizes so that the whole run takes minutes on two CPU cores; D_f holds 64
# images (two batches of 32) so that the forget request is not dominated by the fixed,
# per-weight cost of the dampening step. ``gpu``: the sizes used with ``--scale gpu`` (the
# default on CUDA), where the small ones would time kernel launches rather than work.
# batch_size x n_batches images form the benchmark set B (rows 1-3 and 6); the forget
# request uses D = n_full_batches batches and D_f = its first n_forget_batches batches.
CONFIGS: dict[str, dict] = {
    "resnet18": dict(
        label="CIFAR ResNet18 (width 64), 3x32x32 random inputs",
        build=lambda: cifar_resnet18(10, width=64),
        shape=(3, 32, 32),
        batch_size=32,
        n_batches=2,
        n_full_batches=4,
        n_forget_batches=2,
        objectives=("l2", "fisher"),
        forget_objectives=("l2", "fisher"),
        memory_chunks=(4, 8, 16),
        gpu=dict(batch_size=256, n_batches=8, n_full_batches=16, n_forget_batches=4, memory_chunks=(16, 64)),
    ),
    "small_vit": dict(
        label="small ViT (6 layers, dim 192, patch 4), 3x32x32 random inputs",
        build=lambda: _vit_with_random_head(),
        shape=(3, 32, 32),
        batch_size=32,
        n_batches=2,
        n_full_batches=4,
        n_forget_batches=2,
        objectives=("l2", "fisher"),
        forget_objectives=("l2",),
        memory_chunks=(16,),
        gpu=dict(batch_size=256, n_batches=8, n_full_batches=16, n_forget_batches=4, memory_chunks=(16, 64)),
    ),
    "small_cnn": dict(
        label="SmallCNN (width 16) on the bundled 8x8 digits",
        build=lambda: SmallCNN(in_channels=1, num_classes=10, width=16),
        shape=(1, 8, 8),
        batch_size=64,
        n_batches=None,  # the whole digits training set (1347 images, 22 batches)
        n_full_batches=None,
        n_forget_batches=None,  # every training image of digit 8
        objectives=("l2", "fisher"),
        forget_objectives=("l2", "fisher"),
        memory_chunks=(32,),
    ),
}

Batches = list[tuple[torch.Tensor, torch.Tensor]]
SCALES = ("cpu", "gpu")


def sized(name: str, scale: str) -> dict:
    """The configuration of ``name`` at ``scale`` ("cpu": the small sizes, "gpu": its ``gpu`` sizes)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    cfg = {k: v for k, v in CONFIGS[name].items() if k != "gpu"}
    if scale == "gpu":
        cfg.update(CONFIGS[name].get("gpu", {}))
    return cfg


# --------------------------------------------------------------------------- hardware


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def logical_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def hardware(device: torch.device) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": logical_cpus(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "package_version": lfssd_tutorial.__version__,
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    if device.type != "cuda":
        info["gpu_note"] = "No GPU was available for this run: every number is a CPU measurement."
    else:
        # float32 convolutions and matrix products may run in TF32 on Ampere and later GPUs:
        # recorded, left at torch's defaults (what a user gets).
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        info["gpu_memory_GiB"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return info


def host_name(device: torch.device) -> str:
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device).lower()
        return "gpu-" + "".join(c if c.isalnum() else "-" for c in card).strip("-")
    return f"cpu-{logical_cpus()}core"


# --------------------------------------------------------------------------- data


def make_data(name: str, cfg: dict, seed: int = 0) -> tuple[Batches, Batches, Batches, str]:
    """Return (B, D, D_f) as lists of (inputs, labels) batches and a description."""
    if name == "small_cnn":
        from torch.utils.data import ConcatDataset

        from lfssd_tutorial.data import full_class_split, load_digits, make_loader

        data = load_digits()
        split = full_class_split(data, 8)
        full = ConcatDataset([split.retain_set(data), split.forget_set(data)])
        D = [(x, y) for x, y in make_loader(full, batch_size=cfg["batch_size"])]
        Df = [(x, y) for x, y in make_loader(split.forget_set(data), batch_size=cfg["batch_size"])]
        n_d, n_f = sum(len(y) for _, y in D), sum(len(y) for _, y in Df)
        desc = (
            f"digits training set, D = retain + forget (digit 8), {n_d} images in {len(D)} batches "
            f"of <= {cfg['batch_size']}; D_f = digit 8, {n_f} images in {len(Df)} batches; B = D"
        )
        return D, D, Df, desc
    g = torch.Generator().manual_seed(seed)
    bs = cfg["batch_size"]
    D = [
        (torch.randn(bs, *cfg["shape"], generator=g), torch.randint(0, 10, (bs,), generator=g))
        for _ in range(cfg["n_full_batches"])
    ]
    B = D[: cfg["n_batches"]]
    Df = D[: cfg["n_forget_batches"]]
    desc = (
        f"synthetic random inputs N(0,1) of shape {tuple(cfg['shape'])} with random labels "
        f"(timing does not depend on the values); B = {len(B)} batches of {bs}; "
        f"D = {len(D)} batches of {bs}; D_f = the first {len(Df)} batch(es) of D"
    )
    return B, D, Df, desc


def res_images(batches: Batches) -> int:
    return sum(len(y) for _, y in batches)


def to_device(batches: Batches, device: torch.device) -> Batches:
    return [(x.to(device), y.to(device)) for x, y in batches]


# --------------------------------------------------------------------------- the variants


def _objective(logits: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
    if objective == "fisher":
        return F.cross_entropy(logits, labels)
    return logits.pow(2).sum(dim=1).mean()


def floor_pass(model: nn.Module, batches: Batches, objective: str) -> None:
    """The floor: one plain forward+backward per batch, nothing else (eval mode)."""
    model.eval()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        _objective(model(x), y, objective).backward()
    model.zero_grad(set_to_none=True)


def accumulate_reference(acc: list[torch.Tensor], grads: list[torch.Tensor | None], objective: str) -> None:
    """The reference loop's accumulation of one batch: a clone, a power or abs, an add, per parameter."""
    for imp, g in zip(acc, grads):
        if g is not None:
            imp.data += g.data.clone().pow(2) if objective == "fisher" else g.data.clone().abs()


def reference_loop(model: nn.Module, batches: Batches, objective: str) -> dict[str, torch.Tensor]:
    """A straightforward loop in the style of the authors' code."""
    model.eval()
    importances = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in batches:
        model.zero_grad()
        out = model(x)
        # The same expression as the package's objective, so that the comparison is exact;
        # the authors' torch.norm(out, dim=1).pow(2).mean() is the same function, rounded
        # differently (near-zero importances then differ beyond allclose's atol).
        loss = _objective(out, y, objective)
        loss.backward()
        accumulate_reference(list(importances.values()), [p.grad for p in model.parameters()], objective)
    for imp in importances.values():
        imp.data /= float(len(batches))
    model.zero_grad(set_to_none=True)
    return importances


def batch_gradients(model: nn.Module, batches: Batches, objective: str) -> list[torch.Tensor]:
    """One batch's gradients of the objective, as the accumulation step receives them."""
    model.eval()
    x, y = batches[0]
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(_objective(model(x), y, objective), params))


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict:
    """How far a variant's importances are from the float32 ones (``want``).

    ``rel_l1``: sum |got - want| / sum |want| over all weights; ``max_rel_to_max``: the
    largest |got - want| over the largest |want|.
    """
    num = sum(float((got[k].float() - want[k]).abs().sum()) for k in want)
    den = sum(float(want[k].abs().sum()) for k in want)
    max_abs = max(float((got[k].float() - want[k]).abs().max()) for k in want)
    scale = max(float(want[k].abs().max()) for k in want)
    return {"rel_l1": num / max(den, 1e-30), "max_rel_to_max": max_abs / max(scale, 1e-30)}


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    allclose = all(torch.allclose(a[k], b[k]) for k in a)
    max_abs = max(float((a[k] - b[k]).abs().max()) for k in a)
    scale = max(float(b[k].abs().max()) for k in b)
    return {"allclose": bool(allclose), "max_abs_diff": max_abs, "max_abs_diff_rel_to_max": max_abs / max(scale, 1e-30)}


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_MEASUREMENT_S = 0.25


def calibrate(fn: Callable[[], object], device: torch.device) -> int:
    """How many calls make one measurement last at least MIN_MEASUREMENT_S (short variants)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    dt = time.perf_counter() - t0
    return max(1, min(50, int(MIN_MEASUREMENT_S / max(dt, 1e-6)) + 1)) if dt < MIN_MEASUREMENT_S else 1


def time_interleaved(
    variants: dict[str, Callable[[], object]], reps: int, device: torch.device, log: Callable[[str], None]
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int]]:
    """Run every variant once per repetition, in an order rotated each repetition (ABC, BCA,
    CAB, ...: every variant as often in each position, and never twice in a row, which
    would favour its second run with caches and allocator already warm).

    Returns wall-clock seconds and process CPU seconds (all threads; insensitive to time
    spent descheduled on a shared machine) per call, and the calls per measurement.
    """
    names = list(variants)
    inner = {n: calibrate(variants[n], device) for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for n in order:
            gc.collect()
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner[n]):
                variants[n]()
            _sync(device)
            wall[n].append((time.perf_counter() - t0) / inner[n])
            cpu[n].append((time.process_time() - c0) / inner[n])
        log(f"    rep {r + 1}/{reps}: " + ", ".join(f"{n} {wall[n][-1]:.3f}s" for n in names))
    return wall, cpu, inner


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- memory


def proc_kib(field: str, pid: int | str = "self", file: str = "status") -> int | None:
    """A ``<field>: <n> kB`` value from ``/proc/<pid>/<file>`` (None if unreadable or absent).

    ``status`` has VmRSS and VmHWM (peak RSS); ``smaps_rollup`` has Pss.
    """
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


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


def _probe_record(variant: str, objective: str, chunk: int, B: Batches, model: nn.Module, peak_increase_bytes: int) -> dict:
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {
        "variant": variant,
        "objective": objective,
        "chunk": chunk if variant.startswith("sample") else None,
        "images": sum(len(y) for _, y in B),
        "batch_size": int(B[0][1].shape[0]),
        "peak_increase_MiB": peak_increase_bytes / 2**20,
        "param_MiB": param_bytes / 2**20,
    }


def cuda_memory_probe(model: nn.Module, B: Batches, variant: str, objective: str, chunk: int, device: torch.device) -> dict:
    """Peak increase of CUDA memory allocated by torch during one pass (same process).

    The variant runs once on one sample first; then the allocator's cache is emptied, its
    peak counter reset, ``memory_allocated`` read as the baseline (model and data already
    on the GPU) and the pass run; ``max_memory_allocated`` minus the baseline is the peak
    increase.
    """
    B = _probe_batches(B, variant, chunk)
    _probe_run(model, [(B[0][0][:1], B[0][1][:1])], variant, objective, chunk)
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    _probe_run(model, B, variant, objective, chunk)
    torch.cuda.synchronize(device)
    return _probe_record(variant, objective, chunk, B, model, torch.cuda.max_memory_allocated(device) - base)


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
    B = _probe_batches(B, variant, chunk)
    _probe_run(model, [(B[0][0][:1], B[0][1][:1])], variant, objective, chunk)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = proc_kib("VmRSS")
    _probe_run(model, B, variant, objective, chunk)
    peak = proc_kib("VmHWM")
    return _probe_record(variant, objective, chunk, B, model, (peak - base) * 1024)


def run_memory_probes(
    model_name: str, cfg: dict, seed: int, log, scale: str = "cpu", model: nn.Module | None = None,
    B: Batches | None = None, device: torch.device | None = None,
) -> list[dict]:
    """Peak memory of each variant: host RSS in fresh subprocesses on the CPU, or, on CUDA,
    the GPU memory allocated by torch, in this process, with ``model`` and ``B`` already there."""
    on_gpu = device is not None and device.type == "cuda"
    if not on_gpu and not os.path.exists("/proc/self/clear_refs"):
        log("  memory: /proc/self/clear_refs is not available; skipped")
        return []
    probes = [("floor", 0), ("reference", 0), ("batch", 0)] + [("sample", c) for c in cfg["memory_chunks"]]
    out = []
    for variant, chunk in probes:
        if on_gpu:
            rec = cuda_memory_probe(model, B, variant, "l2", chunk, device)
        else:
            cmd = [sys.executable, __file__, "--memory-probe", model_name, variant, "l2", str(chunk), str(seed), scale]
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


# --------------------------------------------------------------------------- one model

RATIO_DEFS = {
    "importance_vs_floor": ("importance_batch_B", "floor_B"),
    "importance_vs_reference": ("importance_batch_B", "reference_B"),
    "reference_vs_floor": ("reference_B", "floor_B"),
    "sample_vs_batch": ("importance_sample_B", "importance_batch_B_main"),
    "forget_inplace_vs_floor_Df": ("forget_inplace", "floor_Df"),
    "forget_cached_vs_floor_Df": ("forget_cached", "floor_Df"),
    "model_copy_vs_floor_Df": ("model_copy", "floor_Df"),
    "forget_recompute_vs_floor_Df": ("forget_recompute", "floor_Df"),
    "forget_recompute_vs_cached": ("forget_recompute", "forget_cached"),
    "dampen_vs_importance_Df": ("dampen", "importance_batch_Df"),
    "dampen_vs_importance_B": ("dampen", "importance_batch_B_main"),
    "accumulate_vs_reference": ("accumulate", "accumulate_reference"),
    "bf16_vs_fp32": ("importance_bf16_B", "importance_fp32_B"),
    "channels_last_vs_default": ("importance_channels_last_B", "importance_fp32_B"),
}


def paired_ratios(times: dict[str, list[float]], key: str) -> list[float]:
    """Per repetition: the numerator's time over the denominator's (same repetition)."""
    num, den = RATIO_DEFS[key]
    return [a / b for a, b in zip(times[num], times[den])]


def ratio_summary(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, list[float]], dict[str, list[float]]]:
    """Median, [min, max] and [lower quartile, upper quartile] of the paired ratios of every
    RATIO_DEFS entry present in ``times`` (one timing group)."""
    medians, ranges, quartiles = {}, {}, {}
    for key, (num, den) in RATIO_DEFS.items():
        if num in times and den in times:
            r = paired_ratios(times, key)
            medians[key], ranges[key] = med(r), [min(r), max(r)]
            q1, _, q3 = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else r * 3
            quartiles[key] = [q1, q3]
    return medians, ranges, quartiles



def groups_summary(groups: list[tuple], clock: int) -> tuple[dict, dict, dict]:
    """:func:`ratio_summary` of every timing group (``clock`` 0: wall, 1: CPU), merged."""
    merged: tuple[dict, dict, dict] = ({}, {}, {})
    for group in groups:
        for out, summary in zip(merged, ratio_summary(group[clock])):
            out.update(summary)
    return merged


def bench_model(
    name: str, reps: int, head_reps: int, precision_reps: int, device: torch.device, seed: int, log, do_memory: bool,
    scale: str = "cpu",
) -> dict:
    cfg = sized(name, scale)
    torch.manual_seed(seed)
    model = cfg["build"]().to(device).eval()
    B, D, Df, desc = make_data(name, cfg, seed)
    B, D, Df = to_device(B, device), to_device(D, device), to_device(Df, device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"\n## {name}: {cfg['label']}, {n_params:,} parameters\n  data: {desc}")
    res: dict = {
        "model": cfg["label"],
        "parameters": n_params,
        "param_MiB": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "data": desc,
        "weights": "random initialisation (seeded; the ViT head drawn from N(0, 0.02^2) instead of torchvision's zeros); timings do not depend on training",
        "images_B": sum(len(y) for _, y in B),
        "batches_B": len(B),
        "images_D": sum(len(y) for _, y in D),
        "images_Df": sum(len(y) for _, y in Df),
        "sample_chunk_size": default_sample_chunk_size(model.parameters(), device),
        "objectives": {},
    }

    for objective in cfg["objectives"]:
        method = "lfssd" if objective == "l2" else "ssd"
        with_forget = objective in cfg["forget_objectives"]
        # Warm-up (one batch each) and correctness on B.
        floor_pass(model, B[:1], objective)
        ref = reference_loop(model, B, objective)
        imp = compute_importance(model, B, objective=objective, granularity="batch")
        check = compare(imp, ref)
        compute_importance(model, B[:1], objective=objective, granularity="sample")
        log(
            f"  [{objective}] correctness: compute_importance(batch) vs reference loop: "
            f"allclose={check['allclose']}, max |diff| = {check['max_abs_diff']:.2e} "
            f"({check['max_abs_diff_rel_to_max']:.1e} of the largest value)"
        )
        # Precision and memory-format variants of the batch estimator, and their effect on the values.
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        bf16 = compute_importance(model, B, objective=objective, autocast_dtype=torch.bfloat16)
        cl = compute_importance(model_cl, B, objective=objective, channels_last=True)
        precision = {"bf16_autocast": relative_error(bf16, imp), "channels_last": relative_error(cl, imp)}
        log(
            f"  [{objective}] bf16 autocast vs float32: relative l1 error {precision['bf16_autocast']['rel_l1']:.2e}; "
            f"channels_last: {precision['channels_last']['rel_l1']:.2e}"
        )
        grads = batch_gradients(model, B, objective)
        acc_pkg = [torch.zeros_like(g) for g in grads]
        acc_ref = [torch.zeros_like(g) for g in grads]
        # Rows 1-2: the floor, the package and the reference loop, in a group of their own.
        head_variants: dict[str, Callable[[], object]] = {
            "floor_B": lambda: floor_pass(model, B, objective),
            "importance_batch_B": lambda: compute_importance(model, B, objective=objective, granularity="batch"),
            "reference_B": lambda: reference_loop(model, B, objective),
        }
        variants: dict[str, Callable[[], object]] = {
            "importance_batch_B_main": head_variants["importance_batch_B"],
            "importance_sample_B": lambda: compute_importance(model, B, objective=objective, granularity="sample"),
            # The accumulation of one batch's gradients alone (abs_ in place is idempotent, so
            # the package's step can be repeated on the same gradients).
            "accumulate": lambda: _accumulate_(acc_pkg, grads, objective),
            "accumulate_reference": lambda: accumulate_reference(acc_ref, grads, objective),
        }
        # bf16 on a CPU without bfloat16 units is many times slower: these variants run in a
        # group of their own, with fewer repetitions and their own float32 baseline.
        precision_variants: dict[str, Callable[[], object]] = {
            "importance_fp32_B": lambda: compute_importance(model, B, objective=objective),
            "importance_bf16_B": lambda: compute_importance(model, B, objective=objective, autocast_dtype=torch.bfloat16),
            "importance_channels_last_B": lambda: compute_importance(model_cl, B, objective=objective, channels_last=True),
        }
        damp = None
        if with_forget:
            imp_D = compute_importance(model, D, objective=objective, granularity="batch")
            imp_Df = compute_importance(model, Df, objective=objective, granularity="batch")
            top = max_importance_ratio(imp_D, imp_Df)
            alpha = max(top / 2, 1e-6)  # selects something, so the edit does real work
            victim, edited = copy.deepcopy(model), copy.deepcopy(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NothingSelectedWarning)
                rep = select_and_dampen_(copy.deepcopy(model), imp_D, imp_Df, alpha=alpha, lambda_=1.0)
            damp = {"alpha": alpha, "max_ratio": top, "fraction_selected": rep.fraction_selected}
            log(
                f"  [{objective}] forget request: alpha = {alpha:.3g} (half the largest ratio {top:.3g}) "
                f"selects {100 * rep.fraction_selected:.3f}% of the weights"
            )

            def forget_cached():
                unlearn(model, Df, method=method, full_importance=imp_D, alpha=alpha, lambda_=1.0)

            # The in-place request and the dampening edit the same model at every call: its
            # weights are first put back (one copy of all weights, timed alone as
            # "restore_weights"), so that every call starts from the same weights and does the
            # same work (edited again and again, more and more weights would be zero).
            pristine = [p.detach().clone() for p in model.parameters()]
            edited_params, victim_params = list(edited.parameters()), list(victim.parameters())

            def restore(params):
                with torch.no_grad():
                    torch._foreach_copy_(params, pristine)

            def forget_inplace():
                restore(edited_params)
                unlearn(edited, Df, method=method, full_importance=imp_D, alpha=alpha, lambda_=1.0, inplace=True)

            def forget_recompute():
                unlearn(model, Df, method=method, full_loader=D, alpha=alpha, lambda_=1.0)

            def dampen():
                restore(victim_params)
                select_and_dampen_(victim, imp_D, imp_Df, alpha=alpha, lambda_=1.0, warn=False)

            variants.update(
                {
                    "floor_Df": lambda: floor_pass(model, Df, objective),
                    "importance_batch_Df": lambda: compute_importance(model, Df, objective=objective),
                    "forget_inplace": forget_inplace,
                    "forget_cached": forget_cached,
                    "model_copy": lambda: copy.deepcopy(model),
                    "forget_recompute": forget_recompute,
                    "dampen": dampen,
                    "restore_weights": lambda: restore(victim_params),
                }
            )
            forget_cached()  # warm-up
        log(f"  [{objective}] timing {len(head_variants)} variants x {head_reps} repetitions, interleaved")
        groups = [time_interleaved(head_variants, head_reps, device, log)]
        log(f"  [{objective}] timing {len(variants)} variants x {reps} repetitions, interleaved")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingSelectedWarning)
            groups.append(time_interleaved(variants, reps, device, log))
            log(f"  [{objective}] timing {len(precision_variants)} precision variants x {precision_reps} repetitions")
            groups.append(time_interleaved(precision_variants, precision_reps, device, log))
        # Ratios pair variants of one group (same repetition); the groups' keys are disjoint.
        times, cpu_times, inner = ({k: v for g in groups for k, v in g[j].items()} for j in range(3))
        m = {k: med(v) for k, v in times.items()}
        mc = {k: med(v) for k, v in cpu_times.items()}
        ratios, ratio_ranges, ratio_quartiles = groups_summary(groups, 0)
        cpu_ratios, cpu_ratio_ranges, cpu_ratio_quartiles = groups_summary(groups, 1)
        if with_forget:
            # The dampening costs a fixed time per weight; the pass over D_f grows with |D_f|.
            # Size of D_f (images) from which the dampening is <= 5% of that pass, from the
            # measured medians (time per image of the pass over D_f):
            per_image = m["importance_batch_Df"] / res_images(Df)
            damp["break_even_images_5pct"] = m["dampen"] / (GOALS["dampen_vs_importance_Df"] * per_image)
        res["objectives"][objective] = {
            "correctness": check,
            "times_s": times,
            "cpu_times_s": cpu_times,
            "calls_per_measurement": inner,
            "median_s": m,
            "median_cpu_s": mc,
            "ratios": ratios,
            "ratio_ranges": ratio_ranges,
            "ratio_quartiles": ratio_quartiles,
            "cpu_ratios": cpu_ratios,
            "cpu_ratio_ranges": cpu_ratio_ranges,
            "cpu_ratio_quartiles": cpu_ratio_quartiles,
            "dampening": damp,
            "precision": precision,
        }
        log("  [" + objective + "] wall: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
        log("  [" + objective + "] cpu:  " + ", ".join(f"{k} {v:.3f}" for k, v in cpu_ratios.items()))
    if do_memory:
        res["memory"] = run_memory_probes(name, cfg, seed, log, scale, model, B, device)
    return res


# --------------------------------------------------------------------------- report


def _each_objective(result: dict):
    """(model name, model record, objective, objective record) for every row of a result."""
    for name, r in result["models"].items():
        for obj, o in r["objectives"].items():
            yield name, r, obj, o


def fmt_ratio(x: float | None, goal: float | None = None, pct: bool = False) -> str:
    if x is None:
        return "—"
    s = f"{100 * x:.1f}%" if pct else f"{x:.2f}x"
    if goal is not None:
        s += " ✓" if x <= goal else " ✗"
    return s


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = [
        f"# Importance benchmark: {result['host']}",
        "",
        f"- CPU: {hw['cpu_model']}, {hw['logical_cpus']} logical CPUs, torch threads: {hw['torch_threads']}, "
        f"OMP_WAIT_POLICY={hw['omp_wait_policy']}",
        f"- torch {hw['torch_version']}, Python {hw['python_version']}, lfssd_tutorial {hw['package_version']}",
        f"- device: {hw['device']}; GPU: {hw['gpu'] or 'none (' + hw.get('gpu_note', '') + ')'}"
        + (
            f" ({hw['gpu_memory_GiB']:.0f} GiB, CUDA {hw['cuda_version']}, cuDNN {hw['cudnn_version']}; TF32 in "
            f"convolutions: {hw['cudnn_allow_tf32']}, in matrix products: {hw['matmul_allow_tf32']}, torch's defaults)"
            if hw.get("gpu") else ""
        ),
        f"- data sizes: `--scale {result.get('scale', 'cpu')}` (see Data below); command: `{result.get('command', 'make bench')}`",
        f"- Three timing groups. fwd+bwd, package and reference loop over B (the first two ratios): "
        f"{result['head_reps']} repetitions; the other variants: {result['reps']} repetitions; bf16 / channels_last: "
        f"{result['precision_reps']} repetitions with their own float32 baseline. Short variants are repeated "
        f"within a measurement to last >= {result.get('min_measurement_s', MIN_MEASUREMENT_S)} s. In each group the order is rotated every "
        "repetition (ABC, BCA, CAB). "
        "A ratio is the median over repetitions of the two variants' time ratio within one repetition; "
        "[min-max] over the repetitions where shown, and for the first two ratios also the quartiles "
        "(q1-q3, the middle half of the repetitions). Each cell: wall-clock ratio · process-CPU-time ratio "
        "(CPU time counts all threads and ignores time spent descheduled, so it is the steadier measure of "
        "work on a shared machine); ✓/✗ against the goal",
        f"- load average before / after: {result['loadavg_before']} / {result['loadavg_after']} "
        "(the machine was shared; ratios of interleaved runs are more stable than absolute times)",
        f"- total run time: {result['wall_s']:.0f} s",
        "",
        "## Ratios against the goals",
        "",
        "| model | objective | importance / fwd+bwd (≤1.15x) | importance / reference loop (≤1.0x) "
        "| sample / batch (≤4x, ResNet18) | forget, cached Imp_D, in place / fwd+bwd over D_f (≤1.2x) "
        "| forget, cached Imp_D, on a copy (default) / fwd+bwd over D_f "
        "| forget, recomputed Imp_D / fwd+bwd over D_f | dampening / importance over D_f (≤5%) | batch == reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, obj, o in _each_objective(result):

        def cell(key: str, goal: float | None = None, pct: bool = False, spread: bool = False, quartiles: bool = False) -> str:
            if key not in o["ratios"]:
                return "—"
            text = fmt_ratio(o["ratios"][key], goal, pct)
            if quartiles:
                q1, q3 = o["ratio_quartiles"][key]
                text += f" q1-q3 {q1:.2f}-{q3:.2f}"
            if spread:
                low, high = o["ratio_ranges"][key]
                text += f" [{low:.2f}-{high:.2f}]"
            return text + " · cpu " + fmt_ratio(o["cpu_ratios"][key], goal, pct)

        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    obj,
                    cell("importance_vs_floor", GOALS["importance_vs_floor"], spread=True, quartiles=True),
                    cell("importance_vs_reference", GOALS["importance_vs_reference"], spread=True, quartiles=True),
                    cell("sample_vs_batch", GOALS["sample_vs_batch"] if name == "resnet18" else None),
                    cell("forget_inplace_vs_floor_Df", GOALS["forget_inplace_vs_floor_Df"], spread=True),
                    cell("forget_cached_vs_floor_Df"),
                    cell("forget_recompute_vs_floor_Df"),
                    cell("dampen_vs_importance_Df", GOALS["dampen_vs_importance_Df"], pct=True),
                    "allclose" if o["correctness"]["allclose"] else "**MISMATCH**",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## The accumulation step alone",
        "",
        "The only work in which the package and the reference loop differ: adding one batch's gradients "
        "to the accumulators. Package: one fused multi-tensor operation (`_foreach_addcmul_` for fisher, "
        "`_foreach_abs_` + `_foreach_add_` for l2) on the gradients autograd returned; reference: per "
        "parameter `imp.data += g.clone().pow(2)` or `.abs()`. The deep copy of the model is what "
        "`unlearn(..., inplace=False)` (the default) adds to a request.",
        "",
        "| model | objective | accumulate / reference accumulate | accumulation, package (ms) | accumulation, reference (ms) "
        "| share of the reference loop's time | deep copy of the model / fwd+bwd over D_f |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, obj, o in _each_objective(result):
        m, q = o["median_s"], o["ratios"]
        per_batch_ref = m["reference_B"] / r["batches_B"]
        copy_share = f"{q['model_copy_vs_floor_Df']:.3f}x" if "model_copy_vs_floor_Df" in q else "—"
        lines.append(
            f"| {name} | {obj} | {q['accumulate_vs_reference']:.2f}x | {1000 * m['accumulate']:.2f} "
            f"| {1000 * m['accumulate_reference']:.2f} | {100 * m['accumulate_reference'] / per_batch_ref:.1f}% "
            f"| {copy_share} |"
        )
    lines += [
        "",
        "## Precision and memory-format variants of the batch estimator",
        "",
        "Time against the default float32 pass over B, and the change of the importance values: relative l1 "
        "error = sum |variant - float32| / sum |float32| over all weights; max = largest |difference| / largest "
        "value. bf16 autocast runs the forward (and so the backward's products) in bfloat16 and accumulates in "
        "float32; channels_last passes inputs and weights in NHWC layout.",
        "",
        "| model | objective | bf16 autocast: time | bf16: relative l1 error | bf16: max | channels_last: time "
        "| channels_last: relative l1 error |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, obj, o in _each_objective(result):
        pr = o.get("precision")
        if not pr:
            continue
        rt, rc = o["ratios"], o["cpu_ratios"]
        lines.append(
            f"| {name} | {obj} | {rt['bf16_vs_fp32']:.2f}x · cpu {rc['bf16_vs_fp32']:.2f}x "
            f"| {pr['bf16_autocast']['rel_l1']:.2e} | {pr['bf16_autocast']['max_rel_to_max']:.2e} "
            f"| {rt['channels_last_vs_default']:.2f}x · cpu {rc['channels_last_vs_default']:.2f}x "
            f"| {pr['channels_last']['rel_l1']:.2e} |"
        )
    notes = []
    for name, r, obj, o in _each_objective(result):
        d = o.get("dampening")
        if d and "break_even_images_5pct" in d:
            notes.append(
                f"- {name} {obj}: the dampening took {o['median_s']['dampen']:.3f} s (of which "
                f"{o['median_s']['restore_weights']:.4f} s putting back the original weights); it is <= 5% of the "
                f"importance pass over D_f once |D_f| >= {d['break_even_images_5pct']:.0f} images (measured "
                f"here with |D_f| = {r['images_Df']}; alpha = {d['alpha']:.3g} selected "
                f"{100 * d['fraction_selected']:.2f}% of the weights)"
            )
    if notes:
        lines += [
            "",
            "## Dampening: fixed cost per weight vs the pass over D_f",
            "",
            "The dampening's time depends on the number of weights, the pass over D_f on |D_f|. From "
            "the medians (time per image of the pass over D_f):",
            "",
        ] + notes
    lines += [
        "",
        "## Median times (seconds)",
        "",
        "| model | objective | images B / D / D_f | fwd+bwd B | importance batch B | reference B | importance sample B "
        "| fwd+bwd D_f | importance D_f | forget in place | forget cached | forget recomputed | dampening |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, obj, o in _each_objective(result):
        m = o["median_s"]

        def g(k):
            return f"{m[k]:.3f}" if k in m else "—"

        lines.append(
            f"| {name} | {obj} | {r['images_B']} / {r['images_D']} / {r['images_Df']} | {g('floor_B')} "
            f"| {g('importance_batch_B')} | {g('reference_B')} | {g('importance_sample_B')} | {g('floor_Df')} "
            f"| {g('importance_batch_Df')} | {g('forget_inplace')} | {g('forget_cached')} | {g('forget_recompute')} "
            f"| {g('dampen')} |"
        )
    lines += [
        "",
        "## Peak memory of one pass (objective l2)",
        "",
        result["memory_method"],
        "",
        "| model | variant | images (batch) | peak increase (MiB) | parameters (MiB) | peak / parameters |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        for rec in r.get("memory", []):
            v = rec["variant"] + (f", chunk {rec['chunk']}" if rec["chunk"] else "")
            lines.append(
                f"| {name} | {v} | {rec['images']} ({rec['batch_size']}) | {rec['peak_increase_MiB']:.0f} "
                f"| {rec['param_MiB']:.1f} | {rec['peak_over_params']:.2f}x |"
            )
    lines += ["", "## Data", ""]
    for name, r in result["models"].items():
        lines.append(f"- {name}: {r['model']}; {r['data']}; {r['weights']}.")
    lines += ["", "## Variants", ""] + [f"- {k}: {v}" for k, v in result["variants"].items()]
    return "\n".join(lines) + "\n"


VARIANTS = {
    "fwd+bwd (floor)": "per batch: zero_grad(set_to_none=True), forward, the objective's batch mean, backward(); eval mode",
    "importance batch": 'compute_importance(model, batches, objective=..., granularity="batch")',
    "reference loop": "per batch: model.zero_grad(), forward, backward(), then for every parameter "
    "imp.data += p.grad.data.clone().pow(2) (fisher) or .abs() (l2); finally divide by the number of batches",
    "importance sample": 'compute_importance(..., granularity="sample") with the default sample_chunk_size '
    "(16 on a CPU; on a GPU chosen from the free memory, see each model's sample_chunk_size in the JSON)",
    "importance bf16": 'compute_importance(..., autocast_dtype=torch.bfloat16) (forward under torch.autocast, float32 accumulation)',
    "importance channels_last": "compute_importance(model.to(memory_format=torch.channels_last), ..., channels_last=True)",
    "forget cached, in place": "unlearn(model, D_f, method=..., full_importance=Imp_D, inplace=True), after "
    "putting back the model's original weights (restore weights)",
    "forget cached": 'unlearn(model, D_f, method=..., full_importance=Imp_D) (the default: a deep copy of the model is edited)',
    "model copy": "copy.deepcopy(model)",
    "accumulate": "the package's accumulation of one batch's gradients (_accumulate_)",
    "accumulate reference": "imp.data += g.data.clone().pow(2) (fisher) or .abs() (l2), per parameter, for one batch's gradients",
    "forget recomputed": "unlearn(model, D_f, method=..., full_loader=D)",
    "dampening": "select_and_dampen_(model, Imp_D, Imp_Df, alpha, lambda_=1) with alpha = half the largest ratio, "
    "after putting back the model's original weights (restore weights)",
    "restore weights": "torch._foreach_copy_ of the original weights into the edited model's parameters (part of the "
    "in-place request's and the dampening's times, so that every call starts from the same weights)",
}

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


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark script was called, less ``--out`` (a local path, not part of the measurement)."""
    args = sys.argv[1:] if argv is None else list(argv)
    shown = [a for i, a in enumerate(args)
             if a != "--out" and not a.startswith("--out=") and not (i > 0 and args[i - 1] == "--out")]
    return " ".join([f"python benchmarks/{script}", *shown])


def main(argv: list[str] | None = None) -> int:
    global MIN_MEASUREMENT_S
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per variant (default 5)")
    p.add_argument(
        "--head-reps", type=int, default=None,
        help="repetitions of the fwd+bwd / package / reference-loop group (default: 3 x --reps)",
    )
    p.add_argument(
        "--precision-reps", type=int, default=None,
        help="repetitions of the bf16 / channels_last group (default: --reps on a GPU, 2 on a CPU)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--scale", choices=SCALES, default=None,
        help="data sizes: the small cpu ones, or the larger gpu ones (default: gpu on CUDA, else cpu)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--host", default=None, help="short name for the results files (default cpu-<N>core / gpu-<card>)")
    p.add_argument("--out", default=str(ROOT / "results"), help="folder for bench-<host>.json/.md")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--min-measurement", type=float, default=MIN_MEASUREMENT_S,
        help=f"short variants are repeated until one measurement lasts this many seconds (default {MIN_MEASUREMENT_S})",
    )
    p.add_argument(
        "--memory-probe", nargs=6, metavar=("MODEL", "VARIANT", "OBJECTIVE", "CHUNK", "SEED", "SCALE"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")
    if args.memory_probe:
        m, v, o, c, s, scale = args.memory_probe
        print(json.dumps(memory_probe(m, v, o, int(c), int(s), scale)))
        return 0

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.precision_reps is None:
        args.precision_reps = args.reps if device.type == "cuda" else min(args.reps, 2)
    if args.head_reps is None:
        args.head_reps = 3 * args.reps
    if args.scale is None:
        args.scale = "gpu" if device.type == "cuda" else "cpu"
    if args.reps < 1 or args.precision_reps < 1 or args.head_reps < 1:
        p.error("--reps, --head-reps and --precision-reps must be >= 1")
    if not args.min_measurement > 0:
        p.error("--min-measurement must be > 0")
    MIN_MEASUREMENT_S = args.min_measurement
    host = args.host or host_name(device)
    hw = hardware(device)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"# Importance benchmark on {host}")
    log(
        f"CPU {hw['cpu_model']} ({hw['logical_cpus']} logical CPUs), torch {hw['torch_version']}, "
        f"torch threads {hw['torch_threads']}, device {hw['device']}"
    )
    if device.type != "cuda":
        log("No GPU available: CPU measurements only.")
    load_before = loadavg()
    t0 = time.perf_counter()
    models: dict = {}

    def result() -> dict:
        return {
            "host": host,
            "date": _dt.date.today().isoformat(),
            "hardware": hw,
            "reps": args.reps,
            "head_reps": args.head_reps,
            "precision_reps": args.precision_reps,
            "scale": args.scale,
            "min_measurement_s": MIN_MEASUREMENT_S,
            "command": command_line("bench_importance.py", argv),
            "seed": args.seed,
            "goals": GOALS,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "wall_s": time.perf_counter() - t0,
            "complete": len(models) == len(args.models),
            "variants": VARIANTS,
            "memory_method": CUDA_MEMORY_METHOD if device.type == "cuda" else MEMORY_METHOD,
            "models": models,
        }

    def write(final: bool) -> None:
        res = result()
        md = markdown(res)
        if final:
            log("\n" + md)
        if not args.no_write:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"bench-{host}.json").write_text(json.dumps(res, indent=1) + "\n")
            (out / f"bench-{host}.md").write_text(md)
            if final:
                log(f"wrote {out / f'bench-{host}.json'} and {out / f'bench-{host}.md'}")

    for name in args.models:
        models[name] = bench_model(
            name, args.reps, args.head_reps, args.precision_reps, device, args.seed, log, do_memory=not args.no_memory,
            scale=args.scale,
        )
        if len(models) < len(args.models):
            write(final=False)  # what is measured so far survives an interrupted run ("complete": false)
    write(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
