"""A loader's batch and what the model makes of it: the one place the package runs a model on a batch.

A *batch* is one of:

* a tensor of inputs (no labels);
* a tuple/list ``(inputs, ..., labels)``: the first element is the input, the last the
  label, which covers ``(x, y)`` and the reference code's ``(x, fine_label, coarse_label)``;
  a 1-tuple carries no labels;
* a mapping of tensors, the Hugging Face datasets/Trainer convention such as
  ``{"pixel_values": x, "labels": y}``: the model is called with the entries as keyword
  arguments, except the labels (``"labels"`` or ``"label"``), which only the Fisher
  objectives use.

A model's *output* is one of:

* a tensor of logits;
* an object with a ``.logits`` tensor (a Hugging Face ``ModelOutput``);
* a mapping with a ``"logits"`` entry;
* a tuple/list whose first element is the logits, such as ``(logits, aux)``.

For anything else, give a ``forward`` callable, ``forward(model, batch) -> (logits,
labels or None)``: every function that runs the model on loader batches for importances
(:func:`~lfssd_tutorial.compute_importance`, :func:`~lfssd_tutorial.unlearn`,
:func:`~lfssd_tutorial.calibrate_alpha`) accepts it and passes it to :func:`model_logits`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["Forward", "LABEL_KEYS", "split_batch", "as_logits", "model_logits", "map_tensors", "batch_size"]

#: ``forward(model, batch) -> (logits, labels or None)``: how to run a model on one batch.
Forward = Callable[[nn.Module, Any], tuple[torch.Tensor, "torch.Tensor | None"]]

#: The keys of a mapping batch that hold its labels (the model is not given them).
LABEL_KEYS = ("labels", "label")


def split_batch(batch: Any, *, need_labels: bool) -> tuple[torch.Tensor | dict[str, torch.Tensor], torch.Tensor | None]:
    """Return ``(inputs, labels)`` from one batch of a loader (the module docstring lists the kinds).

    ``inputs`` is a tensor, or for a mapping batch the dict of the model's keyword
    arguments (every entry but the labels); ``labels`` is ``None`` when the batch has none.

    Raises:
        TypeError: the batch is of another kind, or its inputs or labels are not tensors.
        ValueError: labels are needed but the batch carries none; a mapping with both
            ``"labels"`` and ``"label"``; not one label per input.
    """
    if isinstance(batch, torch.Tensor):
        inputs, labels = batch, None
    elif isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("the loader yielded an empty tuple/list as a batch")
        inputs = batch[0]
        labels = batch[-1] if len(batch) >= 2 else None
    elif isinstance(batch, Mapping):
        keys = [k for k in LABEL_KEYS if k in batch]
        if len(keys) > 1:
            raise ValueError(f"the batch has both {keys[0]!r} and {keys[1]!r}: which are its labels is ambiguous")
        labels = batch[keys[0]] if keys else None
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        if not inputs:
            raise ValueError(f"the batch mapping has no entry besides its labels (keys {list(batch)})")
        for key, value in inputs.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"the batch's entry {key!r} must be a tensor (a keyword input of the model), got "
                                f"{type(value).__name__}; pass forward=... to say how to run the model on such batches")
    else:
        raise TypeError(
            "a batch must be a tensor of inputs, a tuple/list (inputs, ..., labels) or a mapping of tensors "
            f"(labels under 'labels' or 'label'); the loader yielded {type(batch).__name__}. Pass forward=... "
            "to say how to run the model on such batches"
        )
    if not isinstance(inputs, (torch.Tensor, dict)):
        raise TypeError(f"the batch's inputs must be a tensor, got {type(inputs).__name__}")
    if labels is not None and not isinstance(labels, torch.Tensor):
        raise TypeError(f"the batch's labels must be a tensor, got {type(labels).__name__}")
    if need_labels and labels is None:
        raise ValueError(
            'objective="fisher" needs labels, but the loader yields batches without them '
            "(a bare tensor, a 1-tuple, or a mapping without 'labels'/'label'). Use objective=\"l2\" (LFSSD) "
            "for unlabelled data, or yield (inputs, labels)."
        )
    if labels is not None and isinstance(inputs, torch.Tensor) and labels.shape[:1] != inputs.shape[:1]:
        raise ValueError(
            f"the batch has {inputs.shape[0]} inputs but {labels.shape[0] if labels.dim() else 0} labels"
        )
    return inputs, labels


def as_logits(output: Any) -> torch.Tensor:
    """The logits of a model's output: a tensor, ``output.logits``, ``output["logits"]`` or ``output[0]``.

    Raises:
        TypeError: the output is of another kind (the message names its type).
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = None
    if hasattr(output, "logits"):  # a Hugging Face ModelOutput (itself a mapping) or any object with .logits
        logits = output.logits
    elif isinstance(output, Mapping) and "logits" in output:
        logits = output["logits"]
    elif isinstance(output, (tuple, list)) and len(output) > 0:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}, from which no logits tensor could be taken: expected a "
            "tensor, an object with .logits, a mapping with 'logits', or a tuple/list whose first element is the "
            "logits. Pass forward=... (forward(model, batch) -> (logits, labels or None)) for other models"
        )
    return logits


def model_logits(
    model: nn.Module,
    batch: Any,
    *,
    forward: Forward | None = None,
    need_labels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` on one ``batch``; return ``(logits, labels or None)``.

    Without ``forward`` the batch is split by :func:`split_batch` and the model called with
    its inputs (as keyword arguments for a mapping batch); the output goes through
    :func:`as_logits`. With ``forward``, ``forward(model, batch)`` does both.

    Raises:
        TypeError: a batch, output or ``forward`` result of an unsupported kind.
        ValueError: ``need_labels`` and no labels, or not one label per row of logits.
    """
    if forward is None:
        inputs, labels = split_batch(batch, need_labels=need_labels)
        logits = as_logits(model(**inputs) if isinstance(inputs, dict) else model(inputs))
    else:
        result = forward(model, batch)
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise TypeError(f"forward(model, batch) must return (logits, labels or None), got {type(result).__name__}")
        logits, labels = result
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"forward(model, batch) returned logits of type {type(logits).__name__}, not a tensor")
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise TypeError(f"forward(model, batch) returned labels of type {type(labels).__name__}, not a tensor or None")
        if need_labels and labels is None:
            raise ValueError('objective="fisher" needs labels, but forward(model, batch) returned None for them')
    if logits.dim() == 0:
        raise ValueError("the model returned a scalar: logits need a batch dimension first")
    if labels is not None and labels.shape[:1] != logits.shape[:1]:
        raise ValueError(f"the model returned {logits.shape[0]} rows of logits for {labels.shape[0] if labels.dim() else 0} labels")
    return logits, labels


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], batch: Any) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it, through nested tuples, lists and
    mappings (a mapping comes back as a ``dict``); other entries are kept as they are."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(fn, v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        items = [map_tensors(fn, v) for v in batch]
        if hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*items)
        return tuple(items) if isinstance(batch, tuple) else items
    return batch


def batch_size(batch: Any) -> int | None:
    """The number of samples in ``batch``: the first dimension of its first tensor (depth
    first), or ``None`` when it holds no tensor with a dimension."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        size = batch_size(value)
        if size is not None:
            return size
    return None
