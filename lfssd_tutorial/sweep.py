"""The alpha x lambda sweep: every grid point dampened and evaluated from cached importances.

Selection and dampening are cheap (one element-wise pass over the weights), so once
``Imp_D`` and ``Imp_Df`` are computed, any (alpha, lambda) pair can be tried in the time
it takes to evaluate the model:

* :func:`dampen_copy` selects and dampens a copy of a model at one point;
* :func:`sweep_alpha_lambda` does so at every point of a grid and collects the metrics in
  a :class:`SweepResult` (drawn by :func:`lfssd_tutorial.plots.plot_sweep_heatmaps`).

The same sweep serves the chapters, the interactive explorer and the command line's
``sweep`` (which records each point as it finishes, through ``on_point``, and resumes
with ``skip``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .checks import check_hyperparameters, check_importance
from .dampening import DampeningReport, max_importance_ratio, select_and_dampen_
from .metrics import Evaluator
from .utils import progress as progress_bar

__all__ = ["SweepResult", "dampen_copy", "sweep_alpha_lambda"]


def dampen_copy(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    lambda_: float,
) -> tuple[nn.Module, DampeningReport]:
    """Select and dampen a deep copy of ``model`` (the original is untouched), silently.

    No :class:`~lfssd_tutorial.NothingSelectedWarning` is raised: in a sweep, an alpha above
    the ratio ceiling is an expected grid point, and the report says so
    (``report.nothing_selected``).
    """
    edited = copy.deepcopy(model)
    report = select_and_dampen_(edited, full_importance, forget_importance, alpha=alpha, lambda_=lambda_, warn=False)
    return edited, report


@dataclass
class SweepResult:
    """Metrics over an alpha x lambda grid.

    Attributes:
        alphas, lambdas: the grid axes, in the order given.
        metrics: ``{metric name: array of shape (len(lambdas), len(alphas))}``; row ``i``,
            column ``j`` is the dampened model at ``lambdas[i]``, ``alphas[j]`` (NaN for a
            point that was skipped).
        selected: number of selected weights, same shape (-1 for a skipped point).
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

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping],
        *,
        metrics: Mapping[str, str] | Sequence[tuple[str, str]] = (("Acc(D_r)", "acc_retain"), ("Acc(D_f)", "acc_forget")),
        label: str = "",
    ) -> SweepResult:
        """The grid of one point-per-record sweep (the command line's ``sweep-*.jsonl`` files).

        Every record holds ``alpha``, ``lambda``, ``selected``, ``max_ratio`` and the fields named
        by ``metrics`` (``{metric name: record field}``); points missing from the records are
        NaN (``selected`` -1), as for a skipped point.
        """
        if not records:
            raise ValueError("no sweep records: nothing to put on a grid")
        metrics = dict(metrics)
        alphas = sorted({float(r["alpha"]) for r in records})
        lambdas = sorted({float(r["lambda"]) for r in records})
        grids = {name: np.full((len(lambdas), len(alphas)), np.nan) for name in metrics}
        selected = np.full((len(lambdas), len(alphas)), -1, dtype=np.int64)
        for r in records:
            i, j = lambdas.index(float(r["lambda"])), alphas.index(float(r["alpha"]))
            for name, key in metrics.items():
                grids[name][i, j] = r[key]
            selected[i, j] = r["selected"]
        ratio = records[0].get("max_ratio")
        return cls(alphas=np.array(alphas), lambdas=np.array(lambdas), metrics=grids, selected=selected,
                   max_ratio=float("nan") if ratio is None else float(ratio), label=label)

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


#: Called after each evaluated grid point: ``on_point(alpha, lambda_, metrics, report)``.
PointCallback = Callable[[float, float, Mapping[str, float], DampeningReport], None]


def sweep_alpha_lambda(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    evaluate: Evaluator,
    *,
    alphas: Sequence[float],
    lambdas: Sequence[float] = (1.0,),
    label: str = "",
    progress: bool = False,
    skip: Collection[tuple[float, float]] = (),
    on_point: PointCallback | None = None,
) -> SweepResult:
    """Evaluate the dampened model at every (alpha, lambda) of a grid, from cached importances.

    Each grid point dampens a fresh copy of ``model`` (which is never modified) with
    :func:`dampen_copy`, so the cost is one dampening pass and one ``evaluate`` call per
    point; no importance is recomputed. The points are visited alpha by alpha, every
    lambda for each alpha.

    Args:
        model: the trained (original) network.
        full_importance, forget_importance: ``Imp_D`` and ``Imp_Df`` for ``model``.
        evaluate: ``model -> {metric name: value}``, e.g. from
            :func:`~lfssd_tutorial.metrics.accuracy_evaluator`; it is also called once on
            ``model`` itself (:attr:`SweepResult.original`), and its keys name the metrics.
        alphas: selection weightings (each ``> 0``).
        lambdas: dampening constants (each ``>= 0``).
        label: a name stored in the result for plots.
        progress: show a progress bar over the grid points.
        skip: ``(alpha, lambda)`` pairs not to evaluate (e.g. already recorded); their
            metrics stay NaN and their ``selected`` -1.
        on_point: called with ``(alpha, lambda_, metrics, report)`` as soon as each point
            is evaluated (e.g. to append it to a results file).

    Returns:
        A :class:`SweepResult` whose arrays have shape ``(len(lambdas), len(alphas))``.
    """
    alpha_grid, lambda_grid = _as_grid(alphas, "alphas"), _as_grid(lambdas, "lambdas")
    for a in alpha_grid:
        for lam in lambda_grid:
            check_hyperparameters(float(a), float(lam))
    check_importance(full_importance, model, name="full_importance (Imp_D)")
    check_importance(forget_importance, model, name="forget_importance (Imp_Df)")
    skip = {(float(a), float(lam)) for a, lam in skip}
    original = {k: float(v) for k, v in evaluate(model).items()}
    shape = (len(lambda_grid), len(alpha_grid))
    metrics = {k: np.full(shape, np.nan) for k in original}
    selected = np.full(shape, -1, dtype=np.int64)
    max_ratio = math.nan
    points = [(i, j) for j in range(len(alpha_grid)) for i in range(len(lambda_grid))
              if (float(alpha_grid[j]), float(lambda_grid[i])) not in skip]
    for i, j in progress_bar(points, progress, label or "sweep"):
        a, lam = float(alpha_grid[j]), float(lambda_grid[i])
        edited, report = dampen_copy(model, full_importance, forget_importance, alpha=a, lambda_=lam)
        max_ratio = report.max_ratio
        selected[i, j] = report.total_selected
        values = evaluate(edited)
        for k in metrics:
            metrics[k][i, j] = float(values[k])
        if on_point is not None:
            on_point(a, lam, values, report)
    if not points:
        max_ratio = max_importance_ratio(full_importance, forget_importance)
    return SweepResult(alpha_grid, lambda_grid, metrics, selected, float(max_ratio), original, label)
