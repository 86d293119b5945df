"""What an importance is: :class:`ImportanceInfo`, and :class:`Importance`, the dict that carries it.

An importance is a ``dict`` shaped like ``model.named_parameters()`` (one non-negative
tensor per trainable parameter). Two importances are only comparable if they were estimated
the same way: ``Imp_Df / Imp_D`` of an l2 ``Imp_D`` and a Fisher ``Imp_Df`` is meaningless,
and so is a ratio of a per-sample mean to a per-batch mean. :func:`~lfssd_tutorial.compute_importance`
therefore returns an :class:`Importance`: the same dict, with an ``info`` attribute that
records its objective, its granularity and the data it was estimated over. The entry points
(:func:`~lfssd_tutorial.unlearn`, :func:`~lfssd_tutorial.select_and_dampen_`,
:func:`~lfssd_tutorial.calibrate_alpha`) refuse importances whose records disagree; a plain
dict records nothing and is accepted as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["ImportanceInfo", "Importance", "shape_mismatch", "shapes_of"]


@dataclass
class ImportanceInfo:
    """How an importance was estimated.

    Attributes:
        objective: ``"l2"``, ``"fisher"`` or ``"true_fisher"``.
        granularity: ``"batch"`` or ``"sample"``.
        samples: the number of samples it was estimated over (``None``: not recorded).
        batches: the number of (non-empty) batches they came in (``None``: not recorded).
            At batch granularity the importance is a mean over ``batches``, at sample
            granularity over ``samples``.
        label_samples: for ``"true_fisher"``, the labels drawn per input (``None``: the exact
            expectation over classes); ``None`` for the other objectives.
        parameters: the model's trainable parameter names and shapes, in the model's order.
    """

    objective: str
    granularity: str
    samples: int | None = None
    batches: int | None = None
    label_samples: int | None = None
    parameters: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("objective", "granularity"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ImportanceInfo.{name} must be a str, got {type(getattr(self, name)).__name__}")
        for name in ("samples", "batches", "label_samples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"ImportanceInfo.{name} must be None or an int >= 0, got {value!r}")
        self.parameters = {str(k): tuple(int(n) for n in shape) for k, shape in self.parameters.items()}

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (shapes as lists); :meth:`from_dict` reads it back."""
        return {
            "objective": self.objective,
            "granularity": self.granularity,
            "samples": self.samples,
            "batches": self.batches,
            "label_samples": self.label_samples,
            "parameters": [[name, list(shape)] for name, shape in self.parameters.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ImportanceInfo:
        """The inverse of :meth:`to_dict`."""
        return cls(
            objective=data["objective"],
            granularity=data["granularity"],
            samples=data.get("samples"),
            batches=data.get("batches"),
            label_samples=data.get("label_samples"),
            parameters={name: tuple(shape) for name, shape in data.get("parameters", [])},
        )

    def describe(self) -> str:
        """One line: objective, granularity and what it was estimated over."""
        text = f"objective={self.objective!r}, granularity={self.granularity!r}"
        if self.label_samples is not None:
            text += f", label_samples={self.label_samples}"
        if self.samples is not None:
            text += f", {self.samples} samples"
        if self.batches is not None:
            text += f" in {self.batches} batches" if self.samples is not None else f", {self.batches} batches"
        return text


class Importance(dict):
    """An importance dict (``{parameter name: tensor}``) that records how it was estimated.

    It is a ``dict``: index it, iterate over ``items()``, take ``len()``, pass it wherever an
    importance is expected (``dict(importance)`` is the plain dict). Two importances are
    ``==`` when they have the same keys, equal tensors (:func:`torch.equal`) and, if both
    are ``Importance``, the same ``info``; a plain dict of equal tensors is ``==`` to it.

    The record describes the tensors as they were estimated: after editing the dict (adding,
    removing or replacing entries) build a new ``Importance`` or use a plain dict.

    Attributes:
        info: how it was estimated (:class:`ImportanceInfo`).

    Raises:
        TypeError: ``info`` is not an :class:`ImportanceInfo`.
        ValueError: ``info.parameters`` is given and does not name exactly the keys of
            ``values`` with their shapes.
    """

    def __init__(self, values: Mapping[str, torch.Tensor], info: ImportanceInfo):
        super().__init__(values)
        if not isinstance(info, ImportanceInfo):
            raise TypeError(f"info must be an ImportanceInfo, got {type(info).__name__}")
        if info.parameters:
            problem = shape_mismatch(shapes_of(self), info.parameters)
            if problem:
                raise ValueError(f"the importance does not match its recorded parameters: {problem}")
        self.info = info

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if isinstance(other, Importance) and other.info != self.info:
            return False
        if set(self.keys()) != set(other.keys()):
            return False
        return all(_same_tensor(value, other[key]) for key, value in self.items())

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # mutable, like dict

    def __repr__(self) -> str:
        values = sum(v.numel() for v in self.values() if isinstance(v, torch.Tensor))
        return f"Importance({self.info.describe()}; {len(self)} tensors, {values:,} values)"


def shape_mismatch(shapes: Mapping[str, tuple[int, ...] | None], parameters: Mapping[str, tuple[int, ...]]) -> str | None:
    """What differs between ``shapes`` (name -> shape, ``None`` for a value that is not a tensor)
    and the parameter names and shapes in ``parameters``, in words (the first difference), or
    ``None`` when they agree."""
    missing = [name for name in parameters if name not in shapes]
    if missing:
        return f"{len(missing)} parameter(s) missing, e.g. {missing[:3]}"
    extra = [name for name in shapes if name not in parameters]
    if extra:
        return f"{len(extra)} entries that are not parameters, e.g. {extra[:3]}"
    for name, shape in parameters.items():
        if shapes[name] != tuple(shape):
            return f"{name!r} has shape {shapes[name]}, but the parameter has shape {tuple(shape)}"
    return None


def shapes_of(values: Mapping[str, object]) -> dict[str, tuple[int, ...] | None]:
    """``{name: shape}`` of a dict of tensors (``None`` for a value that is not a tensor)."""
    return {name: tuple(v.shape) if isinstance(v, torch.Tensor) else None for name, v in values.items()}


def _same_tensor(a: object, b: object) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b.to(a.device))
