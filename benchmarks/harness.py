"""The measuring tools shared by the benchmark scripts.

- timing: :func:`time_interleaved` (variants run in rotated order, repeated, each measurement
  long enough to time, see :func:`calibrate`), :func:`time_calls` (one function, repeated),
  :func:`sync`;
- summaries: :func:`paired_ratios`, :func:`ratio_summary` (median, range and quartiles of
  per-repetition ratios), :func:`summarise` (all of a benchmark's timing groups);
- memory: :func:`proc_kib` (``/proc`` readers), :func:`rss_peak_increase` (host) and
  :func:`cuda_peak_increase` (GPU);
- the machine: :func:`hardware`, :func:`host_name`, :func:`loadavg`;
- :func:`command_line`: how a script was called, for the results files.

A script in ``benchmarks/`` imports it as ``import harness`` (Python puts a script's own
folder first on ``sys.path``).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import torch

import lfssd_tutorial

DEFAULT_MIN_MEASUREMENT_S = 0.25

Log = Callable[[str], None]
Timings = dict[str, list[float]]


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(fn: Callable[[], object], device: torch.device, min_measurement: float = DEFAULT_MIN_MEASUREMENT_S) -> int:
    """How many calls of ``fn`` (1 to 50) make one measurement last at least ``min_measurement`` seconds."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    dt = time.perf_counter() - t0
    return max(1, min(50, int(min_measurement / max(dt, 1e-6)) + 1)) if dt < min_measurement else 1


def time_interleaved(
    variants: Mapping[str, Callable[[], object]], reps: int, device: torch.device, log: Log,
    min_measurement: float = DEFAULT_MIN_MEASUREMENT_S,
) -> tuple[Timings, Timings, dict[str, int]]:
    """Run every variant once per repetition, in an order rotated each repetition (ABC, BCA,
    CAB, ...: every variant as often in each position, and never twice in a row, which
    would favour its second run with caches and allocator already warm).

    Returns wall-clock seconds and process CPU seconds (all threads; insensitive to time
    spent descheduled on a shared machine) per call, and the calls per measurement
    (:func:`calibrate`).
    """
    names = list(variants)
    inner = {n: calibrate(variants[n], device, min_measurement) for n in names}
    wall: Timings = {n: [] for n in names}
    cpu: Timings = {n: [] for n in names}
    for r in range(reps):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for n in order:
            gc.collect()
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner[n]):
                variants[n]()
            sync(device)
            wall[n].append((time.perf_counter() - t0) / inner[n])
            cpu[n].append((time.process_time() - c0) / inner[n])
        log(f"    rep {r + 1}/{reps}: " + ", ".join(f"{n} {wall[n][-1]:.3f}s" for n in names))
    return wall, cpu, inner


def time_calls(fn: Callable[[], object], device: torch.device, reps: int) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn``, one call per measurement."""
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- summaries


def med(xs: list[float]) -> float:
    return statistics.median(xs)


RatioDefs = Mapping[str, tuple[str, str]]


def paired_ratios(times: Timings, num: str, den: str) -> list[float]:
    """Per repetition: the time of ``num`` over the time of ``den`` (same repetition)."""
    return [a / b for a, b in zip(times[num], times[den])]


def ratio_summary(times: Timings, ratio_defs: RatioDefs) -> tuple[dict[str, float], dict[str, list[float]], dict[str, list[float]]]:
    """Median, [min, max] and [lower quartile, upper quartile] of the paired ratios of every
    ``ratio_defs`` entry (name: (numerator, denominator)) whose two variants are in ``times``
    (one timing group)."""
    medians, ranges, quartiles = {}, {}, {}
    for key, (num, den) in ratio_defs.items():
        if num in times and den in times:
            r = paired_ratios(times, num, den)
            medians[key], ranges[key] = med(r), [min(r), max(r)]
            q1, _, q3 = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else r * 3
            quartiles[key] = [q1, q3]
    return medians, ranges, quartiles


def summarise(groups: list[tuple[Timings, Timings, dict[str, int]]], ratio_defs: RatioDefs) -> dict:
    """Times, medians and ratios of timing groups (:func:`time_interleaved` results).

    A ratio pairs two variants of one group (same repetition); the groups' variant names
    must be disjoint. Ratios: the median, ``ratio_ranges`` [min, max] and
    ``ratio_quartiles`` [q1, q3] of :func:`ratio_summary`, for wall-clock (``ratios``) and
    CPU times (``cpu_ratios``).
    """
    times, cpu_times, calls = ({k: v for g in groups for k, v in g[j].items()} for j in range(3))
    out = {"times_s": times, "cpu_times_s": cpu_times, "calls_per_measurement": calls,
           "median_s": {k: med(v) for k, v in times.items()},
           "median_cpu_s": {k: med(v) for k, v in cpu_times.items()}}
    for clock, prefix in ((0, ""), (1, "cpu_")):
        merged: tuple[dict, dict, dict] = ({}, {}, {})
        for group in groups:
            for into, part in zip(merged, ratio_summary(group[clock], ratio_defs)):
                into.update(part)
        out[prefix + "ratios"], out[prefix + "ratio_ranges"], out[prefix + "ratio_quartiles"] = merged
    return out


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


def can_reset_peak_rss() -> bool:
    """Whether this kernel lets a process reset its peak-RSS counter (Linux)."""
    return os.path.exists("/proc/self/clear_refs")


def rss_peak_increase(run: Callable[[], object]) -> int:
    """Bytes by which this process's resident memory rose at its peak during ``run()``.

    Freed heap is first returned to the OS (``malloc_trim``), the kernel's peak-RSS counter
    reset (``echo 5 > /proc/self/clear_refs``) and ``VmRSS`` read as the baseline; after
    ``run()``, ``VmHWM`` (the peak RSS since the reset) minus the baseline is the result.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = proc_kib("VmRSS")
    run()
    peak = proc_kib("VmHWM")
    return (peak - base) * 1024


def cuda_peak_increase(run: Callable[[], object], device: torch.device) -> int:
    """Bytes of CUDA memory allocated by torch at the peak of ``run()``, above what was allocated before.

    torch's caching allocator is emptied and its peak counter reset, ``memory_allocated``
    read as the baseline, ``run()`` called, and ``max_memory_allocated`` minus the baseline
    returned.
    """
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


# --------------------------------------------------------------------------- the machine


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
    """The CPU, the GPU (if ``device`` is one), the threads and the versions, for a results file."""
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
    """A short, stable name for the results files: ``cpu-<N>core`` or ``gpu-<card>``, never the machine's host name."""
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device).lower()
        return "gpu-" + "".join(c if c.isalnum() else "-" for c in card).strip("-")
    return f"cpu-{logical_cpus()}core"


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark script was called, less ``--out`` (a local path, not part of the measurement)."""
    args = sys.argv[1:] if argv is None else list(argv)
    shown = [a for i, a in enumerate(args)
             if a != "--out" and not a.startswith("--out=") and not (i > 0 and args[i - 1] == "--out")]
    return " ".join([f"python benchmarks/{script}", *shown])
