"""An interactive explorer of alpha and lambda: two sliders and the dampened model's metrics.

Once ``Imp_D`` and ``Imp_Df`` are computed, :func:`alpha_lambda_explorer` shows a panel
whose sliders set alpha and lambda; on every change it dampens the original weights and
shows the metrics, the number of selected weights and the ratio ceiling. The grid
version of the same computation is :func:`lfssd_tutorial.sweep.sweep_alpha_lambda`, drawn
by :func:`lfssd_tutorial.plots.plot_sweep_heatmaps`.

ipywidgets is part of the ``book`` extra.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Mapping

import torch
from torch import nn

from .checks import check_hyperparameters, check_importance
from .dampening import select_and_dampen_
from .metrics import Evaluator

__all__ = ["AlphaLambdaExplorer", "alpha_lambda_explorer"]


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
        report = select_and_dampen_(
            self._work, self.full_importance, self.forget_importance, alpha=alpha, lambda_=lambda_, warn=False
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
        evaluate: ``model -> {metric name: value}``, e.g. from :func:`~lfssd_tutorial.metrics.accuracy_evaluator`.
        **kwargs: ``alpha``, ``lambda_`` (initial values), ``alpha_range``,
            ``lambda_range``, ``alpha_step``, ``lambda_step``, ``title``; see
            :class:`AlphaLambdaExplorer`.

    Returns:
        An :class:`AlphaLambdaExplorer`; display it (or its ``.widget``) in a notebook.
    """
    return AlphaLambdaExplorer(model, full_importance, forget_importance, evaluate, **kwargs)
