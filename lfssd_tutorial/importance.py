"""Per-parameter importance estimators: SSD's Fisher diagonal and LFSSD's l2 sensitivity.

An *importance* is a ``dict`` shaped like ``model.named_parameters()``: one
non-negative float32 tensor per trainable parameter, holding one number per
parameter element.

Two objectives:

``"fisher"`` (SSD)
    The diagonal of the empirical Fisher information: the squared gradient of the
    cross-entropy with the data's own labels.
``"l2"`` (LFSSD, MAS)
    The absolute gradient of the squared l2 norm of the model's output (the logits),
    ``||f(x)||_2^2``. It needs no labels.

Two granularities:

``"batch"``
    The reference code's semantics: square (or take the absolute value of) the
    gradient of the *batch-mean* objective and average over the number of batches.
    The values depend on the batch size and on which samples share a batch.
``"sample"``
    Square (or abs) of *each sample's* gradient, averaged over samples: the textbook
    estimator, independent of batching. Per-sample gradients come from
    :func:`torch.func.vmap` over :func:`torch.func.grad`, in chunks of
    ``sample_chunk_size`` samples to bound memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_choice, check_importance, trainable_parameters
from .utils import atomic_save, autocast, progress as progress_bar, resolve_device

__all__ = [
    "OBJECTIVES",
    "GRANULARITIES",
    "compute_importance",
    "batch_objective",
    "accumulate_",
    "default_sample_chunk_size",
    "split_batch",
    "save_importance",
    "load_importance",
]

OBJECTIVES = ("l2", "fisher")
GRANULARITIES = ("batch", "sample")

_FORMAT = "lfssd-importance"
_FORMAT_VERSION = 1


def split_batch(batch: Any, *, need_labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(inputs, labels)`` from one batch of a loader.

    A batch is either a tensor (inputs only) or a tuple/list whose first element is
    the input and whose last element is the label, which covers ``(x, y)`` and the
    reference code's ``(x, fine_label, coarse_label)``.

    Raises:
        TypeError: the batch, its input or its label is not a tensor.
        ValueError: labels are needed but the batch carries none.
    """
    if isinstance(batch, torch.Tensor):
        inputs, labels = batch, None
    elif isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("the loader yielded an empty tuple/list as a batch")
        inputs = batch[0]
        labels = batch[-1] if len(batch) >= 2 else None
    else:
        raise TypeError(
            "a batch must be a tensor of inputs or a tuple/list (inputs, ..., labels); "
            f"the loader yielded {type(batch).__name__}"
        )
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"the batch's inputs must be a tensor, got {type(inputs).__name__}")
    if labels is not None and not isinstance(labels, torch.Tensor):
        raise TypeError(f"the batch's labels must be a tensor, got {type(labels).__name__}")
    if need_labels and labels is None:
        raise ValueError(
            'objective="fisher" needs labels, but the loader yields batches without them '
            "(a bare tensor or a 1-tuple). Use objective=\"l2\" (LFSSD) for unlabelled data, "
            "or yield (inputs, labels)."
        )
    if labels is not None and labels.shape[:1] != inputs.shape[:1]:
        raise ValueError(
            f"the batch has {inputs.shape[0]} inputs but {labels.shape[0] if labels.dim() else 0} labels"
        )
    return inputs, labels


def batch_objective(logits: torch.Tensor, labels: torch.Tensor | None, objective: str) -> torch.Tensor:
    """The scalar whose gradient the batch estimator squares (``"fisher"``) or takes the
    absolute value of (``"l2"``): the reference code's objective, a mean over the batch.

    ``"fisher"``: the cross-entropy of ``logits`` with ``labels``; ``"l2"``: the squared l2
    norm of each sample's logits, ``||f(x)||_2^2``, averaged over the batch (no labels).
    """
    if objective == "fisher":
        return F.cross_entropy(logits, labels)
    return logits.pow(2).sum(dim=1).mean()


def accumulate_(acc: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], objective: str) -> None:
    """Add one batch's gradients to the float32 accumulators, in place: ``acc += g**2``
    (``"fisher"``) or ``acc += |g|`` (``"l2"``), fused over all parameters.

    ``grads`` are fresh tensors owned by the caller (the absolute value is taken in place,
    so they are overwritten); ``None`` entries (parameters the objective does not reach)
    are skipped.
    """
    used = [(a, g) for a, g in zip(acc, grads) if g is not None]
    if not used:
        return
    a_list = [a for a, _ in used]
    g_list = [g if g.dtype == torch.float32 else g.float() for _, g in used]
    if objective == "fisher":
        torch._foreach_addcmul_(a_list, g_list, g_list)
    else:
        torch._foreach_abs_(g_list)
        torch._foreach_add_(a_list, g_list)


