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
The models, the data and the reference code are in ``bench_setup.py``, the timing and
memory tools in ``harness.py``, the report writer in ``bench_report.py``.

``--only dampening`` measures row 5 alone (the dampening, the importance pass over ``D_f``
and their ratio, one timing group of ``--reps`` repetitions per objective) and prints it,
writing no files. ``--forget-images N`` sets the size of ``D_f`` (e.g. 83, the smallest
forget set of the papers).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# On a shared (oversubscribed) machine, OpenMP threads that spin while waiting slow every
# parallel op down by several times and make timings erratic. Passive waiting must be set
# before torch (and its OpenMP runtime) is loaded; an explicit setting is respected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import harness  # noqa: E402
from bench_memory import CUDA_MEMORY_METHOD, MEMORY_METHOD, memory_probe, run_memory_probes  # noqa: E402
from bench_report import dampening_markdown, markdown  # noqa: E402
from bench_setup import (  # noqa: E402
    CONFIGS, SCALES, VARIANTS, Batches, accumulate_reference, batch_gradients, compare, floor_pass, make_data,
    n_images, reference_loop, relative_error, sized, to_device,
)
from lfssd_tutorial import (  # noqa: E402
    compute_importance, max_importance_ratio, select_and_dampen_, unlearn,
)
from lfssd_tutorial.importance import accumulate_, default_sample_chunk_size  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

GOALS = {
    "importance_vs_floor": 1.15,
    "importance_vs_reference": 1.0,
    "sample_vs_batch": 4.0,
    "forget_inplace_vs_floor_Df": 1.2,
    "dampen_vs_importance_Df": 0.05,
}


@dataclass
class Settings:
    """How much to measure (the command line's options)."""

    reps: int = 5  # repetitions of the main timing group
    head_reps: int = 15  # repetitions of the fwd+bwd / package / reference-loop group
    precision_reps: int = 2  # repetitions of the bf16 / channels_last group
    min_measurement: float = harness.DEFAULT_MIN_MEASUREMENT_S
    seed: int = 0
    scale: str = "cpu"
    memory: bool = True  # measure the peak memory of a pass
    forget_images: int | None = None  # |D_f| (default: the configuration's)


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


def forget_variants(
    model: nn.Module, D: Batches, Df: Batches, objective: str, log
) -> tuple[dict[str, Callable[[], object]], dict]:
    """The timed variants of a forget request over ``Df`` with ``Imp_D`` (over ``D``) cached,
    and the dampening's settings (alpha = half the largest importance ratio, so that the
    edit selects weights and does real work)."""
    method = "lfssd" if objective == "l2" else "ssd"
    imp_D = compute_importance(model, D, objective=objective, granularity="batch")
    imp_Df = compute_importance(model, Df, objective=objective, granularity="batch")
    top = max_importance_ratio(imp_D, imp_Df)
    alpha = max(top / 2, 1e-6)
    victim, edited = copy.deepcopy(model), copy.deepcopy(model)
    rep = select_and_dampen_(copy.deepcopy(model), imp_D, imp_Df, alpha=alpha, lambda_=1.0, warn=False)
    damp = {"alpha": alpha, "max_ratio": top, "fraction_selected": rep.fraction_selected}
    log(
        f"  [{objective}] forget request: alpha = {alpha:.3g} (half the largest ratio {top:.3g}) "
        f"selects {100 * rep.fraction_selected:.3f}% of the weights"
    )

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
        unlearn(edited, Df, method=method, full_importance=imp_D, alpha=alpha, lambda_=1.0, inplace=True, warn=False)

    def dampen():
        restore(victim_params)
        select_and_dampen_(victim, imp_D, imp_Df, alpha=alpha, lambda_=1.0, warn=False)

    def forget_cached():
        unlearn(model, Df, method=method, full_importance=imp_D, alpha=alpha, lambda_=1.0, warn=False)

    def forget_recompute():
        unlearn(model, Df, method=method, full_loader=D, alpha=alpha, lambda_=1.0, warn=False)

    variants = {
        "floor_Df": lambda: floor_pass(model, Df, objective),
        "importance_batch_Df": lambda: compute_importance(model, Df, objective=objective),
        "forget_inplace": forget_inplace,
        "forget_cached": forget_cached,
        "model_copy": lambda: copy.deepcopy(model),
        "forget_recompute": forget_recompute,
        "dampen": dampen,
        "restore_weights": lambda: restore(victim_params),
    }
    return variants, damp


def break_even_images(median_s: dict[str, float], Df: Batches, goal: float) -> float:
    """|D_f| (images) from which the dampening is at most ``goal`` of the importance pass over
    D_f: the dampening costs a fixed time per weight, the pass grows with |D_f| (time per
    image from the medians)."""
    per_image = median_s["importance_batch_Df"] / n_images(Df)
    return median_s["dampen"] / (goal * per_image)


def setup(name: str, settings: Settings, device: torch.device, log) -> tuple[dict, nn.Module, Batches, Batches, Batches, dict]:
    """The configuration, the model, B, D, D_f (on ``device``) and the model's record."""
    cfg = sized(name, settings.scale)
    torch.manual_seed(settings.seed)
    model = cfg["build"]().to(device).eval()
    B, D, Df, desc = make_data(name, cfg, settings.seed, settings.forget_images)
    B, D, Df = to_device(B, device), to_device(D, device), to_device(Df, device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"\n## {name}: {cfg['label']}, {n_params:,} parameters\n  data: {desc}")
    res: dict = {
        "model": cfg["label"],
        "parameters": n_params,
        "param_MiB": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "data": desc,
        "weights": "random initialisation (seeded; the ViT head drawn from N(0, 0.02^2) instead of torchvision's zeros); timings do not depend on training",
        "images_B": n_images(B),
        "batches_B": len(B),
        "images_D": n_images(D),
        "images_Df": n_images(Df),
        "sample_chunk_size": default_sample_chunk_size(model.parameters(), device),
        "objectives": {},
    }
    return cfg, model, B, D, Df, res


