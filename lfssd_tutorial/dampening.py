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

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .checks import check_hyperparameters, check_importances, trainable_parameters

__all__ = [
    "DampeningReport",
    "NothingSelectedWarning",
    "select_and_dampen_",
    "importance_ratios",
    "max_importance_ratio",
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
        max_ratio: the largest finite ``Imp_Df / Imp_D`` (float32): any
            ``alpha >= max_ratio`` selects none of those elements (up to float32 rounding:
            the selection compares ``Imp_Df`` with ``alpha * Imp_D``, and the two forms can
            differ by a relative 2**-22). This is the ceiling of ``alpha`` discussed in
            chapter 7 of the book.
        max_ratio_parameter: the parameter holding that largest ratio.
        unbounded: elements whose ratio is infinite: ``Imp_D == 0 < Imp_Df`` (or an
            ``Imp_D`` so small that the ratio overflows float32). They are selected for
            every ``alpha`` and dampened to (nearly) zero.
        calibration: with ``unlearn(..., alpha="auto")``, the
            :class:`~lfssd_tutorial.calibrate.AlphaChoice` that chose ``alpha``; else ``None``.
    """

    alpha: float
    lambda_: float
    selected: dict[str, int] = field(default_factory=dict)
    numel: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    max_ratio: float = 0.0
    max_ratio_parameter: str | None = None
    unbounded: int = 0
    calibration: object | None = None

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

    def warn_if_nothing_selected(self, stacklevel: int = 1) -> None:
        """Emit a :class:`NothingSelectedWarning` (naming the ceiling of ``alpha``) if nothing
        was selected. ``stacklevel`` as in ``warnings.warn``, counted from the caller."""
        if self.nothing_selected:
            warnings.warn(
                f"alpha={self.alpha:g} selected no weights, so the model is unchanged and nothing is "
                f"forgotten. The largest importance ratio Imp_Df/Imp_D is {self.max_ratio:.3g}: "
                f"only alpha < {self.max_ratio:.3g} selects anything. Lower alpha (see the ratio "
                "distribution, lfssd_tutorial.importance_ratios).",
                NothingSelectedWarning,
                stacklevel=stacklevel + 1,
            )

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


def select_and_dampen_(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    lambda_: float,
    warn: bool = True,
) -> DampeningReport:
    """Select the weights specialised to the forget set and dampen them.

    Per trainable parameter, with ``d = Imp_D``, ``f = Imp_Df`` in float32::

        selected = f > alpha * d
        beta = min(lambda_ * d / f, 1)
        theta <- beta * theta   where selected (elsewhere times exactly 1)

    Args:
        model: the network; its trainable parameters change in place.
        full_importance: ``Imp_D``, importance over the full training data.
        forget_importance: ``Imp_Df``, importance over the forget set, same
            objective and granularity.
        alpha: selection weighting, ``> 0``: select where
            ``Imp_Df > alpha * Imp_D``.
        lambda_: dampening constant, ``>= 0``:
            ``beta = min(lambda_ * Imp_D / Imp_Df, 1)``.
        warn: emit :class:`NothingSelectedWarning` when nothing is selected.

    Returns:
        A :class:`DampeningReport` with per-parameter and total counts and
        the largest ratio ``Imp_Df / Imp_D``.

    Raises:
        ValueError: bad ``alpha``/``lambda_``; importances with missing
            or extra keys, wrong shapes, negative or non-finite values.
            Everything is checked before any weight changes.
    """
    check_hyperparameters(alpha, lambda_)
    check_importances([(full_importance, "full_importance (Imp_D)"),
                       (forget_importance, "forget_importance (Imp_Df)")],
                      model)
    report = DampeningReport(alpha=float(alpha), lambda_=float(lambda_))
    changed = {}  # the number of changed elements of each parameter
    with torch.no_grad():
        for name, p in trainable_parameters(model).items():
            d, f = _float32_importances(full_importance, forget_importance,
                                        name, p)
            # Two temporaries per parameter, reused in place. The
            # selection is kept as a float 0/1 flag (1 = not selected): on
            # a CPU, float arithmetic is several times faster per element
            # than masking with booleans.
            work = alpha * d
            # not selected: not Imp_Df > alpha * Imp_D
            unselected = torch.le(f, work, out=torch.empty_like(work))
            # The ratios Imp_Df / Imp_D: -1 marks the unbounded ones (x / 0,
            # or a quotient beyond float32's range: selected for every
            # alpha), 0 / 0 counts as 0.
            ratio = torch.div(f, d, out=work).nan_to_num_(nan=0, posinf=-1)
            if ratio.numel():
                lowest, top = torch.aminmax(ratio)
            else:
                lowest, top = ratio.new_zeros(()), ratio.new_zeros(())
            summary = [unselected.sum(dtype=torch.float64), lowest, top]
            # one copy to the host
            n_unselected, lowest, top = torch.stack(
                [t.double() for t in summary]).tolist()
            if lowest < 0:  # rare: unbounded ratios; count selected ones
                unbounded = (ratio < 0) & (unselected == 0)
                report.unbounded += int(torch.count_nonzero(unbounded))
            n_selected = p.numel() - int(n_unselected)
            report.numel[name] = p.numel()
            report.selected[name] = n_selected
            report.changed[name] = 0
            if top > report.max_ratio:  # the first parameter holding it
                report.max_ratio, report.max_ratio_parameter = top, name
            if n_selected == 0:
                continue
            # beta = min(lambda_ * d / f, 1) where selected, exactly 1
            # elsewhere: adding the flag lifts every unselected element to
            # >= 1 before the clamp, and 0 / 0 (never selected) gives NaN,
            # which becomes 1.
            if lambda_ == 1:
                numerator = d
            else:
                numerator = torch.mul(d, lambda_, out=work)
            beta = torch.addcdiv(unselected, numerator, f, out=work)
            beta = beta.clamp_(max=1).nan_to_num_(nan=1)
            new = beta.to(p.dtype).mul_(p)
            changed[name] = torch.ne(new, p, out=unselected).sum(
                dtype=torch.float64)
            p.copy_(new)
    if changed:  # the counts of all dampened parameters, in one host copy
        device = next(iter(changed.values())).device
        counts = torch.stack([c.to(device) for c in changed.values()])
        for name, count in zip(changed, counts.tolist()):
            report.changed[name] = int(count)
    if warn:
        report.warn_if_nothing_selected(stacklevel=2)
    return report


def _float32_importances(full_importance, forget_importance, name: str, p: torch.Tensor):
    """``(Imp_D, Imp_Df)`` of parameter ``name`` as float32 tensors on ``p``'s device."""
    return (full_importance[name].to(p.device, torch.float32), forget_importance[name].to(p.device, torch.float32))


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
    """The largest finite ``Imp_Df / Imp_D``: the ceiling above which ``alpha`` selects nothing.

    Ratios that are not finite in float32 (``Imp_D = 0``, or an ``Imp_D`` so small that the
    quotient overflows) are left out: those weights are selected for every ``alpha``.
    """
    tops = []
    for name, full in full_importance.items():
        if full.numel() == 0:
            continue
        ratio = forget_importance[name].to(full.device).float() / full.float()
        tops.append(ratio.nan_to_num(nan=0, posinf=0).amax().cpu().reshape(1))
    return max(0.0, float(torch.cat(tops).max())) if tops else 0.0
