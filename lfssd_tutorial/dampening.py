"""Selection and dampening: the weight edit shared by SSD and LFSSD.

For every trainable parameter element ``i``:

* select ``i`` iff ``Imp_Df[i] > alpha * Imp_D[i]``;
* for selected ``i``: ``theta[i] <- beta[i] * theta[i]`` with
  ``beta[i] = min(lambda_ * Imp_D[i] / Imp_Df[i], 1)``.

``beta`` never exceeds 1, so no weight grows; ``Imp_D[i] = 0`` with ``Imp_Df[i] > 0``
gives ``beta = 0``. Buffers (BatchNorm running statistics) are never touched.

Because ``D`` contains ``D_f``, the ratio ``Imp_Df / Imp_D`` is bounded (with batch
granularity, by roughly ``#batches(D) / #batches(D_f)``). An ``alpha`` at or above the
largest ratio selects nothing and returns the model unchanged; the report records that
ceiling as :attr:`DampeningReport.max_ratio` and a :class:`NothingSelectedWarning` says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .importance import check_importance

__all__ = [
    "DampeningReport",
    "NothingSelectedWarning",
    "select_and_dampen_",
    "importance_ratios",
    "max_importance_ratio",
    "check_hyperparameters",
]


class NothingSelectedWarning(UserWarning):
    """``alpha`` is at or above every importance ratio: no weight was selected or changed."""


@dataclass
class DampeningReport:
    """What :func:`select_and_dampen_` did.

    Attributes:
        alpha, lambda_: the hyperparameters used.
        selected: number of selected elements per parameter name.
        numel: number of elements per parameter name.
        changed: number of elements whose value actually changed (selected, ``beta < 1``
            and not already zero).
        max_ratio: the largest finite ``Imp_Df / Imp_D`` over elements with
            ``Imp_D > 0``: any ``alpha >= max_ratio`` selects none of them. The ceiling
            of SPEC section 3.
        max_ratio_parameter: the parameter holding that largest ratio.
        unbounded: elements with ``Imp_D == 0 < Imp_Df`` (ratio infinite); they are
            selected for every ``alpha`` and zeroed.
    """

    alpha: float
    lambda_: float
    selected: dict[str, int] = field(default_factory=dict)
    numel: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    max_ratio: float = 0.0
    max_ratio_parameter: str | None = None
    unbounded: int = 0

    @property
    def total_selected(self) -> int:
        return sum(self.selected.values())

    @property
    def total_numel(self) -> int:
        return sum(self.numel.values())

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())

    @property
    def fraction_selected(self) -> float:
        return self.total_selected / max(self.total_numel, 1)

    @property
    def fraction_changed(self) -> float:
        return self.total_changed / max(self.total_numel, 1)

    @property
    def nothing_selected(self) -> bool:
        return self.total_selected == 0

    def rows(self) -> list[dict[str, object]]:
        """One row per parameter: name, numel, selected, changed, fraction selected."""
        return [
            {
                "parameter": name,
                "numel": self.numel[name],
                "selected": self.selected[name],
                "changed": self.changed[name],
                "fraction_selected": self.selected[name] / max(self.numel[name], 1),
            }
            for name in self.numel
        ]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary (totals, the ratio ceiling, and per-parameter counts)."""
        return {
            "alpha": self.alpha,
            "lambda": self.lambda_,
            "total_selected": self.total_selected,
            "total_changed": self.total_changed,
            "total_numel": self.total_numel,
            "fraction_selected": self.fraction_selected,
            "fraction_changed": self.fraction_changed,
            "max_ratio": self.max_ratio,
            "max_ratio_parameter": self.max_ratio_parameter,
            "unbounded": self.unbounded,
            "selected": dict(self.selected),
        }

    def __str__(self) -> str:
        text = (
            f"alpha={self.alpha:g} lambda={self.lambda_:g}: selected {self.total_selected:,} of "
            f"{self.total_numel:,} weights ({100 * self.fraction_selected:.3f}%), changed "
            f"{self.total_changed:,}; largest ratio Imp_Df/Imp_D = {self.max_ratio:.3g}"
        )
        if self.max_ratio_parameter:
            text += f" (in {self.max_ratio_parameter})"
        if self.unbounded:
            text += f"; {self.unbounded} weight(s) with Imp_D = 0 < Imp_Df were zeroed"
        return text


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


