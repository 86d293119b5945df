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

from .importance import _SMALL_NUMEL, _check_importances, _name_bad_values

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
        max_ratio: the largest finite ``Imp_Df / Imp_D`` (float32): any
            ``alpha >= max_ratio`` selects none of those elements (up to float32 rounding:
            the selection compares ``Imp_Df`` with ``alpha * Imp_D``, and the two forms can
            differ by a relative 2**-22). This is the ceiling of ``alpha`` discussed in
            chapter 7 of the book.
        max_ratio_parameter: the parameter holding that largest ratio.
        unbounded: elements whose ratio is infinite: ``Imp_D == 0 < Imp_Df`` (or an
            ``Imp_D`` so small that the ratio overflows float32). They are selected for
            every ``alpha`` and dampened to (nearly) zero.
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


def _to_list(tensors: list[torch.Tensor]) -> list[float]:
    """Small tensors, flattened and concatenated, as one Python list (one device-to-host copy)."""
    if not tensors:
        return []
    device = tensors[0].device
    return torch.cat([t.reshape(-1).to(device) for t in tensors]).tolist()


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
        ratio = _finite_ratio(full.float(), forget_importance[name].to(full.device).float())
        tops.append(ratio.amax().cpu().reshape(1))
    return max(0.0, float(torch.cat(tops).max())) if tops else 0.0


# Every step below is an element-wise float32 operation (multiply, divide, compare into a
# float32 0/1 tensor, nan_to_num, clamp, sums): on a CPU these are vectorised and several
# times faster than the same steps through boolean masks (masked_fill, torch.where,
# nonzero). The results are bit-identical to the plain rule.
#
# The work goes group by group, _GROUP_NUMEL elements at most. Consecutive small parameters
# (biases, norms; one device and dtype) are concatenated into one group, so that a model of
# many small tensors costs a few operations per group instead of per tensor; a large
# parameter is read in place, cut into groups of its own so that the intermediate results
# of one group stay in the CPU's cache. Scratch buffers of one group's size are allocated
# once per call and reused by every group.
#
# Two passes. The scan reads every group once: the ratios Imp_Df / Imp_D (their extremes
# give the ceiling of alpha and show whether the group can hold a selected element) and,
# when asked, the extremes of the importances themselves (the check for NaN, inf and
# negative values, made before any weight changes). The edit then visits only the groups
# that may hold a selected element, and counts exactly there.
#
# On a GPU the cost is the number of kernel launches, not cache misses: there every
# parameter, large or small, is concatenated into groups of up to _GPU_GROUP_NUMEL
# elements (a CIFAR ResNet18 is one group), and a group's per-parameter counts come from
# one fused multi-tensor reduction (torch._foreach_norm) instead of one sum per parameter.
# On an H100 (benchmarks/gpu_tuning.py, ResNet18, 62 tensors, 11.2M weights) the dampening
# took 2.2 ms this way against 7.5 ms with the CPU grouping; the counts took 0.40 ms
# against 0.62 ms for one sum per parameter and 17 ms for a cumulative sum along the rows.
# Parameters with fewer than _SMALL_NUMEL elements are concatenated with their neighbours.
_GROUP_NUMEL = 2**20
_GPU_GROUP_NUMEL = 2**24
# Sums of 0/1 float32 values are exact integers up to 2**24; longer rows sum in float64.
_EXACT_FLOAT32_COUNT = 2**24
# A group is edited when its largest ratio reaches alpha * (1 - _ROUNDING_MARGIN). Where
# Imp_Df > alpha * Imp_D (the selection, in float32) the float32 quotient Imp_Df / Imp_D is
# above alpha * (1 - 2**-22) (three roundings of at most 2**-24 each, alpha itself rounded
# to float32 among them): no group left out can hold a selected element.
_ROUNDING_MARGIN = 2**-20


