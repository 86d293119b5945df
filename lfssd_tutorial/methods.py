"""Every unlearning method behind one signature, and the registry that names them.

A method is ``method(model, loaders, options) -> MethodResult``: ``model`` is the trained
network (never modified), ``loaders`` a :class:`~lfssd_tutorial.request.SplitLoaders`,
``options`` a :class:`~lfssd_tutorial.options.MethodOptions`. :data:`METHODS` maps each
name to its function: the baselines of :mod:`lfssd_tutorial.baselines`, and :func:`ssd` and
:func:`lfssd` (through :func:`lfssd_tutorial.unlearn`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import baselines
from .options import MethodOptions, MethodResult
from .request import SplitLoaders, retain_sample, sample_loader
from .unlearn import unlearn

__all__ = ["Method", "METHODS", "ssd", "lfssd", "ssd_true_fisher", "run_method"]

#: The signature every unlearning method shares.
Method = Callable[[nn.Module, SplitLoaders, MethodOptions], MethodResult]


def _dampen(method: str, model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    if options.alpha is None:
        raise ValueError(f"{method} needs options.alpha (the selection weighting), got None")
    auto = options.alpha == "auto"
    # unlearn refuses the calibration's options with a fixed alpha
    lambda_ = options.lambda_ if options.calibration_lambdas is None else options.calibration_lambdas
    forget_sample = None
    if options.calibration_forget_sample is not None:
        forget_sample = sample_loader(loaders.forget, options.calibration_forget_sample, seed=options.seed)
    model, report = unlearn(
        model,
        loaders.forget,
        method=method,
        full_loader=None if options.full_importance is not None else loaders.full,
        full_importance=options.full_importance,
        alpha=options.alpha,
        lambda_=lambda_,
        granularity=options.granularity,
        device=options.device,
        progress=options.progress,
        autocast_dtype=options.autocast_dtype,
        channels_last=options.channels_last,
        retain_loader=retain_sample(loaders, options.calibration_sample, seed=options.seed) if auto else None,
        calibration_forget_loader=forget_sample,
        growth=options.calibration_growth,
        label_samples=options.label_samples,
        seed=options.seed,
        warn=False,
        forward=options.forward,
    )
    return MethodResult(model, report)


def ssd(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """SSD: Fisher importances (labelled ``D_f``), then selection and dampening.

    ``Imp_D`` is computed on ``loaders.full`` unless ``options.full_importance`` is given,
    ``Imp_Df`` on ``loaders.forget``; ``options.alpha`` is required. ``"auto"`` calibrates it
    on ``D_f`` (or ``options.calibration_forget_sample`` of its inputs) and
    :func:`~lfssd_tutorial.request.retain_sample`'s retained inputs, choosing lambda too among
    ``options.calibration_lambdas`` when given; the choice is ``report.calibration``. No
    warning is raised when nothing is selected: the result's ``report.nothing_selected``
    records it.
    """
    return _dampen("ssd", model, loaders, options)


def lfssd(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """LFSSD: label-free (squared output norm) importances, then selection and dampening.

    Otherwise as :func:`ssd`.
    """
    return _dampen("lfssd", model, loaders, options)


def ssd_true_fisher(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """SSD on the true Fisher: labels drawn from the model instead of the data's, so no labels
    are needed. ``options.label_samples`` ``None`` computes the expectation over classes
    exactly; ``k`` draws ``k`` labels per input (seeded with ``options.seed``). Otherwise as :func:`ssd`.
    """
    return _dampen("ssd_true_fisher", model, loaders, options)


#: Method name -> function, for every method the experiments can run.
METHODS: dict[str, Method] = {
    "original": baselines.original,
    "retrain": baselines.retrain,
    "retrain_head": baselines.retrain_head,
    "finetune": baselines.finetune,
    "bad_teacher": baselines.bad_teacher,
    "amnesiac": baselines.amnesiac,
    "unsir": baselines.unsir,
    "ssd": ssd,
    "lfssd": lfssd,
    "ssd_true_fisher": ssd_true_fisher,
}


def run_method(name: str, model: nn.Module, loaders: SplitLoaders, options: MethodOptions | None = None) -> MethodResult:
    """Run the method called ``name`` (a key of :data:`METHODS`) on ``model``.

    Raises:
        ValueError: ``name`` is not a known method (the message lists them).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(map(repr, METHODS))}")
    return METHODS[name](model, loaders, options if options is not None else MethodOptions())
