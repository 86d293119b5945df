"""Figures used by the book's chapters (matplotlib).

Every function draws on the ``ax`` it is given (or on a new figure) and returns the
axes, so chapters can combine them into panels. Nothing here computes a result: the
numbers come from the package's estimators, dampening and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

#: The widest figure the book shows at full size, in inches.
BOOK_WIDTH = 7.5

#: One colour per method, the same in every figure of the book that compares methods:
#: the reference models in grey (original) and black (retrained; olive for the authors'
#: head-only retrain), the training baselines in green, red, purple and brown, and the
#: dampening methods in blue (SSD), orange (LFSSD) and pink (SSD on the true Fisher).
#: Keyed by the package's method names.
METHOD_COLOURS = {
    "original": "tab:gray",
    "retrain": "black",
    "retrain_head": "tab:olive",
    "finetune": "tab:green",
    "bad_teacher": "tab:red",
    "amnesiac": "tab:purple",
    "unsir": "tab:brown",
    "ssd": "tab:blue",
    "lfssd": "tab:orange",
    "ssd_true_fisher": "tab:pink",
}

__all__ = [
    "BOOK_WIDTH",
    "METHOD_COLOURS",
    "plot_digits",
    "plot_entropy_histograms",
    "plot_ratio_histogram",
    "plot_selection_per_layer",
    "plot_sweep_heatmaps",
]


def _axes(ax, figsize=None):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy().ravel()
    return np.asarray(values, dtype=np.float64).ravel()


def plot_digits(dataset, indices: Sequence[int], *, titles: Sequence[str] | None = None, ncols: int = 10, axes=None):
    """Show images of a dataset yielding ``(image, label)`` as a grid of grey images.

    Args:
        dataset: e.g. ``load_digits().train``; images are ``C x H x W`` tensors (the first
            channel is shown).
        indices: which samples to show.
        titles: one title per image; defaults to the labels.
        ncols: images per row.
        axes: an array of at least ``len(indices)`` axes to draw on; a new figure by default.

    Returns:
        The array of axes.
    """
    import matplotlib.pyplot as plt

    indices = list(indices)
    if axes is None:
        nrows = max(1, -(-len(indices) // ncols))
        scale = min(1.0, BOOK_WIDTH / (1.1 * ncols))  # no wider than the page
        _, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols * scale, 1.25 * nrows * scale), squeeze=False,
                               layout="constrained")
    flat = np.asarray(axes).ravel()
    for ax in flat:
        ax.axis("off")
    for k, i in enumerate(indices):
        image, label = dataset[i]
        flat[k].imshow(torch.as_tensor(image)[0].numpy(), cmap="gray_r")
        flat[k].set_title(titles[k] if titles is not None else str(int(label)), fontsize=9)
    return axes


def plot_entropy_histograms(
    groups: Mapping[str, torch.Tensor | np.ndarray],
    *,
    bins: int | Sequence[float] = 30,
    ax=None,
    title: str | None = None,
    log_scale: bool = True,
):
    """Overlaid, normalised histograms of softmax entropies, one per named group.

    The entropy MIA separates members from non-members by this one number; the
    histograms show how far apart the groups are.

    Args:
        groups: ``{label: entropies}``, e.g. retain-train (members), test (non-members),
            forget-train.
        bins: number of bins or bin edges (shared by all groups).
        ax: axes to draw on; a new figure by default.
        title: axes title.
        log_scale: bin on a logarithmic entropy axis (entropies of confident predictions
            span several orders of magnitude).

    Returns:
        The axes.
    """
    ax = _axes(ax)
    arrays = {name: _numpy(v) for name, v in groups.items()}
    if log_scale:
        floor = 1e-8
        arrays = {name: np.maximum(a, floor) for name, a in arrays.items()}
        if isinstance(bins, int):
            lo = min(a.min() for a in arrays.values())
            hi = max(a.max() for a in arrays.values())
            bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), bins + 1)
        ax.set_xscale("log")
    for name, a in arrays.items():
        ax.hist(a, bins=bins, density=not log_scale, weights=np.full(len(a), 1 / len(a)) if log_scale else None,
                histtype="step", linewidth=1.6, label=f"{name} (n={len(a)})")
    ax.set_xlabel("softmax entropy (nats)")
    ax.set_ylabel("fraction of samples" if log_scale else "density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_ratio_histogram(
    ratios: torch.Tensor | np.ndarray,
    *,
    alphas: Sequence[float] = (),
    published_alpha: float | None = 10.0,
    bound: float | None = None,
    bound_label: str = "bound",
    bins: int = 80,
    ax=None,
    zoom_ax=None,
    zoom: tuple[float, float] | None = None,
    title: str | None = None,
    colour: str = "0.55",
):
    """Histogram of the importance ratios ``Imp_Df / Imp_D`` with the alpha thresholds.

    A weight is selected iff its ratio exceeds ``alpha``, so everything right of an
    alpha line is dampened; an alpha right of the largest ratio selects nothing.

    Two panels: the whole distribution on log-log axes, and a zoom on linear axes near the
    ceiling, where the largest ratio, the bound and the alphas close to them sit a few
    hundredths apart (7.30 and 7.33 are one line on the log panel, two in the zoom).

    Args:
        ratios: from :func:`lfssd_tutorial.importance_ratios`.
        alphas: alpha values to mark (dashed lines, with the number of weights they select).
        published_alpha: the published setting, marked in red; ``None`` to omit.
        bound: a theoretical upper bound of the ratios to mark (dotted), e.g. ``|D|/|D_f|``.
        bound_label: legend text for ``bound``.
        bins: number of bins of the log panel (the zoom has ``bins // 2`` linear bins).
        ax: axes for the log panel. With ``ax`` and ``zoom_ax`` both left out, a new
            figure ``BOOK_WIDTH`` wide holds the two panels side by side; with ``ax``
            given and ``zoom_ax`` left out, only the log panel is drawn.
        zoom_ax: axes for the linear zoom near the ceiling.
        zoom: the zoom's ratio range ``(low, high)``; by default from 0.9 times the
            smaller to 1.02 times the larger of the largest ratio and ``bound``.
        title: title of the log panel.
        colour: colour of the bars, e.g. the method's from :data:`METHOD_COLOURS` where
            figures compare methods. The lines keep one colour each in every ratio
            histogram: the largest ratio black, the bound dotted black, the published
            alpha red, and the marked alphas dashed in colours no method has.

    Returns:
        ``(ax, zoom_ax)``; ``zoom_ax`` is ``None`` when no zoom was drawn.

    Raises:
        ValueError: if no ratio is positive, or ``zoom`` is not an increasing pair.
    """
    r = _numpy(ratios)
    r = r[r > 0]
    if r.size == 0:
        raise ValueError("no positive ratio to plot: every Imp_Df is zero")
    if zoom is not None and not zoom[0] < zoom[1]:
        raise ValueError(f"zoom must be an increasing pair (low, high), got {zoom}")
    if ax is None and zoom_ax is None:
        import matplotlib.pyplot as plt

        _, (ax, zoom_ax) = plt.subplots(1, 2, figsize=(BOOK_WIDTH, 3.4), width_ratios=(3, 2), layout="constrained")
    ax = _axes(ax)
    largest = r.max()
    lines = [(largest, dict(color="black", linewidth=1.2), f"largest ratio = {largest:.2f}")]
    colours = ["tab:cyan", "goldenrod", "darkmagenta"]  # none of them a method's colour
    for k, a in enumerate(alphas):
        lines.append((a, dict(color=colours[k % len(colours)], linestyle="--"),
                      f"$\\alpha$ = {a:g}: {int((r > a).sum()):,} selected"))
    if published_alpha is not None:
        lines.append((published_alpha, dict(color="tab:red", linewidth=2),
                      f"published $\\alpha$ = {published_alpha:g}: {int((r > published_alpha).sum()):,} selected"))
    if bound:
        lines.append((bound, dict(color="black", linestyle=":", linewidth=1.5), f"{bound_label} = {bound:.2f}"))

    hi = max(x for x, _, _ in lines) * 1.3
    counts, _, _ = ax.hist(r, bins=np.logspace(np.log10(r.min()), np.log10(hi), bins + 1), color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # The bars fill the lower 55% of the log axis, and the legend the space above them.
    bottom = 0.7
    ax.set_ylim(bottom, bottom * (counts.max() / bottom) ** (1 / 0.55))
    for x, style, label in lines:
        ax.axvline(x, label=label, **style)
    ax.set_xlabel("ratio $I_{D_f,i} / I_{D,i}$ (log scale)")
    ax.set_ylabel("number of weights")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    if zoom_ax is None:
        return ax, None
    ceiling = [largest, *([bound] if bound else [])]
    low, high = zoom if zoom is not None else (0.9 * min(ceiling), 1.02 * max(ceiling))
    zoom_ax.hist(r[(r >= low) & (r <= high)], bins=np.linspace(low, high, bins // 2 + 1), color=colour)
    for x, style, label in lines:
        if low <= x <= high:
            zoom_ax.axvline(x, **style)
    zoom_ax.set_xlim(low, high)
    zoom_ax.set_xlabel("ratio (linear scale)")
    zoom_ax.set_ylabel("number of weights")
    zoom_ax.set_title("near the ceiling")
    return ax, zoom_ax


def plot_selection_per_layer(
    reports, *, ax=None, title: str | None = None, fraction: bool = True, colours: Sequence | None = None
):
    """Bar chart of how many weights each parameter tensor had selected.

    Args:
        reports: a :class:`~lfssd_tutorial.DampeningReport`, or ``{label: report}`` to
            compare several (grouped bars).
        ax: axes to draw on; a new figure by default.
        title: axes title.
        fraction: plot the percentage of each tensor's elements (default) rather than
            the count.
        colours: one matplotlib colour per report, e.g. shades of the method's colour
            from :data:`METHOD_COLOURS`; matplotlib's colour cycle by default.

    Returns:
        The axes.
    """
    from .dampening import DampeningReport

    if isinstance(reports, DampeningReport):
        reports = {f"alpha = {reports.alpha:g}": reports}
    reports = dict(reports)
    names = list(next(iter(reports.values())).numel)
    if colours is not None and len(colours) != len(reports):
        raise ValueError(f"give one colour per report: {len(colours)} colours for {len(reports)} reports")
    ax = _axes(ax, figsize=(7.5, 3.6))
    width = 0.8 / len(reports)
    x = np.arange(len(names))
    for k, (label, report) in enumerate(reports.items()):
        values = [
            100.0 * report.selected[n] / max(report.numel[n], 1) if fraction else report.selected[n] for n in names
        ]
        colour = colours[k] if colours is not None else None
        ax.bar(x + (k - (len(reports) - 1) / 2) * width, values, width, label=label, color=colour)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n}\n({next(iter(reports.values())).numel[n]:,})" for n in names], rotation=60,
                       ha="right", fontsize=7)
    ax.set_ylabel("% of the tensor's weights selected" if fraction else "weights selected")
    if title:
        ax.set_title(title)
    if len(reports) > 1:
        ax.legend(fontsize=8)
    return ax


def _ratio_position(alphas: np.ndarray, ratio: float) -> float | None:
    """Where ``ratio`` falls on a categorical axis of increasing ``alphas`` (log-interpolated)."""
    if not math.isfinite(ratio) or ratio <= 0 or len(alphas) < 2 or np.any(np.diff(alphas) <= 0):
        return None
    if ratio < alphas[0] or ratio > alphas[-1]:
        return None
    return float(np.interp(math.log(ratio), np.log(alphas), np.arange(len(alphas))))


def plot_sweep_heatmaps(
    sweeps,
    *,
    metrics: Sequence[str] | None = None,
    vmin: float = 0.0,
    vmax: float = 100.0,
    cmap: str = "viridis",
    annotate: bool = True,
    fmt: str = "{:.0f}",
):
    """Heatmaps of sweeps: one row per sweep, one column per metric; alpha across, lambda up.

    ``sweeps`` is a :class:`~lfssd_tutorial.sweep.SweepResult` or a sequence of them.

    The largest importance ratio is given in each title and drawn as a dashed red line at
    its (log-interpolated) position on the alpha axis when it falls inside the grid: every
    column to its right selects nothing and shows the original model. Returns the
    matplotlib figure (constrained layout, one shared colour bar).
    """
    import matplotlib.pyplot as plt

    from .sweep import SweepResult

    sweeps = [sweeps] if isinstance(sweeps, SweepResult) else list(sweeps)
    if not sweeps:
        raise ValueError("give at least one SweepResult")
    metrics = list(metrics) if metrics is not None else list(sweeps[0].metrics)
    n_rows, n_cols = len(sweeps), len(metrics)
    # At most the book's page width: wider figures are shrunk on the page, fonts with them.
    width = min(max(3.0, 0.42 * len(sweeps[0].alphas) + 1.2), (BOOK_WIDTH - 1.0) / n_cols)
    height = max(1.8, 0.36 * len(sweeps[0].lambdas) + 1.2)
    # An explicit constrained layout leaves room for the shared colour bar (tight_layout cannot).
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols + 1.0, height * n_rows), squeeze=False,
                             layout="constrained")
    image = None
    for r, sweep in enumerate(sweeps):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            grid = sweep.metrics[metric]
            image = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", aspect="auto")
            ax.set_xticks(range(len(sweep.alphas)))
            ax.set_xticklabels([f"{a:g}" for a in sweep.alphas])
            ax.set_yticks(range(len(sweep.lambdas)))
            ax.set_yticklabels([f"{lam:g}" for lam in sweep.lambdas])
            ax.set_xlabel("alpha")
            ax.set_ylabel("lambda")
            ax.grid(False)
            title = f"{sweep.label}: {metric}" if sweep.label else metric
            if math.isfinite(sweep.max_ratio):
                title += f" (max ratio {sweep.max_ratio:.2f})"
            ax.set_title(title, fontsize=9)
            if annotate:
                for i in range(grid.shape[0]):
                    for j in range(grid.shape[1]):
                        value = grid[i, j]
                        shade = (value - vmin) / max(vmax - vmin, 1e-12)
                        ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7,
                                color="black" if shade > 0.6 else "white")
            pos = _ratio_position(sweep.alphas, sweep.max_ratio)
            if pos is not None:
                ax.axvline(pos, color="red", linestyle="--", linewidth=1.5)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="%")
    return fig
