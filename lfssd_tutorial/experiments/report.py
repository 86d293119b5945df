"""Reports of a results file: mean and sd over seeds, markdown tables, CSV and plots."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..plots import BOOK_WIDTH, METHOD_COLOURS
from ..utils import atomic_write_text
from .store import file_slug, read_results

__all__ = ["METRICS", "summarise", "markdown_tables", "write_report", "plot_summary", "plot_sweep"]

#: The reported metrics: record key and column title.
METRICS = (("acc_retain", "Acc(D_r)"), ("acc_forget", "Acc(D_f)"), ("mia", "MIA"))


def _pyplot():
    """``matplotlib.pyplot``, drawing off screen unless a backend is already chosen."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(records: Iterable[Mapping], timings: Iterable[Mapping] = ()) -> list[dict]:
    """One row per (experiment, scenario, target, method label): mean and sd over seeds.

    Rows keep the order of first appearance, except that within each target the
    Retrain row comes directly after the Original row (the retrained model is always
    shown beside the unlearned ones). ``seconds`` is the mean wall time when timings are given.
    """
    secs = {t["key"]: t.get("seconds") for t in timings}
    groups: dict[tuple, list[Mapping]] = {}
    for r in records:
        groups.setdefault((r["experiment"], r["scenario"], r["target"], r["label"]), []).append(r)
    rows = []
    for (exp, scen, target, label), rs in groups.items():
        row = {"experiment": exp, "scenario": scen, "target": target, "label": label, "method": rs[0]["method"], "n": len(rs),
               "seeds": sorted(r["seed"] for r in rs)}
        for key, _ in METRICS:
            row[f"{key}_mean"], row[f"{key}_sd"] = _mean_sd([r[key] for r in rs])
        if "selected" in rs[0]:
            row["selected_mean"] = float(np.mean([r["selected"] for r in rs]))
            ratios = [r["max_ratio"] for r in rs if r.get("max_ratio") is not None]
            row["max_ratio_mean"] = float(np.mean(ratios)) if ratios else None
            row["nothing_selected"] = sum(r["selected"] == 0 for r in rs)
        s = [secs[r["key"]] for r in rs if secs.get(r["key"]) is not None]
        row["seconds_mean"] = float(np.mean(s)) if s else None
        rows.append(row)
    order = {"original": 0, "retrain": 1}
    blocks: dict[tuple, list[dict]] = {}
    for row in rows:
        blocks.setdefault((row["experiment"], row["scenario"], row["target"]), []).append(row)
    out = []
    for block in blocks.values():
        out += sorted(block, key=lambda r: order.get(r["method"], 2))  # stable: others keep their order
    return out


def _fmt(mean: float, sd: float, n: int) -> str:
    return f"{mean:.2f} ± {sd:.2f}" if n > 1 else f"{mean:.2f}"


