"""Choosing alpha and lambda: a grid sweep, its heatmap, and an interactive explorer.

Selection and dampening are cheap (one element-wise pass over the weights), so once
``Imp_D`` and ``Imp_Df`` are computed, any (alpha, lambda) pair can be tried in the time
it takes to evaluate the model. This module builds on that:

* :func:`accuracy_evaluator` turns named loaders into a function ``model -> metrics``;
* :func:`sweep_alpha_lambda` evaluates every point of an alpha x lambda grid from cached
  importances (a :class:`SweepResult`);
* :func:`plot_sweep_heatmaps` draws sweeps as heatmaps, with the largest importance
  ratio (the ceiling above which alpha selects nothing) marked;
* :func:`alpha_lambda_explorer` is an ipywidgets panel: two sliders, and the metrics,
  the number of selected weights and the ratio ceiling recomputed on every change.

ipywidgets is only needed by :func:`alpha_lambda_explorer` (it is part of the ``book``
extra); everything else runs without it.
"""

from __future__ import annotations

import copy
import html
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .dampening import DampeningReport, NothingSelectedWarning, check_hyperparameters, select_and_dampen_
from .importance import check_importance
from .training import evaluate_accuracy

__all__ = [
    "Evaluator",
    "SweepResult",
    "accuracy_evaluator",
    "dampen_copy",
    "sweep_alpha_lambda",
    "plot_sweep_heatmaps",
    "AlphaLambdaExplorer",
    "alpha_lambda_explorer",
]

#: A function from a model to named metrics, e.g. ``{"Acc(D_r)": 99.5, "Acc(D_f)": 0.0}``.
Evaluator = Callable[[nn.Module], Mapping[str, float]]


def accuracy_evaluator(loaders: Mapping[str, Iterable], *, device: str | torch.device | None = None) -> Evaluator:
    """A function ``model -> {name: accuracy in percent}`` over the given labelled loaders.

    Example::

        evaluate = accuracy_evaluator({"Acc(D_r)": test_retain_loader, "Acc(D_f)": test_forget_loader})
        evaluate(model)   # {"Acc(D_r)": 99.5, "Acc(D_f)": 0.0}
    """
    if not loaders:
        raise ValueError("give at least one loader to evaluate on")
    loaders = dict(loaders)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {name: evaluate_accuracy(model, loader, device=device) for name, loader in loaders.items()}

    return evaluate


def dampen_copy(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    lambda_: float,
) -> tuple[nn.Module, DampeningReport]:
    """Select and dampen a deep copy of ``model`` (the original is untouched), silently.

    :class:`~lfssd_tutorial.NothingSelectedWarning` is suppressed: in a sweep, an alpha
    above the ratio ceiling is an expected grid point, and the report says so
    (``report.nothing_selected``).
    """
    edited = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSelectedWarning)
        report = select_and_dampen_(edited, full_importance, forget_importance, alpha=alpha, lambda_=lambda_)
    return edited, report


@dataclass
class SweepResult:
    """Metrics over an alpha x lambda grid.

    Attributes:
        alphas, lambdas: the grid axes, in the order given.
        metrics: ``{metric name: array of shape (len(lambdas), len(alphas))}``; row ``i``,
            column ``j`` is the dampened model at ``lambdas[i]``, ``alphas[j]``.
        selected: number of selected weights, same shape.
        max_ratio: the largest ``Imp_Df / Imp_D``; every alpha at or above it selects
            nothing (the same for every grid point).
        original: the metrics of the undampened model.
        label: a name for plots, e.g. ``"LFSSD"``.
    """

    alphas: np.ndarray
    lambdas: np.ndarray
    metrics: dict[str, np.ndarray]
    selected: np.ndarray
    max_ratio: float
    original: dict[str, float] = field(default_factory=dict)
    label: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """``(len(lambdas), len(alphas))``."""
        return (len(self.lambdas), len(self.alphas))

    def rows(self) -> list[dict[str, float]]:
        """One dict per grid point: alpha, lambda, selected and every metric."""
        out = []
        for i, lam in enumerate(self.lambdas):
            for j, a in enumerate(self.alphas):
                row = {"alpha": float(a), "lambda": float(lam), "selected": int(self.selected[i, j])}
                row.update({k: float(v[i, j]) for k, v in self.metrics.items()})
                out.append(row)
        return out


