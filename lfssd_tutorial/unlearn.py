"""The unlearning entry points: :func:`unlearn` and the starting-kit adapter :func:`unlearning`."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .batches import Forward
from .calibrate import calibrate_alpha
from .checks import check_choice, check_hyperparameters, check_importance, check_importance_kind
from .dampening import DampeningReport, select_and_dampen_
from .importance import GRANULARITIES, compute_importance

__all__ = ["DAMPENING_METHODS", "objective_for", "unlearn", "unlearning"]

#: Dampening method -> importance objective. ``"ssd_true_fisher"`` is SSD's selection and
#: dampening on the true Fisher (labels drawn from the model), so it needs no labels.
DAMPENING_METHODS = {"lfssd": "l2", "ssd": "fisher", "ssd_true_fisher": "true_fisher"}


def objective_for(method: str) -> str:
    """The importance objective of an unlearning method: ``"lfssd" -> "l2"``, ``"ssd" -> "fisher"``,
    ``"ssd_true_fisher" -> "true_fisher"``."""
    check_choice("method", method, DAMPENING_METHODS)
    return DAMPENING_METHODS[method]


def unlearn(
    model: nn.Module,
    forget_loader: Iterable,
    *,
    method: str = "lfssd",
    full_loader: Iterable | None = None,
    full_importance: Mapping[str, torch.Tensor] | None = None,
    alpha: float | str = 10.0,
    lambda_: float | Sequence[float] = 1.0,
    retain_loader: Iterable | None = None,
    calibration_forget_loader: Iterable | None = None,
    growth: float = 2.0,
    granularity: str = "batch",
    inplace: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    label_samples: int | None = None,
    seed: int = 0,
    warn: bool = True,
    forward: Forward | None = None,
) -> tuple[nn.Module, DampeningReport]:
    """Forget the data in ``forget_loader`` with LFSSD (default) or SSD.

    Args:
        model: the trained network.
        forget_loader: batches of the forget set ``D_f``. For ``"lfssd"`` bare input
            tensors suffice; ``"ssd"`` needs ``(inputs, labels)``.
        method: ``"lfssd"`` (label-free l2 sensitivity), ``"ssd"`` (empirical Fisher
            diagonal, needs labels) or ``"ssd_true_fisher"`` (true Fisher diagonal, labels
            drawn from the model: label-free).
        full_loader: batches of the full training set ``D`` (which contains ``D_f``),
            used to compute ``Imp_D``. Give this *or* ``full_importance``.
        full_importance: a precomputed ``Imp_D`` (same method and granularity), e.g. from
            :func:`~lfssd_tutorial.compute_importance` or
            :func:`~lfssd_tutorial.load_importance`; compute it once and reuse it for
            every forget request. One that records its objective and granularity (an
            :class:`~lfssd_tutorial.Importance`) is refused unless they are the method's
            objective and ``granularity``; a plain dict is taken on trust.
        alpha: selection weighting (``> 0``), or ``"auto"`` to choose it per request
            without labels with :func:`~lfssd_tutorial.calibrate_alpha` (needs
            ``retain_loader``; the choice is ``report.calibration``). 10 is the authors'
            published ResNet18 setting; it can exceed the largest importance ratio and
            select nothing, in which case the report says so and a warning is raised.
        lambda_: dampening constant (``>= 0``). With ``alpha="auto"`` it may be a sequence
            of candidate constants: the calibration then chooses ``lambda_`` too, and the
            dampening uses the chosen one (``report.lambda_``).
        retain_loader: with ``alpha="auto"``, a small sample of retained inputs (labels,
            if any, are ignored).
        calibration_forget_loader: with ``alpha="auto"``, the ``D_f`` inputs to calibrate
            on, e.g. a sample of a large ``D_f`` (:func:`~lfssd_tutorial.request.sample_loader`);
            by default ``forget_loader``. The importances always use all of ``forget_loader``.
        growth: with ``alpha="auto"``, the spacing of the candidate alphas in number of
            selected weights (:func:`~lfssd_tutorial.calibrate_alpha`).
        granularity: ``"batch"`` (the authors' estimator) or ``"sample"``.
        inplace: edit ``model`` itself; by default a deep copy is edited and returned.
        device: where to compute importances; defaults to the model's device.
        progress: show progress bars.
        autocast_dtype, channels_last: passed to
            :func:`~lfssd_tutorial.compute_importance` (default: full float32).
        label_samples, seed: ``"ssd_true_fisher"`` only: ``None`` computes the true Fisher's
            expectation over classes exactly; ``k`` draws ``k`` labels per input from the
            model, seeded with ``seed`` (see :func:`~lfssd_tutorial.compute_importance`).
        warn: emit :class:`~lfssd_tutorial.NothingSelectedWarning` when nothing is selected
            (and, with ``alpha="auto"``, :class:`~lfssd_tutorial.CalibrationWarning` when the
            calibration finds no good alpha).
        forward: how to run the model on batches of another kind,
            ``forward(model, batch) -> (logits, labels or None)``, for every importance pass
            and the calibration (see :func:`~lfssd_tutorial.compute_importance`).

    Returns:
        ``(unlearned model, DampeningReport)``.

    Raises:
        ValueError: an unknown method or granularity, bad hyperparameters, both or neither
            of ``full_loader`` and ``full_importance``, or a ``full_importance`` that does
            not fit the model or records another objective or granularity.
    """
    objective = objective_for(method)
    check_choice("granularity", granularity, GRANULARITIES)
    auto = isinstance(alpha, str)
    if auto:
        check_choice("alpha", alpha, ["auto"])
        if retain_loader is None:
            raise ValueError('alpha="auto" needs retain_loader: a small sample of retained inputs to calibrate on')
        if isinstance(lambda_, (int, float)):
            check_hyperparameters(1.0, lambda_)
    else:
        if isinstance(lambda_, (list, tuple)):
            raise ValueError('several lambda_ values are only used with alpha="auto", which chooses among them')
        check_hyperparameters(alpha, lambda_)
        if retain_loader is not None or calibration_forget_loader is not None or growth != 2.0:
            raise ValueError('retain_loader, calibration_forget_loader and growth are only used with alpha="auto"')
    if (full_loader is None) == (full_importance is None):
        raise ValueError("give exactly one of full_loader (to compute Imp_D) or full_importance (precomputed Imp_D)")
    if full_importance is not None:
        check_importance(full_importance, model, name="full_importance (Imp_D)")
    target = model if inplace else copy.deepcopy(model)
    options = dict(objective=objective, granularity=granularity, device=device, progress=progress,
                   autocast_dtype=autocast_dtype, channels_last=channels_last, forward=forward)
    if objective == "true_fisher":
        options.update(label_samples=label_samples, seed=seed)
    elif label_samples is not None:
        raise ValueError(f'label_samples applies to method="ssd_true_fisher" only, not {method!r}')
    if full_importance is None:
        full_importance = compute_importance(target, full_loader, **options)
    else:
        check_importance_kind(full_importance, objective=objective, granularity=granularity,
                              wanted_by=f"method={method!r}", name="full_importance (Imp_D)")
    forget_importance = compute_importance(target, forget_loader, **options)
    choice = None
    if auto:
        calibration_forget = forget_loader if calibration_forget_loader is None else calibration_forget_loader
        choice = calibrate_alpha(target, full_importance, forget_importance, calibration_forget, retain_loader,
                                 lambda_=lambda_, growth=growth, device=device, progress=progress, warn=warn,
                                 forward=forward)
        alpha, lambda_ = choice.alpha, choice.lambda_
    report = select_and_dampen_(target, full_importance, forget_importance, alpha=alpha, lambda_=lambda_, warn=False)
    report.calibration = choice
    if warn:
        report.warn_if_nothing_selected(stacklevel=2)
    return target, report


def unlearning(
    net: nn.Module,
    retain: Iterable,
    forget: Iterable,
    validation: Iterable | None = None,
    *,
    alpha: float = 3.5,
    lambda_: float = 1.0,
) -> nn.Module:
    """The NeurIPS 2023 machine-unlearning starting-kit contract, running LFSSD.

    ``retain`` and ``forget`` are loaders of ``(inputs, labels)`` batches; ``D`` is
    their union (retain batches, then forget batches). ``validation`` is accepted for
    the contract and not used: LFSSD needs neither labels nor held-out data. The
    default ``alpha = 3.5`` is the setting reported for LFSSD on random forgetting, the
    starting kit's scenario. ``net`` is edited in place and returned.
    """
    del validation
    full_loader = itertools.chain(retain, forget)
    net, _ = unlearn(net, forget, method="lfssd", full_loader=full_loader, alpha=alpha, lambda_=lambda_, inplace=True)
    return net
