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
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OBJECTIVES",
    "GRANULARITIES",
    "compute_importance",
    "split_batch",
    "check_importance",
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


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    return params


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _objective_batch_mean(logits: torch.Tensor, labels: torch.Tensor | None, objective: str) -> torch.Tensor:
    """The reference code's per-batch objective: mean over the batch."""
    if objective == "fisher":
        return F.cross_entropy(logits, labels)
    # ||f(x)||_2^2 per sample, averaged over the batch (LFSSD reference code).
    return logits.pow(2).sum(dim=1).mean()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


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


def _progress(iterable: Iterable, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    try:
        total = len(iterable)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return tqdm(iterable, total=total, desc=desc, leave=False)


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
            are materialised at once (memory is about ``chunk x #parameters`` floats, see
            ``make bench``). ``None`` (default): 16 on the CPU; on a GPU the largest power of
            two up to 256 whose per-sample gradients take at most a quarter of the free
            GPU memory (``lfssd_tutorial.importance.default_sample_chunk_size``).
        autocast_dtype: ``None`` (default) computes in full float32. A low-precision
            dtype such as ``torch.bfloat16`` runs the forward pass (and so the backward's
            matrix products) under :func:`torch.autocast`; the importances are still
            accumulated in float32. Faster on GPUs, but the values change: measure the
            relative error on your model first (``make bench`` reports it). With
            ``granularity="batch"`` only.
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
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("granularity", granularity, GRANULARITIES)
    if sample_chunk_size is not None and (isinstance(sample_chunk_size, bool) or not isinstance(sample_chunk_size, int)
                                          or sample_chunk_size < 1):
        raise ValueError(f"sample_chunk_size must be None or an int >= 1, got {sample_chunk_size!r}")
    if autocast_dtype is not None and not (isinstance(autocast_dtype, torch.dtype) and autocast_dtype.is_floating_point):
        raise ValueError(f"autocast_dtype must be None or a floating torch.dtype such as torch.bfloat16, got {autocast_dtype!r}")
    if autocast_dtype is not None and granularity == "sample":
        # torch.func's vmap does not compose with autocast for every layer (BatchNorm
        # receives mixed dtypes); per-sample importances stay in float32.
        raise ValueError('autocast_dtype is supported with granularity="batch" only')
    device = torch.device(device) if device is not None else _model_device(model)
    params = _trainable(model)
    if granularity == "sample" and sample_chunk_size is None:
        sample_chunk_size = default_sample_chunk_size(params.values(), device)
    need_labels = objective == "fisher"
    if channels_last and device.type == "cpu":
        _check_cpu_channels_last(model)
    prepare = _input_preparer(device, channels_last)
    amp = _autocast_context(device, autocast_dtype)

    with _EvalMode(model):
        if granularity == "batch":
            acc, count = _batch_importance(model, params, loader, objective, need_labels, prepare, amp, progress)
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
    quarter of the GPU's free memory.

    On an H100 (``benchmarks/gpu_tuning.py``, results in ``results/``) a chunk's peak was
    about 1.25x the parameter bytes per sample for the CIFAR ResNet18, and larger chunks
    were faster all the way to 256: 26x the batch estimator's time at chunk 16, 6.3x at 64,
    3.6x at 256."""
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
    than 8 input channels (per group).

    oneDNN's AVX2 kernel for the weight gradient of such a convolution in NHWC layout writes
    past its workspace (oneDNN issue #6035): with torch 2.14.1 on an AVX2 CPU the gradients
    came out wrong from call to call and the process aborted with heap corruption (e.g. a
    ResNet of width 4, whose downsampling convolution has 4 input channels).
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


def _autocast_context(device: torch.device, dtype: torch.dtype | None):
    """A factory of contexts for the forward pass: autocast to ``dtype``, or nothing."""
    import contextlib

    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _batch_importance(model, params, loader, objective, need_labels, prepare, amp, progress):
    tensors = list(params.values())
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    n_batches = 0
    for batch in _progress(loader, progress, f"importance ({objective}, batch)"):
        inputs, labels = split_batch(batch, need_labels=need_labels)
        if inputs.shape[0] == 0:
            continue
        inputs, labels = prepare(inputs, labels)
        with amp():
            logits = model(inputs)
        # The objective is always evaluated in float32 (autocast only covers the model).
        loss = _objective_batch_mean(logits.float(), labels, objective)
        del logits
        # autograd.grad returns fresh tensors and never touches p.grad.
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        del loss
        _accumulate_(acc, grads, objective)
        # Free this batch's gradients before the next backward pass, so that at most one
        # set of gradients is alive beside the accumulators.
        del grads
        n_batches += 1
    return acc, n_batches


def _accumulate_(acc: list[torch.Tensor], grads, objective: str) -> None:
    """``acc += g**2`` (fisher) or ``acc += |g|`` (l2), fused over all parameters.

    ``grads`` are fresh tensors owned by the caller (``abs`` is taken in place); ``None``
    entries (parameters the objective does not reach) are skipped.
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
    for batch in _progress(loader, progress, f"importance ({objective}, sample)"):
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


# Tensors below this size are handled together (one concatenation, then one operation)
# rather than one by one: for a model of many small tensors the per-operation cost
# dominates. Used by the checks here and by the dampening.
_SMALL_NUMEL = 2**16


def _all_finite_nonnegative(values: Iterable[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite and >= 0, with one synchronisation.

    Per tensor, the smallest and largest elements suffice (one ``aminmax`` pass): NaN
    propagates to both, ``-inf`` and negatives show in the minimum, ``+inf`` in the maximum.
    Small tensors are concatenated (per device) and reduced at once.
    """
    try:
        large, small = [], {}
        for v in values:
            if v.numel() >= _SMALL_NUMEL:
                large.append(v)
            elif v.numel():
                small.setdefault(v.device, []).append(v.detach().reshape(-1).float())
        parts = [torch.cat(group) for group in small.values()] + large
        extremes = [torch.stack(torch.aminmax(v)).float() for v in parts]
        if not extremes:
            return True
        device = extremes[0].device
        both = torch.cat([e.to(device) for e in extremes])
        return bool((torch.isfinite(both) & (both >= 0)).all())
    except RuntimeError:  # an unusual dtype: let the element-wise checks decide
        return False


def check_importance(
    importance: Mapping[str, torch.Tensor],
    model: nn.Module | None = None,
    *,
    name: str = "importance",
) -> None:
    """Validate an importance dict; raise a ``ValueError`` naming the first problem.

    Checks that it is a non-empty mapping of tensors with finite, non-negative values,
    and, when ``model`` is given, that its keys are exactly the names of the model's
    trainable parameters and every shape matches.
    """
    _check_importances([(importance, name)], model)


def _check_importances(
    named: list[tuple[Mapping[str, torch.Tensor], str]], model: nn.Module | None, *, values: bool = True
) -> None:
    """:func:`check_importance` for several ``(importance, name)`` pairs at once: one
    reduction for all their values and one walk over the model's parameters.

    ``values=False`` checks only the types, keys and shapes; the caller then checks the
    values itself (:func:`_name_bad_values` names the offending entry).
    """
    for importance, name in named:
        if not isinstance(importance, Mapping) or len(importance) == 0:
            raise ValueError(f"{name} must be a non-empty dict of tensors, got {type(importance).__name__}")
        for key, value in importance.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name}[{key!r}] is a {type(value).__name__}, not a tensor")
    if values and not _all_finite_nonnegative([v for importance, _ in named for v in importance.values()]):
        _name_bad_values(named)
    if model is None:
        return
    params = _trainable(model)
    for importance, name in named:
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


def _name_bad_values(named: list[tuple[Mapping[str, torch.Tensor], str]]) -> None:
    """Raise a ``ValueError`` naming the first entry with a NaN, inf or negative value, or
    with a value beyond float32's range, in which the package computes (the slow path, run
    only once a fast check has failed)."""
    for importance, name in named:
        for key, value in importance.items():
            if not torch.isfinite(value).all():
                raise ValueError(f"{name}[{key!r}] contains NaN or inf values")
            if value.numel() and value.min() < 0:
                raise ValueError(f"{name}[{key!r}] has negative values; importances are >= 0")
    for importance, name in named:
        for key, value in importance.items():
            if not torch.isfinite(value.float()).all():
                raise ValueError(f"{name}[{key!r}] has values that overflow float32, in which importances are computed")


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
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


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