def bench_model(name: str, settings: Settings, device: torch.device, log) -> dict:
    """Every measurement of one model: the record ``results`` keeps under ``models[name]``."""
    cfg, model, B, D, Df, res = setup(name, settings, device, log)

    def timed(variants: dict, reps: int) -> tuple:
        return harness.time_interleaved(variants, reps, device, log, settings.min_measurement)

    for objective in cfg["objectives"]:
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
            "accumulate": lambda: accumulate_(acc_pkg, grads, objective),
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
            forget, damp = forget_variants(model, D, Df, objective, log)
            variants.update(forget)
            forget["forget_cached"]()  # warm-up
        log(f"  [{objective}] timing {len(head_variants)} variants x {settings.head_reps} repetitions, interleaved")
        groups = [timed(head_variants, settings.head_reps)]
        log(f"  [{objective}] timing {len(variants)} variants x {settings.reps} repetitions, interleaved")
        groups.append(timed(variants, settings.reps))
        log(f"  [{objective}] timing {len(precision_variants)} precision variants x {settings.precision_reps} repetitions")
        groups.append(timed(precision_variants, settings.precision_reps))
        summary = harness.summarise(groups, RATIO_DEFS)
        if with_forget:
            damp["break_even_images_5pct"] = break_even_images(summary["median_s"], Df, GOALS["dampen_vs_importance_Df"])
        res["objectives"][objective] = {"correctness": check, **summary, "dampening": damp, "precision": precision}
        log("  [" + objective + "] wall: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["ratios"].items()))
        log("  [" + objective + "] cpu:  " + ", ".join(f"{k} {v:.3f}" for k, v in summary["cpu_ratios"].items()))
    if settings.memory:
        res["memory"] = run_memory_probes(name, cfg, settings.seed, log, settings.scale, model, B, device)
    return res


def bench_dampening(name: str, settings: Settings, device: torch.device, log) -> dict:
    """Row 5 alone: the dampening against the importance pass over D_f (and the copy of the
    weights that precedes each dampening), one timing group per objective of a forget request."""
    cfg, model, _, D, Df, res = setup(name, settings, device, log)
    for objective in cfg["forget_objectives"]:
        forget, damp = forget_variants(model, D, Df, objective, log)
        variants = {k: forget[k] for k in ("importance_batch_Df", "dampen", "restore_weights")}
        log(f"  [{objective}] timing {len(variants)} variants x {settings.reps} repetitions, interleaved")
        group = harness.time_interleaved(variants, settings.reps, device, log, settings.min_measurement)
        summary = harness.summarise([group], RATIO_DEFS)
        damp["break_even_images_5pct"] = break_even_images(summary["median_s"], Df, GOALS["dampen_vs_importance_Df"])
        res["objectives"][objective] = {**summary, "dampening": damp}
    return res




def main(argv: list[str] | None = None) -> int:
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
        "--min-measurement", type=float, default=harness.DEFAULT_MIN_MEASUREMENT_S,
        help="short variants are repeated until one measurement lasts this many seconds "
        f"(default {harness.DEFAULT_MIN_MEASUREMENT_S})",
    )
    p.add_argument(
        "--only", choices=("dampening",), default=None,
        help="dampening: measure only the dampening against the importance pass over D_f (bench-dampening-<host>.json/.md)",
    )
    p.add_argument("--forget-images", type=int, default=None, help="|D_f| in images (default: each model's own)")
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
    if args.forget_images is not None and args.forget_images < 1:
        p.error("--forget-images must be >= 1")
    settings = Settings(
        reps=args.reps, head_reps=args.head_reps, precision_reps=args.precision_reps,
        min_measurement=args.min_measurement, seed=args.seed, scale=args.scale, memory=not args.no_memory,
        forget_images=args.forget_images,
    )
    host = args.host or harness.host_name(device)
    hw = harness.hardware(device)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"# Importance benchmark on {host}")
    log(
        f"CPU {hw['cpu_model']} ({hw['logical_cpus']} logical CPUs), torch {hw['torch_version']}, "
        f"torch threads {hw['torch_threads']}, device {hw['device']}"
    )
    if device.type != "cuda":
        log("No GPU available: CPU measurements only.")
    load_before = harness.loadavg()
    if args.only == "dampening":
        models = {name: bench_dampening(name, settings, device, log) for name in args.models}
        md = dampening_markdown(host, models, GOALS["dampen_vs_importance_Df"])
        log("\n" + md)
        log(f"load average before / after: {load_before} / {harness.loadavg()}")
        if not args.no_write:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            res = {
                "host": host, "date": _dt.date.today().isoformat(), "hardware": hw, "reps": args.reps,
                "command": harness.command_line("bench_importance.py", argv), "goals": GOALS,
                "loadavg_before": load_before, "loadavg_after": harness.loadavg(), "models": models,
            }
            (out / f"bench-dampening-{host}.json").write_text(json.dumps(res, indent=1) + "\n")
            (out / f"bench-dampening-{host}.md").write_text(md)
            log(f"wrote {out / f'bench-dampening-{host}.json'} and .md")
        return 0
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
            "min_measurement_s": args.min_measurement,
            "command": harness.command_line("bench_importance.py", argv),
            "seed": args.seed,
            "goals": GOALS,
            "loadavg_before": load_before,
            "loadavg_after": harness.loadavg(),
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
        models[name] = bench_model(name, settings, device, log)
        if len(models) < len(args.models):
            write(final=False)  # what is measured so far survives an interrupted run ("complete": false)
    write(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