def _to_list(tensors: list[torch.Tensor]) -> list[list[float]]:
    """Rows of small tensors as Python lists, with one device-to-host copy."""
    if not tensors:
        return []
    device = tensors[0].device
    return torch.stack([t.to(device) for t in tensors]).tolist()


def _check_pair(model, full_importance, forget_importance):
    check_importance(full_importance, model, name="full_importance (Imp_D)")
    check_importance(forget_importance, model, name="forget_importance (Imp_Df)")


def importance_ratios(
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """All finite ratios ``Imp_Df / Imp_D`` (elements with ``Imp_D > 0``), flattened.

    Useful to plot the ratio distribution and see which ``alpha`` values select anything.
    """
    parts = []
    for name, full in full_importance.items():
        full = full.detach().float().flatten()
        forget = forget_importance[name].detach().float().flatten().to(full.device)
        mask = full > 0
        parts.append((forget[mask] / full[mask]).cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def max_importance_ratio(
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
) -> float:
    """The largest finite ``Imp_Df / Imp_D``: the ceiling above which ``alpha`` selects nothing."""
    tops = []
    for name, full in full_importance.items():
        if full.numel() == 0:
            continue
        forget = forget_importance[name].to(full.device)
        tops.append((forget / full).masked_fill_(~(full > 0), 0.0).amax().float().cpu().reshape(1))
    return max(0.0, float(torch.cat(tops).max())) if tops else 0.0


# A parameter with few selected elements (below _SPARSE_FRACTION, on the CPU) is edited
# through the indices of those elements (gather, compute, scatter): the usual selection is a
# tiny fraction of the weights. Otherwise whole-tensor masked ops are used, which on
# accelerators also avoid a synchronisation per parameter. Both give bit-identical weights.
_SPARSE_FRACTION = 0.125


def _beta(full: torch.Tensor, forget: torch.Tensor, lambda_: float) -> torch.Tensor:
    """``min(lambda_ * Imp_D / Imp_Df, 1)`` into a new tensor (``full`` is not modified)."""
    return (full / forget if lambda_ == 1 else full.mul(lambda_).div_(forget)).clamp_(max=1.0)


def _edit_at_(p: torch.Tensor, index: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``p.flatten()[index] *= beta`` in place; return the number of values that changed."""
    target = p if p.is_contiguous() else p.contiguous()
    flat = target.view(-1)
    old = flat[index]
    new = old * beta.to(p.dtype)
    flat.index_copy_(0, index, new)
    if target is not p:
        p.copy_(target)
    return torch.count_nonzero(new != old).double().reshape(1)


def _dampen_selected_(p, full, forget, selected, n_selected: int, lambda_: float) -> torch.Tensor:
    """Multiply the selected elements of ``p`` by ``beta`` in place; return the changed count.

    Selected elements have ``Imp_Df > alpha * Imp_D >= 0``, so the quotient is finite there.
    """
    if p.device.type == "cpu" and n_selected < _SPARSE_FRACTION * p.numel():
        index = selected.reshape(-1).nonzero().squeeze(1)
        return _edit_at_(p, index, _beta(full.reshape(-1)[index], forget.reshape(-1)[index], lambda_))
    # Dense: beta is computed everywhere (possibly inf or nan where not selected) and set
    # to exactly 1 there; x * 1 == x bit for bit, so unselected weights keep their values.
    beta = _beta(full, forget, lambda_).masked_fill_(~selected, 1.0).to(p.dtype)
    new = p * beta
    n_changed = torch.count_nonzero(new != p).double().reshape(1)
    p.copy_(new)
    return n_changed


def _scan(full: torch.Tensor, forget: torch.Tensor, alpha: float):
    """Selection mask, ``Imp_D == 0`` mask and finite ratios (0 where ``Imp_D == 0``)."""
    # One scratch buffer serves alpha * Imp_D and then the ratio (no second allocation).
    scratch = torch.mul(full, alpha)
    selected = forget > scratch
    zero = full == 0  # validated importances are >= 0, so this is "not Imp_D > 0"
    ratio = torch.div(forget, full, out=scratch).masked_fill_(zero, 0.0)
    return selected, zero, ratio


def _scan_and_edit(params, fulls, forgets, alpha, lambda_):
    """Scan and edit parameter by parameter; two synchronisations in all."""
    stats, masks = [], []
    for p, full, forget in zip(params, fulls, forgets):
        if p.numel():
            selected, zero, ratio = _scan(full, forget, alpha)
            # Imp_D = 0 < Imp_Df: with validated (finite, >= 0) importances these are
            # exactly the selected elements with Imp_D = 0 (forget > alpha * 0 = 0).
            unbounded, top = torch.count_nonzero(selected & zero), ratio.amax()
        else:
            selected = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            unbounded = top = torch.zeros((), device=p.device)
        masks.append(selected)
        stats.append(torch.stack([torch.count_nonzero(selected).double(), unbounded.double(), top.double()]))
    values = _to_list(stats)
    changed = {}
    for i, (p, full, forget, selected) in enumerate(zip(params, fulls, forgets, masks)):
        if values[i][0]:
            changed[i] = _dampen_selected_(p, full, forget, selected, int(values[i][0]), lambda_)
    return values, changed


def select_and_dampen_(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    lambda_: float,
    warn: bool = True,
) -> DampeningReport:
    """Select the weights specialised to the forget set and dampen them, in place.

    Args:
        model: the network to edit; its trainable parameters change in place.
        full_importance: ``Imp_D``, importance over the full training data.
        forget_importance: ``Imp_Df``, importance over the forget set, same objective
            and granularity.
        alpha: selection weighting, ``> 0``: select where ``Imp_Df > alpha * Imp_D``.
        lambda_: dampening constant, ``>= 0``: ``beta = min(lambda_ * Imp_D / Imp_Df, 1)``.
        warn: emit :class:`NothingSelectedWarning` when nothing is selected.

    Returns:
        A :class:`DampeningReport` with per-parameter and total counts and the largest
        ratio ``Imp_Df / Imp_D``.

    Raises:
        ValueError: bad ``alpha``/``lambda_``; importances with missing or extra keys,
            wrong shapes, negative or non-finite values.
    """
    check_hyperparameters(alpha, lambda_)
    _check_pair(model, full_importance, forget_importance)
    return _dampen(model, full_importance, forget_importance, alpha, lambda_, warn=warn, stacklevel=3)


def _dampen(model, full_importance, forget_importance, alpha, lambda_, *, warn: bool, stacklevel: int) -> DampeningReport:
    """:func:`select_and_dampen_` on arguments that are already validated.

    ``stacklevel`` of the warning counts from here (3: the caller of the public function).
    """
    report = DampeningReport(alpha=float(alpha), lambda_=float(lambda_))
    names, params, fulls, forgets = [], [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            names.append(name)
            params.append(p)
            fulls.append(full_importance[name].to(device=p.device, dtype=torch.float32))
            forgets.append(forget_importance[name].to(device=p.device, dtype=torch.float32))
    with torch.no_grad():
        values, changed = _scan_and_edit(params, fulls, forgets, float(alpha), float(lambda_))
    best_ratio, best_name = 0.0, None
    for name, p, (n_selected, n_unbounded, ratio) in zip(names, params, values):
        report.numel[name] = p.numel()
        report.selected[name] = int(n_selected)
        report.changed[name] = 0
        report.unbounded += int(n_unbounded)
        if ratio > best_ratio:
            best_ratio, best_name = ratio, name
    edited = sorted(changed)
    for i, n_changed in zip(edited, _to_list([changed[i] for i in edited])):
        report.changed[names[i]] = int(n_changed[0])
    report.max_ratio = best_ratio
    report.max_ratio_parameter = best_name
    if warn and report.nothing_selected:
        warnings.warn(
            f"alpha={alpha:g} selected no weights, so the model is unchanged and nothing is "
            f"forgotten. The largest importance ratio Imp_Df/Imp_D is {best_ratio:.3g}: "
            f"only alpha < {best_ratio:.3g} selects anything. Lower alpha (see the ratio "
            "distribution, lfssd_tutorial.importance_ratios).",
            NothingSelectedWarning,
            stacklevel=stacklevel,
        )
    return report