def _finite_ratio(full: torch.Tensor, forget: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``Imp_Df / Imp_D``, with -1 where the quotient is infinite and 0 where it is NaN.

    Validated importances are >= 0, so finite ratios are >= 0 and -1 marks exactly the
    unbounded elements (``x / 0`` with ``x > 0``, or a quotient beyond float32's range);
    ``0 / 0`` (NaN) is never selected and counts as ratio 0.
    """
    return torch.div(forget, full, out=out).nan_to_num_(nan=0.0, posinf=-1.0, neginf=-1.0)


def _unselected(full: torch.Tensor, forget: torch.Tensor, alpha: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """1.0 where ``Imp_Df <= alpha * Imp_D`` (not selected), 0.0 where selected."""
    scratch = torch.mul(full, alpha, out=out)
    return torch.le(forget, scratch, out=scratch)


def _on_gpu(device: torch.device) -> bool:
    """Whether the GPU grouping applies (any device but the CPU)."""
    return device.type != "cpu"


def _group_sizes(device: torch.device) -> tuple[int, int]:
    """``(largest group, smallest parameter read in place)`` for parameters on ``device``."""
    if _on_gpu(device):
        return _GPU_GROUP_NUMEL, _GPU_GROUP_NUMEL
    return _GROUP_NUMEL, _SMALL_NUMEL


def _counts(ones: torch.Tensor) -> torch.Tensor:
    """Ones per row of a float 0/1 tensor, exactly (float64 sums for very long rows)."""
    return ones.sum(dim=-1, dtype=torch.float64 if ones.shape[-1] > _EXACT_FLOAT32_COUNT else None)


class _Scratch:
    """Flat buffers reused by every group: one per role and dtype, allocated on first use."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity, self.device, self.buffers = capacity, device, {}

    def get(self, role: str, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (role, dtype)
        if key not in self.buffers:
            self.buffers[key] = torch.empty(self.capacity, dtype=dtype, device=self.device)
        return self.buffers[key][:n]


class _Group:
    """Pieces ``(parameter index, start, stop)`` of the flattened parameters, in order."""

    def __init__(self):
        self.pieces: list[tuple[int, int, int]] = []
        self.n = 0

    def add(self, i: int, start: int, stop: int) -> None:
        self.pieces.append((i, start, stop))
        self.n += stop - start

    def parts(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The pieces of ``tensors`` (flat vectors): the whole vector where a piece is one."""
        return [tensors[i] if stop - start == tensors[i].shape[0] else tensors[i][start:stop] for i, start, stop in self.pieces]

    def flat(self, tensors: list[torch.Tensor], out: torch.Tensor | None) -> torch.Tensor:
        """The pieces of ``tensors`` (flat vectors) as one vector: a view for a single
        piece, otherwise a copy (into ``out`` if given)."""
        if len(self.pieces) == 1:
            i, start, stop = self.pieces[0]
            return tensors[i][start:stop]
        return torch.cat(self.parts(tensors), out=out)

    def sizes(self) -> list[int]:
        return [stop - start for _, start, stop in self.pieces]


def _groups(params: list[torch.Tensor]) -> list[_Group]:
    """Cut the flattened parameters into groups: runs of small parameters of one device and
    dtype share a group; a large parameter gets groups of its own (read in place)."""
    groups: list[_Group] = []
    shared = None  # the group that small parameters are being added to, and its (dtype, device)
    for i, p in enumerate(params):
        n = p.numel()
        if n == 0:
            continue
        group_numel, small_numel = _group_sizes(p.device)
        if n >= small_numel:
            for start in range(0, n, group_numel):
                groups.append(_Group())
                groups[-1].add(i, start, min(n, start + group_numel))
            shared = None
            continue
        if shared is None or shared[0].n + n > group_numel or shared[1] != (p.dtype, p.device):
            groups.append(_Group())
            shared = (groups[-1], (p.dtype, p.device))
        shared[0].add(i, 0, n)
    return groups


def _group_importances(group: _Group, fulls, forgets) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``(Imp_D, Imp_Df)`` of one group as flat vectors, and the vectors that hold them:
    views for a single piece; for several, one copy of both (kept for the call)."""
    if len(group.pieces) == 1:
        full, forget = group.flat(fulls, None), group.flat(forgets, None)
        return full, forget, [full, forget]
    both = torch.cat(group.parts(fulls) + group.parts(forgets))
    return both[: group.n], both[group.n :], [both]


def _scan(groups: list[_Group], fulls, forgets, scratch: _Scratch, check: bool):
    """Per group: ``(Imp_D, Imp_Df)`` as flat vectors, and ``[lowest ratio, largest finite
    ratio]`` followed, if ``check``, by the smallest and largest importance values (per
    vector returned by :func:`_group_importances`). The last group's ratios stay in the
    scratch buffer ``"ratio"``."""
    flats, stats = [], []
    for group in groups:
        full, forget, stored = _group_importances(group, fulls, forgets)
        flats.append((full, forget))
        row = list(torch.aminmax(_finite_ratio(full, forget, out=scratch.get("ratio", group.n))))
        if check:
            row.extend(m for v in stored for m in torch.aminmax(v))
        stats.append(torch.stack(row))
    values, rows, k = _to_list(stats), [], 0
    for row in stats:
        rows.append(values[k : k + len(row)])
        k += len(row)
    return flats, rows


def _edit(flat_params, group: _Group, full, forget, scratch: _Scratch, alpha, lambda_):
    """Dampen the selected elements of one group in place; per piece, ``[#unselected,
    #unchanged]`` (one tensor of shape ``(pieces, 2)``).

    ``beta = lambda_ * Imp_D / Imp_Df`` is computed everywhere with 1 added where the
    element is not selected, then clamped at 1 and its NaN (``0 / 0``, never selected) set
    to 1: unselected elements get exactly 1 (``x * 1 == x`` bit for bit) and selected ones
    ``min(0 + beta, 1) == min(beta, 1)``.
    """
    n = group.n
    # Row 0: 1 where not selected; row 1: 1 where the weight keeps its value.
    flags = scratch.get("flags", 2 * n).view(2, n)
    unselected = _unselected(full, forget, alpha, out=flags[0])
    beta = scratch.get("beta", n)
    numerator = full if lambda_ == 1 else torch.mul(full, lambda_, out=beta)
    torch.addcdiv(unselected, numerator, forget, out=beta).clamp_(max=1.0).nan_to_num_(nan=1.0)
    dtype = flat_params[group.pieces[0][0]].dtype
    old = group.flat(flat_params, scratch.get("param", n, dtype))
    new = torch.mul(old, beta if dtype == torch.float32 else beta.to(dtype), out=scratch.get("new", n, dtype))
    torch.eq(new, old, out=flags[1])
    if len(group.pieces) == 1:
        old.copy_(new)  # old is a view of the parameter itself
        return _counts(flags).view(1, 2)
    torch._foreach_copy_(group.parts(flat_params), list(new.split(group.sizes())))
    if _on_gpu(flags.device) and n <= _EXACT_FLOAT32_COUNT:
        # All pieces' counts in one fused multi-tensor reduction per row: the l1 norm of a
        # 0/1 vector is its number of ones, and every partial sum is an integer <= n <= 2**24,
        # exact in float32 whatever the order of the additions.
        sizes = group.sizes()
        return torch.stack([torch.stack(torch._foreach_norm(list(row.split(sizes)), 1)) for row in flags], dim=1)
    return torch.stack([_counts(f) for f in flags.split(group.sizes(), dim=1)])


def _flat_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a flat vector sharing its memory (a contiguous copy if it is not contiguous)."""
    return t.view(-1) if t.is_contiguous() else t.contiguous().view(-1)


def _scan_and_edit(params, fulls, forgets, alpha, lambda_, check=None):
    """Scan every group, then edit the groups that may hold selected elements; two
    synchronisations.

    ``check``: ``None`` when the importances are known to be finite and >= 0; otherwise a
    function that raises a ``ValueError`` naming the entry with a NaN, inf or negative
    value, called (before any weight changes) when the scan finds one.

    Returns ``(selected, changed, unbounded, best)``: per-parameter counts of selected and
    changed elements, the number of unbounded elements, and ``(largest finite ratio,
    index of the parameter holding it or None)``.
    """
    selected, changed = [0] * len(params), [0] * len(params)
    groups = _groups(params)
    if not groups:
        return selected, changed, 0, (0.0, None)
    fulls, forgets = [_flat_view(t) for t in fulls], [_flat_view(t) for t in forgets]
    scratch = _Scratch(2 * max(g.n for g in groups), params[groups[0].pieces[0][0]].device)
    flats, stats = _scan(groups, fulls, forgets, scratch, check is not None)
    if check is not None and not all(0 <= v < math.inf for row in stats for v in row[2:]):
        check()  # raises, naming the entry
        raise ValueError("the importances hold values that are not finite and >= 0 in float32")

    unbounded_in, best, best_group = set(), 0.0, None
    for g, (group, (lowest, top, *_)) in enumerate(zip(groups, stats)):
        if lowest < 0:
            unbounded_in.update(i for i, _, _ in group.pieces)
        if top > best:
            best, best_group = top, g
    # Rare: some ratios are unbounded (-1 marks them). Such elements are selected for every
    # finite alpha; count them among the selected ones.
    unbounded = sum(
        int(torch.count_nonzero(torch.isinf(forgets[i] / fulls[i]) & (forgets[i] > fulls[i] * alpha)))
        for i in sorted(unbounded_in)
    )
    where = None  # the parameter holding the largest ratio (the first one if tied)
    if best_group is not None:
        # The last group's ratios are still in the scratch buffer; any other group's are recomputed.
        group = groups[best_group]
        where = group.pieces[0][0]
        if len(group.pieces) > 1:
            ratio = scratch.get("ratio", group.n)
            if best_group != len(groups) - 1:
                _finite_ratio(*flats[best_group], out=ratio)
            offset = int(ratio.argmax())
            for i, start, stop in group.pieces:
                if offset < stop - start:
                    where = i
                    break
                offset -= stop - start

    # Only a group whose largest ratio reaches alpha (less a rounding margin), or that holds
    # an unbounded ratio, can hold a selected element: the others are left as they are.
    # Non-contiguous parameters are edited in a contiguous copy, written back at the end.
    threshold = alpha * (1 - _ROUNDING_MARGIN)
    flat_params = [_flat_view(p) for p in params]
    pieces, counts = [], []
    for group, (full, forget), (lowest, top, *_) in zip(groups, flats, stats):
        if lowest < 0 or top >= threshold:
            pieces.extend(group.pieces)
            counts.append(_edit(flat_params, group, full, forget, scratch, alpha, lambda_))
    values = _to_list(counts)
    for k, (i, start, stop) in enumerate(pieces):
        selected[i] += stop - start - int(values[2 * k])
        changed[i] += stop - start - int(values[2 * k + 1])
    for i in {i for i, _, _ in pieces}:
        if not params[i].is_contiguous():
            params[i].copy_(flat_params[i].view(params[i].shape))
    return selected, changed, unbounded, (best, where)


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
    named = [(full_importance, "full_importance (Imp_D)"), (forget_importance, "forget_importance (Imp_Df)")]
    # Keys, shapes and types here; the values (NaN, inf, negative) are checked by the
    # dampening's first pass over them, before any weight changes.
    _check_importances(named, model, values=False)
    return _dampen(
        model, full_importance, forget_importance, alpha, lambda_, warn=warn, stacklevel=3,
        check=lambda: _name_bad_values(named),
    )


def _dampen(
    model, full_importance, forget_importance, alpha, lambda_, *, warn: bool, stacklevel: int, check=None
) -> DampeningReport:
    """:func:`select_and_dampen_` on importances whose keys and shapes are already checked.

    ``check``: ``None`` when their values are checked too; otherwise called to name the bad
    entry if the first pass finds a NaN, inf or negative value (see :func:`_scan_and_edit`).
    ``stacklevel`` of the warning counts from here (3: the caller of the public function).
    """
    report = DampeningReport(alpha=float(alpha), lambda_=float(lambda_))
    names, params, fulls, forgets = [], [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            names.append(name)
            params.append(p)
            for source, out in ((full_importance, fulls), (forget_importance, forgets)):
                t = source[name]
                out.append(t if t.dtype == torch.float32 and t.device == p.device else t.to(p.device, torch.float32))
    with torch.no_grad():
        selected, changed, unbounded, (best_ratio, best) = _scan_and_edit(
            params, fulls, forgets, float(alpha), float(lambda_), check
        )
    for i, (name, p) in enumerate(zip(names, params)):
        report.numel[name] = p.numel()
        report.selected[name] = selected[i]
        report.changed[name] = changed[i]
    report.unbounded = unbounded
    report.max_ratio = best_ratio
    report.max_ratio_parameter = None if best is None else names[best]
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