def _as_grid(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers")
    return arr


def sweep_alpha_lambda(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    evaluate: Evaluator,
    *,
    alphas: Sequence[float],
    lambdas: Sequence[float] = (1.0,),
    label: str = "",
) -> SweepResult:
    """Evaluate the dampened model at every (alpha, lambda) of a grid, from cached importances.

    Each grid point dampens a fresh copy of ``model`` (which is never modified), so the
    cost is one dampening pass and one ``evaluate`` call per point; no importance is
    recomputed.

    Args:
        model: the trained (original) network.
        full_importance, forget_importance: ``Imp_D`` and ``Imp_Df`` for ``model``.
        evaluate: ``model -> {metric name: value}``, e.g. from :func:`accuracy_evaluator`.
        alphas: selection weightings (each ``> 0``).
        lambdas: dampening constants (each ``>= 0``).
        label: a name stored in the result for plots.

    Returns:
        A :class:`SweepResult` whose arrays have shape ``(len(lambdas), len(alphas))``.
    """
    alpha_grid, lambda_grid = _as_grid(alphas, "alphas"), _as_grid(lambdas, "lambdas")
    for a in alpha_grid:
        for lam in lambda_grid:
            check_hyperparameters(float(a), float(lam))
    check_importance(full_importance, model, name="full_importance (Imp_D)")
    check_importance(forget_importance, model, name="forget_importance (Imp_Df)")
    original = {k: float(v) for k, v in evaluate(model).items()}
    shape = (len(lambda_grid), len(alpha_grid))
    metrics = {k: np.full(shape, np.nan) for k in original}
    selected = np.zeros(shape, dtype=np.int64)
    max_ratio = math.nan
    for i, lam in enumerate(lambda_grid):
        for j, a in enumerate(alpha_grid):
            edited, report = dampen_copy(model, full_importance, forget_importance, alpha=float(a), lambda_=float(lam))
            max_ratio = report.max_ratio
            selected[i, j] = report.total_selected
            values = evaluate(edited)
            for k in metrics:
                metrics[k][i, j] = float(values[k])
    return SweepResult(alpha_grid, lambda_grid, metrics, selected, float(max_ratio), original, label)


def _ratio_position(alphas: np.ndarray, ratio: float) -> float | None:
    """Where ``ratio`` falls on a categorical axis of increasing ``alphas`` (log-interpolated)."""
    if not math.isfinite(ratio) or ratio <= 0 or len(alphas) < 2 or np.any(np.diff(alphas) <= 0):
        return None
    if ratio < alphas[0] or ratio > alphas[-1]:
        return None
    return float(np.interp(math.log(ratio), np.log(alphas), np.arange(len(alphas))))


def plot_sweep_heatmaps(
    sweeps: SweepResult | Sequence[SweepResult],
    *,
    metrics: Sequence[str] | None = None,
    vmin: float = 0.0,
    vmax: float = 100.0,
    cmap: str = "viridis",
    annotate: bool = True,
    fmt: str = "{:.0f}",
):
    """Heatmaps of sweeps: one row per sweep, one column per metric; alpha across, lambda up.

    The largest importance ratio is given in each title and drawn as a dashed red line at
    its (log-interpolated) position on the alpha axis when it falls inside the grid: every
    column to its right selects nothing and shows the original model. Returns the
    matplotlib figure (constrained layout, one shared colour bar).
    """
    import matplotlib.pyplot as plt

    sweeps = [sweeps] if isinstance(sweeps, SweepResult) else list(sweeps)
    if not sweeps:
        raise ValueError("give at least one SweepResult")
    metrics = list(metrics) if metrics is not None else list(sweeps[0].metrics)
    n_rows, n_cols = len(sweeps), len(metrics)
    width = max(3.0, 0.42 * len(sweeps[0].alphas) + 1.2)
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


class AlphaLambdaExplorer:
    """Sliders for alpha and lambda and the dampened model's metrics, updated live.

    Build it with :func:`alpha_lambda_explorer`. The importances are computed once by
    the caller; each slider change restores the original weights, selects and dampens,
    and calls ``evaluate``. Displaying the object in Jupyter shows :attr:`widget`.

    Attributes:
        widget: the ``ipywidgets.VBox`` to display.
        alpha_slider, lambda_slider: the two sliders (``FloatSlider``).
        summary: an ``ipywidgets.HTML`` holding the table of results.
        result: the latest result, ``{"alpha", "lambda", "selected", "numel",
            "nothing_selected", "max_ratio", <metric names>...}``.
        original: the undampened model's metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        full_importance: Mapping[str, torch.Tensor],
        forget_importance: Mapping[str, torch.Tensor],
        evaluate: Evaluator,
        *,
        alpha: float = 5.0,
        lambda_: float = 1.0,
        alpha_range: tuple[float, float] = (0.5, 12.0),
        lambda_range: tuple[float, float] = (0.0, 3.0),
        alpha_step: float = 0.1,
        lambda_step: float = 0.05,
        title: str = "",
    ):
        import ipywidgets as widgets

        check_hyperparameters(alpha, lambda_)
        check_importance(full_importance, model, name="full_importance (Imp_D)")
        check_importance(forget_importance, model, name="forget_importance (Imp_Df)")
        if not alpha_range[0] <= alpha <= alpha_range[1]:
            raise ValueError(f"alpha={alpha} is outside alpha_range={alpha_range}")
        if not lambda_range[0] <= lambda_ <= lambda_range[1]:
            raise ValueError(f"lambda_={lambda_} is outside lambda_range={lambda_range}")
        if alpha_range[0] <= 0:
            raise ValueError(f"alpha_range must be above 0, got {alpha_range}")
        self.full_importance = full_importance
        self.forget_importance = forget_importance
        self.evaluate = evaluate
        self.title = title
        # One working copy, reset to the original weights before every edit.
        self._work = copy.deepcopy(model)
        self._original_state = copy.deepcopy(model.state_dict())
        self.original = {k: float(v) for k, v in evaluate(model).items()}
        self.result: dict[str, float] = {}

        style = {"description_width": "60px"}
        layout = widgets.Layout(width="460px")
        self.alpha_slider = widgets.FloatSlider(
            value=alpha, min=alpha_range[0], max=alpha_range[1], step=alpha_step, description="alpha",
            continuous_update=False, readout_format=".2f", style=style, layout=layout,
        )
        self.lambda_slider = widgets.FloatSlider(
            value=lambda_, min=lambda_range[0], max=lambda_range[1], step=lambda_step, description="lambda",
            continuous_update=False, readout_format=".2f", style=style, layout=layout,
        )
        self.summary = widgets.HTML()
        children = [self.alpha_slider, self.lambda_slider, self.summary]
        if title:
            children.insert(0, widgets.HTML(f"<b>{html.escape(title)}</b>"))
        self.widget = widgets.VBox(children)
        self.alpha_slider.observe(self._on_change, names="value")
        self.lambda_slider.observe(self._on_change, names="value")
        self.refresh()

    def compute(self, alpha: float, lambda_: float) -> dict[str, float]:
        """Dampen the original weights at ``(alpha, lambda_)`` and evaluate; no widget involved."""
        check_hyperparameters(alpha, lambda_)
        with torch.no_grad():
            self._work.load_state_dict(self._original_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingSelectedWarning)
            report = select_and_dampen_(
                self._work, self.full_importance, self.forget_importance, alpha=alpha, lambda_=lambda_
            )
        values = self.evaluate(self._work)
        return {
            "alpha": float(alpha),
            "lambda": float(lambda_),
            "selected": report.total_selected,
            "numel": report.total_numel,
            "nothing_selected": report.nothing_selected,
            "max_ratio": report.max_ratio,
            **{k: float(v) for k, v in values.items()},
        }

    def refresh(self, *_: object) -> dict[str, float]:
        """Recompute at the sliders' values and update :attr:`summary`."""
        self.result = self.compute(float(self.alpha_slider.value), float(self.lambda_slider.value))
        self.summary.value = self._render(self.result)
        return self.result

    def _on_change(self, change: Mapping) -> None:
        self.refresh()

    def _render(self, result: Mapping[str, float]) -> str:
        cells = "".join(
            f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{self.original[k]:.1f}</td>"
            f"<td style='text-align:right'><b>{result[k]:.1f}</b></td></tr>"
            for k in self.original
        )
        note = (
            f"alpha is at or above the largest ratio {result['max_ratio']:.2f}: nothing selected, model unchanged"
            if result["nothing_selected"]
            else f"selected {int(result['selected']):,} of {int(result['numel']):,} weights "
            f"({100 * result['selected'] / max(result['numel'], 1):.2f}%); largest ratio {result['max_ratio']:.2f}"
        )
        return (
            "<table><tr><th style='text-align:left'>metric</th><th>original</th><th>dampened</th></tr>"
            f"{cells}</table><p>{html.escape(note)}</p>"
        )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def alpha_lambda_explorer(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    evaluate: Evaluator,
    **kwargs,
) -> AlphaLambdaExplorer:
    """An interactive alpha/lambda explorer from cached importances (needs ipywidgets).

    Args:
        model: the trained (original) network; it is never modified.
        full_importance, forget_importance: ``Imp_D`` and ``Imp_Df`` for ``model``.
        evaluate: ``model -> {metric name: value}``, e.g. from :func:`accuracy_evaluator`.
        **kwargs: ``alpha``, ``lambda_`` (initial values), ``alpha_range``,
            ``lambda_range``, ``alpha_step``, ``lambda_step``, ``title``; see
            :class:`AlphaLambdaExplorer`.

    Returns:
        An :class:`AlphaLambdaExplorer`; display it (or its ``.widget``) in a notebook.
    """
    return AlphaLambdaExplorer(model, full_importance, forget_importance, evaluate, **kwargs)
