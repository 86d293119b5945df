"""Input checks shared by the importance estimators, the dampening and the unlearning entry points.

Each check raises a ``ValueError`` whose message names the bad argument (and, for an
importance, the offending entry), so that a mistake is reported where it is made rather
than as a wrong result later. Importances that record how they were estimated (an
:class:`~lfssd_tutorial.importance_info.Importance`) are also checked to be of the kind
asked for and of the same kind as each other; plain dicts record nothing and skip that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .importance_info import Importance

__all__ = [
    "check_choice",
    "check_hyperparameters",
    "check_importance",
    "check_importance_kind",
    "check_importances",
    "check_same_kind",
    "trainable_parameters",
]


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (the message lists them)."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def check_hyperparameters(alpha: float, lambda_: float) -> None:
    """Raise ``ValueError`` unless ``alpha > 0`` and ``lambda_ >= 0`` are finite numbers."""
    for name, value in (("alpha", alpha), ("lambda_", lambda_)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if alpha <= 0:
        raise ValueError(f"alpha (selection weighting) must be > 0, got {alpha}")
    if lambda_ < 0:
        raise ValueError(f"lambda_ (dampening constant) must be >= 0, got {lambda_}")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` for the parameters of ``model`` with ``requires_grad``, in order.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    return params


def check_importance(
    importance: Mapping[str, torch.Tensor],
    model: nn.Module | None = None,
    *,
    name: str = "importance",
) -> None:
    """Validate an importance dict; raise a ``ValueError`` naming the first problem.

    Checks that it is a non-empty mapping of tensors whose values are finite and
    non-negative in float32 (the precision the package computes in), and, when ``model``
    is given, that its keys are exactly the names of the model's trainable parameters and
    every shape matches.
    """
    check_importances([(importance, name)], model)


def check_importances(
    pairs: Iterable[tuple[Mapping[str, torch.Tensor], str]],
    model: nn.Module | None = None,
) -> None:
    """:func:`check_importance` for several ``(importance, name)`` pairs used together, and
    :func:`check_same_kind`: those that record their objective and granularity must agree.

    The values of all of them are checked together, with one device-to-host copy; only
    when that finds a bad value are the entries searched one by one to name it.
    """
    pairs = list(pairs)
    for importance, name in pairs:
        if not isinstance(importance, Mapping) or len(importance) == 0:
            raise ValueError(f"{name} must be a non-empty dict of tensors, got {type(importance).__name__}")
        for key, value in importance.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name}[{key!r}] is a {type(value).__name__}, not a tensor")
    check_same_kind(pairs)
    if not _finite_and_nonnegative([v for importance, _ in pairs for v in importance.values()]):
        _name_bad_values(pairs)
    if model is None:
        return
    params = trainable_parameters(model)
    for importance, name in pairs:
        missing = [k for k in params if k not in importance]
        extra = [k for k in importance if k not in params]
        if missing:
            raise ValueError(f"{name} is missing {len(missing)} parameter(s) of the model, e.g. {missing[:3]}")
        if extra:
            raise ValueError(f"{name} has {len(extra)} key(s) that are not trainable parameters of the model, e.g. {extra[:3]}")
        for key, p in params.items():
            if tuple(importance[key].shape) != tuple(p.shape):
                raise ValueError(
                    f"{name}[{key!r}] has shape {tuple(importance[key].shape)}, "
                    f"but the parameter has shape {tuple(p.shape)}"
                )


def check_same_kind(pairs: Iterable[tuple[Mapping[str, torch.Tensor], str]]) -> None:
    """Raise ``ValueError`` if two of the importances record different objectives or granularities.

    Their ratio would compare unlike quantities (an l2 sensitivity with a Fisher diagonal,
    a per-sample mean with a per-batch mean). The message names both importances and both
    values. Plain dicts record neither and are not compared.
    """
    recorded = [(importance.info, name) for importance, name in pairs if isinstance(importance, Importance)]
    for info, name in recorded[1:]:
        first, first_name = recorded[0]
        for field in ("objective", "granularity"):
            if getattr(info, field) != getattr(first, field):
                raise ValueError(
                    f"{first_name} has {field} {getattr(first, field)!r} but {name} has {field} "
                    f"{getattr(info, field)!r}: importances used together must be estimated the same way"
                )


def check_importance_kind(
    importance: Mapping[str, torch.Tensor],
    *,
    objective: str,
    granularity: str,
    wanted_by: str,
    name: str = "importance",
) -> None:
    """Raise ``ValueError`` if ``importance`` records an objective or granularity other than the
    ones wanted; ``wanted_by`` says what needs the objective (e.g. ``"method='ssd'"``) in the
    message. A plain dict records neither and passes."""
    if not isinstance(importance, Importance):
        return
    info = importance.info
    if info.objective != objective:
        raise ValueError(f"{name} has objective {info.objective!r}, but {wanted_by} needs objective {objective!r}")
    if info.granularity != granularity:
        raise ValueError(f"{name} has granularity {info.granularity!r}, but granularity {granularity!r} was asked for")


def _finite_and_nonnegative(values: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite and >= 0 in float32.

    The smallest and largest element of each tensor suffice: NaN shows in both, ``-inf``
    and negative values in the smallest, ``+inf`` (and float64 values beyond float32's
    range, once converted) in the largest.
    """
    extremes = [torch.stack(torch.aminmax(v.detach().float())) for v in values if v.numel()]
    if not extremes:
        return True
    both = torch.cat([e.cpu() for e in extremes]) if len({e.device for e in extremes}) > 1 else torch.cat(extremes)
    return bool((torch.isfinite(both) & (both >= 0)).all())


def _name_bad_values(pairs: list[tuple[Mapping[str, torch.Tensor], str]]) -> None:
    """Raise a ``ValueError`` naming the first entry with a NaN, inf or negative value, or
    with a value beyond float32's range."""
    for importance, name in pairs:
        for key, value in importance.items():
            if not torch.isfinite(value).all():
                raise ValueError(f"{name}[{key!r}] contains NaN or inf values")
            if value.numel() and value.min() < 0:
                raise ValueError(f"{name}[{key!r}] has negative values; importances are >= 0")
    for importance, name in pairs:
        for key, value in importance.items():
            if not torch.isfinite(value.float()).all():
                raise ValueError(f"{name}[{key!r}] has values that overflow float32, in which importances are computed")
    raise ValueError("the importances hold values that are not finite and >= 0 in float32")