def markdown_tables(rows: Sequence[Mapping]) -> str:
    """Markdown tables (one per experiment and target) of :func:`summarise` rows."""
    out = []
    blocks: dict[tuple, list[Mapping]] = {}
    for r in rows:
        blocks.setdefault((r["experiment"], r["scenario"], r["target"]), []).append(r)
    for (exp, scen, target), block in blocks.items():
        out.append(f"### {exp}: {scen.replace('_', '-')} forgetting, target `{target}`\n")
        out.append("| Method | Acc(D_r) | Acc(D_f) | MIA | seeds | selected | max ratio | seconds |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in block:
            cells = [_fmt(r[f"{k}_mean"], r[f"{k}_sd"], r["n"]) for k, _ in METRICS]
            sel = f"{r['selected_mean']:,.0f}" if "selected_mean" in r else "–"
            if r.get("nothing_selected"):
                sel += f" (none in {r['nothing_selected']}/{r['n']})"
            ratio = f"{r['max_ratio_mean']:.2f}" if r.get("max_ratio_mean") is not None else "–"
            secs = f"{r['seconds_mean']:.1f}" if r.get("seconds_mean") is not None else "–"
            out.append(f"| {r['label']} | {' | '.join(cells)} | {r['n']} | {sel} | {ratio} | {secs} |")
        out.append("")
    return "\n".join(out)


def write_report(results: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, plots: bool = True) -> dict:
    """Write ``report.md``, ``summary.csv`` and (``plots``) one bar chart per target.

    ``results`` is a results JSONL file or the folder holding ``results.jsonl`` (and
    ``timings.jsonl``). Returns ``{"rows": ..., "markdown": ..., "files": [...]}``.
    """
    results = os.fspath(results)
    path = os.path.join(results, "results.jsonl") if os.path.isdir(results) else results
    base = os.path.dirname(path)
    out_dir = os.fspath(out_dir) if out_dir is not None else base
    os.makedirs(out_dir, exist_ok=True)
    records = read_results(path)
    if not records:
        raise ValueError(f"no results in {path}")
    timings = read_results(os.path.join(base, "timings.jsonl"))
    rows = summarise(records, timings)
    md = "Mean ± sample standard deviation over training seeds (n = seeds). Accuracies and MIA in percent.\n\n" + markdown_tables(rows)
    files = []
    report_md = os.path.join(out_dir, "report.md")
    atomic_write_text(report_md, md)
    files.append(report_md)
    csv_path = os.path.join(out_dir, "summary.csv")
    columns = ["experiment", "scenario", "target", "label", "method", "n"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "sd")] + [
        "selected_mean", "max_ratio_mean", "nothing_selected", "seconds_mean"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k, "")) for k in columns})
    files.append(csv_path)
    if plots:
        files += plot_summary(rows, out_dir)
    return {"rows": rows, "markdown": md, "files": files}


def plot_summary(rows: Sequence[Mapping], out_dir: str) -> list[str]:
    """One figure per (experiment, target): bars of Acc(D_r), Acc(D_f), MIA with sd error bars.

    One bar a method row, the rows down the side; the retrained model's value is a dashed
    line across each panel. The figure is ``lfssd_tutorial.plots.BOOK_WIDTH`` (7.5 in) wide.
    """
    plt = _pyplot()
    files = []
    blocks: dict[tuple, list[Mapping]] = {}
    for r in rows:
        blocks.setdefault((r["experiment"], r["scenario"], r["target"]), []).append(r)
    for (exp, scen, target), block in blocks.items():
        fig, axes = plt.subplots(1, 3, figsize=(BOOK_WIDTH, 1.3 + 0.24 * len(block)), sharey=True)
        y = np.arange(len(block))
        retrain = next((r for r in block if r["method"] == "retrain"), None)
        colors = [METHOD_COLOURS[r["method"]] for r in block]
        for ax, (key, title) in zip(axes, METRICS):
            means = [r[f"{key}_mean"] for r in block]
            sds = [r[f"{key}_sd"] for r in block]
            ax.barh(y, means, xerr=sds, color=colors, capsize=2)
            if retrain is not None:
                ax.axvline(retrain[f"{key}_mean"], color="black", ls="--", lw=1, label="Retrain")
            ax.set_title(title, fontsize=9)
            ax.set_xlim(0, 105)
            ax.tick_params(labelsize=7)
        axes[0].set_yticks(y)
        axes[0].set_yticklabels([r["label"] for r in block])
        axes[0].invert_yaxis()
        axes[0].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{exp}: {scen.replace('_', '-')}, {target} (mean ± sd over seeds)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{file_slug(exp)}-{file_slug(target)}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def plot_sweep(records: Sequence[Mapping], path: str) -> str:
    """Heatmaps of Acc(D_r) and Acc(D_f) over alpha (across) and lambda (up) of one sweep file,
    drawn by :func:`~lfssd_tutorial.plots.plot_sweep_heatmaps`; returns ``path``."""
    from ..plots import plot_sweep_heatmaps
    from ..sweep import SweepResult

    plt = _pyplot()
    r0 = records[0] if records else {}
    label = f"{r0.get('method', '')} ({r0.get('granularity', '')}), target {r0.get('target', '')}, seed {r0.get('seed', '')}"
    fig = plot_sweep_heatmaps(SweepResult.from_records(records, label=label))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
