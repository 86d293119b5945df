#!/usr/bin/env python
"""The markdown report of an importance benchmark result (``bench_importance.py``).

:func:`markdown` turns the result (the dictionary written to ``bench-<host>.json``) into the
report written beside it as ``bench-<host>.md``. Run as a script, it renders a results file
that already exists::

    python benchmarks/bench_report.py results/bench-cpu-2core.json [--out REPORT.md]

(default: the ``.md`` file beside the JSON; ``--out -`` prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import DEFAULT_MIN_MEASUREMENT_S


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
    """The report of a benchmark result: its settings, the ratios against the goals, then the details."""
    hw = result["hardware"]
    goals = result["goals"]
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
        f"within a measurement to last >= {result.get('min_measurement_s', DEFAULT_MIN_MEASUREMENT_S)} s. In each group the order is rotated every "
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
                    cell("importance_vs_floor", goals["importance_vs_floor"], spread=True, quartiles=True),
                    cell("importance_vs_reference", goals["importance_vs_reference"], spread=True, quartiles=True),
                    cell("sample_vs_batch", goals["sample_vs_batch"] if name == "resnet18" else None),
                    cell("forget_inplace_vs_floor_Df", goals["forget_inplace_vs_floor_Df"], spread=True),
                    cell("forget_cached_vs_floor_Df"),
                    cell("forget_recompute_vs_floor_Df"),
                    cell("dampen_vs_importance_Df", goals["dampen_vs_importance_Df"], pct=True),
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


def dampening_markdown(host: str, models: dict, goal: float) -> str:
    """The table of ``bench_importance.py --only dampening``: per model and objective, the
    dampening against the importance pass over D_f."""
    lines = [
        f"# Dampening / importance over D_f: {host} (goal <= {100 * goal:.0f}%)",
        "",
        "| model | objective | images D_f | importance D_f (s) | dampening (s) | restore weights (s) "
        f"| dampening / importance D_f [min-max] · cpu | images D_f from which <= {100 * goal:.0f}% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in models.items():
        for obj, o in r["objectives"].items():
            m, key = o["median_s"], "dampen_vs_importance_Df"
            low, high = o["ratio_ranges"][key]
            lines.append(
                f"| {name} | {obj} | {r['images_Df']} | {m['importance_batch_Df']:.4f} | {m['dampen']:.4f} "
                f"| {m['restore_weights']:.4f} | {100 * o['ratios'][key]:.2f}% [{100 * low:.2f}-{100 * high:.2f}%] "
                f"· cpu {100 * o['cpu_ratios'][key]:.2f}% | {o['dampening']['break_even_images_5pct']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render the markdown report of an importance benchmark's JSON result.")
    p.add_argument("result", help="a bench-<host>.json written by bench_importance.py")
    p.add_argument("--out", default=None, help="where to write the report (default: the .md beside the JSON; -: print)")
    args = p.parse_args(argv)
    path = Path(args.result)
    text = markdown(json.loads(path.read_text()))
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.out) if args.out else path.with_suffix(".md")
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