class _EvalMode:
    """Put every module in eval mode and restore each module's own flag on exit."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def compute_importance(
    model: nn.Module,
    loader: Iterable,
    *,
    objective: str,
    granularity: str = "batch",
    device: str | torch.device | None = None,
    progress: bool = False,
    sample_chunk_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """Estimate one importance value per parameter element over the data in ``loader``.

    Args:
        model: the trained network. It is run in eval mode (BatchNorm uses its running
            statistics, dropout is off); each module's train/eval flag is restored
            afterwards. Parameters, buffers and existing ``.grad`` fields are untouched.
        loader: any iterable of batches (a ``DataLoader``, a list, a generator). A batch
            is a tensor of inputs, or a tuple/list ``(inputs, ..., labels)``.
        objective: ``"l2"`` for LFSSD's label-free sensitivity of ``||f(x)||_2^2``, or
            ``"fisher"`` for SSD's diagonal empirical Fisher information (needs labels).
        granularity: ``"batch"`` reproduces the authors' estimator (square/abs of the
            batch-mean gradient, averaged over batches); ``"sample"`` squares (abs) each
            sample's own gradient and averages over samples.
        device: where to compute; defaults to the device of the model's parameters.
            The model must already live there.
        progress: show a progress bar over batches.
        sample_chunk_size: with ``granularity="sample"``, how many per-sample gradients
            are materialised at once (memory is about ``chunk x #parameters`` floats).
            ``None`` (default): :func:`default_sample_chunk_size`.
        autocast_dtype: ``None`` (default) computes in full float32. A low-precision
            dtype such as ``torch.bfloat16`` runs the forward pass (and so the backward's
            matrix products) under :func:`torch.autocast`; the importances are still
            accumulated in float32. The values change with the precision: check the
            relative error on your model first. With ``granularity="batch"`` only.
        channels_last: pass 4-D input batches in ``torch.channels_last`` memory format.
            On the CPU it is refused for a model with a strided 1x1 convolution of fewer
            than 8 input channels, whose CPU kernels corrupt memory (oneDNN issue #6035).
            Pair it with ``model.to(memory_format=torch.channels_last)``; the values are
            the same up to float rounding.

    Returns:
        ``{parameter name: float32 tensor shaped like the parameter}`` for every parameter
        with ``requires_grad``, on the computation device.

    Raises:
        ValueError: unknown objective or granularity, an empty loader, batches without
            labels for ``"fisher"``, or a non-finite importance.
        TypeError: the loader yields something other than tensors.
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("granularity", granularity, GRANULARITIES)
    if sample_chunk_size is not None and (isinstance(sample_chunk_size, bool) or not isinstance(sample_chunk_size, int)
                                          or sample_chunk_size < 1):
        raise ValueError(f"sample_chunk_size must be None or an int >= 1, got {sample_chunk_size!r}")
    if autocast_dtype is not None and not (isinstance(autocast_dtype, torch.dtype) and autocast_dtype.is_floating_point):
        raise ValueError(f"autocast_dtype must be None or a floating torch.dtype such as torch.bfloat16, got {autocast_dtype!r}")
    if autocast_dtype is not None and granularity == "sample":
        # torch.func's vmap does not compose with autocast for every layer (BatchNorm
        # receives mixed dtypes); per-sample importances stay in float32.
        raise ValueError('autocast_dtype is supported with granularity="batch" only')
    device = resolve_device(device, model)
    params = trainable_parameters(model)
    if granularity == "sample" and sample_chunk_size is None:
        sample_chunk_size = default_sample_chunk_size(params.values(), device)
    need_labels = objective == "fisher"
    if channels_last and device.type == "cpu":
        _check_cpu_channels_last(model)
    prepare = _input_preparer(device, channels_last)

    with _EvalMode(model):
        if granularity == "batch":
            acc, count = _batch_importance(
                model, params, loader, objective, need_labels, prepare, device, autocast_dtype, progress
            )
        else:
            acc, count = _sample_importance(
                model, params, loader, objective, need_labels, prepare, progress, sample_chunk_size
            )
    if count == 0:
        raise ValueError("the loader yielded no data: cannot estimate importance over an empty set")
    torch._foreach_div_(acc, float(count))
    result = dict(zip(params.keys(), acc))
    # Sums of squares or absolute values are >= 0 by construction: only NaN or inf (a
    # model that overflows) can go wrong, and the largest element of each tensor shows it.
    filled = [a for a in acc if a.numel()]
    if filled and not bool(torch.stack(torch._foreach_max(filled)).isfinite().all()):
        check_importance(result, name="computed importance")  # names the first bad entry
    return result


_CPU_SAMPLE_CHUNK = 16
_MAX_SAMPLE_CHUNK = 256


def default_sample_chunk_size(params: Iterable[torch.Tensor], device: str | torch.device) -> int:
    """The per-sample estimator's chunk when none is given: 16 on the CPU; on a GPU the
    largest power of two <= 256 with ``chunk x 1.5 x (float32 parameter bytes)`` within a
    quarter of the GPU's free memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return _CPU_SAMPLE_CHUNK
    per_sample = 3 * sum(p.numel() * 4 for p in params) // 2
    free, _ = torch.cuda.mem_get_info(device)
    chunk = 1
    while chunk * 2 <= _MAX_SAMPLE_CHUNK and chunk * 2 * per_sample <= free // 4:
        chunk *= 2
    return chunk


def _check_cpu_channels_last(model: nn.Module) -> None:
    """Refuse channels_last on the CPU for a model with a strided 1x1 convolution of fewer
    than 8 input channels (per group): the CPU kernels for the weight gradient of such a
    convolution in channels_last layout write past their workspace (oneDNN issue #6035).
    """
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Conv2d)
            and tuple(module.kernel_size) == (1, 1)
            and max(module.stride) > 1
            and module.in_channels // module.groups < 8
        ):
            raise ValueError(
                f"channels_last=True on the CPU with {name!r} (a 1x1 convolution of stride {tuple(module.stride)} and "
                f"{module.in_channels // module.groups} input channels per group): the CPU kernels for its gradient in "
                "channels_last layout corrupt memory (oneDNN issue #6035); use channels_last=False on the CPU"
            )


def _input_preparer(device: torch.device, channels_last: bool):
    """Move a batch's inputs and labels to ``device`` (inputs in channels_last if asked)."""

    def prepare(inputs, labels):
        if channels_last and inputs.dim() == 4:
            inputs = inputs.to(device, memory_format=torch.channels_last, non_blocking=True)
        else:
            inputs = inputs.to(device, non_blocking=True)
        if labels is not None:
            labels = labels.to(device, non_blocking=True)
        return inputs, labels

    return prepare


def _batch_importance(model, params, loader, objective, need_labels, prepare, device, autocast_dtype, progress):
    tensors = list(params.values())
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    n_batches = 0
    for batch in progress_bar(loader, progress, f"importance ({objective}, batch)"):
        inputs, labels = split_batch(batch, need_labels=need_labels)
        if inputs.shape[0] == 0:
            continue
        inputs, labels = prepare(inputs, labels)
        with autocast(device, autocast_dtype):
            logits = model(inputs)
        # The objective is always evaluated in float32 (autocast only covers the model).
        loss = batch_objective(logits.float(), labels, objective)
        del logits
        # autograd.grad returns fresh tensors and never touches p.grad.
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        del loss
        accumulate_(acc, grads, objective)
        # Free this batch's gradients before the next backward pass, so that at most one
        # set of gradients is alive beside the accumulators.
        del grads
        n_batches += 1
    return acc, n_batches


def _sample_importance(model, params, loader, objective, need_labels, prepare, progress, chunk):
    from torch.func import functional_call, grad, vmap

    names = list(params.keys())
    detached = {n: p.detach() for n, p in params.items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in detached.values()]

    def per_sample_objective(trainable, x, y):
        out = functional_call(model, ({**trainable, **frozen}, buffers), (x.unsqueeze(0),))
        if objective == "fisher":
            return F.cross_entropy(out, y.unsqueeze(0))
        return out.pow(2).sum()

    if objective == "fisher":
        grad_fn = vmap(grad(per_sample_objective), in_dims=(None, 0, 0), randomness="same")
    else:
        grad_fn = vmap(
            grad(lambda t, x: per_sample_objective(t, x, None)), in_dims=(None, 0), randomness="same"
        )

    n_samples = 0
    for batch in progress_bar(loader, progress, f"importance ({objective}, sample)"):
        inputs, labels = split_batch(batch, need_labels=need_labels)
        inputs, labels = prepare(inputs, labels)
        for start in range(0, inputs.shape[0], chunk):
            x = inputs[start : start + chunk]
            if objective == "fisher":
                g = grad_fn(detached, x, labels[start : start + chunk])
            else:
                g = grad_fn(detached, x)
            # g holds fresh per-sample gradients (chunk x parameter): square / abs them in
            # place (fused over all parameters), so no second chunk-sized temporary is
            # allocated, then add their sums over the chunk.
            gs = [g[name].float() for name in names]
            del g
            if objective == "fisher":
                torch._foreach_mul_(gs, gs)
            else:
                torch._foreach_abs_(gs)
            torch._foreach_add_(acc, [gi.sum(0) for gi in gs])
            del gs
            n_samples += x.shape[0]
    return acc, n_samples


def save_importance(
    importance: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str | int | float | bool] | None = None,
) -> None:
    """Save an importance dict to ``path`` (a plain tensor file, safe to load).

    ``metadata`` (e.g. objective, granularity, dataset) is stored beside it; values must
    be strings, numbers or booleans. The file is written atomically.
    """
    check_importance(importance)
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(v, (str, int, float, bool)):
            raise TypeError(f"metadata[{k!r}] must be a str, int, float or bool, got {type(v).__name__}")
    payload = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "metadata": meta,
        "importance": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in importance.items()},
    }
    atomic_save(payload, path)


def load_importance(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    map_location: str | torch.device = "cpu",
    with_metadata: bool = False,
) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load an importance saved by :func:`save_importance` (``weights_only=True``).

    When ``model`` is given, the keys and shapes are checked against its trainable
    parameters. With ``with_metadata=True`` returns ``(importance, metadata)``.
    """
    payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)} is not an importance file written by save_importance")
    importance = dict(payload["importance"])
    check_importance(importance, model, name=f"importance loaded from {os.fspath(path)}")
    if with_metadata:
        return importance, dict(payload.get("metadata", {}))
    return importance
