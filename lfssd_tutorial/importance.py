"""Per-parameter importance estimators: SSD's Fisher diagonal and LFSSD's l2 sensitivity.

An *importance* is a ``dict`` shaped like ``model.named_parameters()``: one
non-negative float32 tensor per trainable parameter, holding one number per
parameter element.

Three objectives:

``"fisher"`` (SSD)
    The diagonal of the empirical Fisher information: the squared gradient of the
    cross-entropy with the data's own labels.
``"true_fisher"``
    The diagonal of the (true) Fisher information: the squared gradient of the
    cross-entropy with labels drawn from the model's own prediction, in expectation over
    those labels. It needs no labels. ``label_samples=None`` computes the expectation
    exactly (one backward pass per class and sample); ``label_samples=k`` draws ``k``
    labels per input from the model's softmax with a generator seeded by ``seed``.
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

For the true Fisher at batch granularity the exact expectation has a closed form: the
scores of different samples are independent with mean zero, so the expected square of a
batch of ``B`` samples' mean score is ``(1/B^2)`` times the sum of their own Fishers. The
exact batch estimator is therefore a weighted per-sample one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batches import Forward, batch_size, map_tensors, model_logits
from .checks import check_choice, check_importance, trainable_parameters
from .distributed import all_reduce_sums, process_rank
from .importance_info import Importance, ImportanceInfo
from .utils import autocast, progress as progress_bar, resolve_device

__all__ = [
    "OBJECTIVES",
    "GRANULARITIES",
    "compute_importance",
    "batch_objective",
    "accumulate_",
    "default_sample_chunk_size",
]

OBJECTIVES = ("l2", "fisher", "true_fisher")
GRANULARITIES = ("batch", "sample")


def batch_objective(logits: torch.Tensor, labels: torch.Tensor | None,
                    objective: str) -> torch.Tensor:
    """The scalar whose gradient the batch estimator squares (``"fisher"``)
    or takes the absolute value of (``"l2"``): the reference code's
    objective, a mean over the batch.

    ``"fisher"`` (and ``"true_fisher"``, with labels drawn from the model):
    the cross-entropy of class logits ``(batch, classes)`` with ``labels``;
    ``"l2"``: the squared l2 norm of each sample's output, ``||f(x)||_2^2``,
    summed over every dimension but the first (so a regression output
    ``(batch,)`` or sequence logits ``(batch, T, V)`` work too) and averaged
    over the batch (no labels).
    """
    if objective in ("fisher", "true_fisher"):
        return F.cross_entropy(_class_logits(logits, objective), labels)
    return logits.pow(2).reshape(len(logits), -1).sum(dim=1).mean()


def _class_logits(logits: torch.Tensor, objective: str) -> torch.Tensor:
    """``logits`` if they are class logits ``(batch, classes)``, else a ValueError saying what they are."""
    if logits.dim() != 2:
        raise ValueError(
            f"objective={objective!r} needs class logits of shape (batch, classes); the model returned shape "
            f'{tuple(logits.shape)}. objective="l2" takes outputs of any shape (regression outputs, sequence logits)'
        )
    return logits


def accumulate_(acc: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], objective: str, weight: float = 1.0) -> None:
    """Add one batch's gradients to the float32 accumulators, in place: ``acc += weight * g**2``
    (``"fisher"``, ``"true_fisher"``) or ``acc += |g|`` (``"l2"``), fused over all parameters.

    ``grads`` are fresh tensors owned by the caller (the absolute value is taken in place,
    so they are overwritten); ``None`` entries (parameters the objective does not reach)
    are skipped. ``weight`` averages several label draws of the true Fisher.
    """
    used = [(a, g) for a, g in zip(acc, grads) if g is not None]
    if not used:
        return
    a_list = [a for a, _ in used]
    g_list = [g if g.dtype == torch.float32 else g.float() for _, g in used]
    if objective == "l2":
        torch._foreach_abs_(g_list)
        torch._foreach_add_(a_list, g_list)
    else:
        torch._foreach_addcmul_(a_list, g_list, g_list, value=weight)


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
    label_samples: int | None = None,
    seed: int = 0,
    forward: Forward | None = None,
) -> Importance:
    """Estimate one importance value per parameter element over the data in ``loader``.

    Under an initialised :mod:`torch.distributed` process group every process of the group
    must call it, each with its own share of the data, and every process returns the
    importance over all of it (:mod:`lfssd_tutorial.distributed`).

    Args:
        model: the trained network. It is run in eval mode (BatchNorm uses its running
            statistics, dropout is off); each module's train/eval flag is restored
            afterwards. Parameters, buffers and existing ``.grad`` fields are untouched.
        loader: any iterable of batches (a ``DataLoader``, a list, a generator). A batch
            is a tensor of inputs, a tuple/list ``(inputs, ..., labels)``, or a mapping
            whose entries are the model's keyword arguments besides ``"labels"``/``"label"``
            (:mod:`lfssd_tutorial.batches`). The model may return logits, an object with
            ``.logits``, a mapping with ``"logits"`` or a tuple ``(logits, ...)``.
        objective: ``"l2"`` for LFSSD's label-free sensitivity of ``||f(x)||_2^2``,
            ``"fisher"`` for SSD's diagonal empirical Fisher information (needs labels), or
            ``"true_fisher"`` for the diagonal true Fisher information (labels from the
            model; the batches' own labels, if any, are ignored).
        granularity: ``"batch"`` reproduces the authors' estimator (square/abs of the
            batch-mean gradient, averaged over batches); ``"sample"`` squares (abs) each
            sample's own gradient and averages over samples.
        device: where to compute; defaults to the device of the model's parameters.
            The model must already live there.
        progress: show a progress bar over batches.
        sample_chunk_size: with ``granularity="sample"`` (and the exact true Fisher), how
            many per-sample gradients are materialised at once (memory is about
            ``chunk x #parameters`` floats; the exact true Fisher divides the chunk by the
            number of classes, one gradient per class). ``None`` (default):
            :func:`default_sample_chunk_size`.
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
        label_samples: ``"true_fisher"`` only. ``None`` (default): the exact expectation
            over the model's predicted distribution (one backward pass per class and
            sample, at either granularity). ``k``: ``k`` labels drawn per input from the
            model's softmax, each draw's squared gradient weighted ``1/k`` (``k`` backward
            passes per batch, or per sample).
        seed: seeds the label draws of ``label_samples`` (``seed + rank`` in process ``rank``
            of a process group, so the draws differ from a one-process run's).
        forward: how to run the model on a batch of another kind:
            ``forward(model, batch) -> (logits, labels or None)``. At sample granularity it
            is called on one sample at a time (a batch of one) under :func:`torch.func.vmap`.

    Returns:
        An :class:`~lfssd_tutorial.Importance`: the dict ``{parameter name: float32 tensor
        shaped like the parameter}`` for every parameter with ``requires_grad``, on the
        computation device, whose ``info`` records the objective, the granularity,
        ``label_samples``, the parameters' names and shapes, and the numbers of samples and
        (non-empty) batches it was estimated over.

    Raises:
        ValueError: unknown objective or granularity, an empty loader, batches without
            labels for ``"fisher"``, outputs that are not class logits ``(batch, classes)``
            for ``"fisher"``/``"true_fisher"``, or a non-finite importance.
        TypeError: a batch or model output of a kind listed nowhere above.
        RuntimeError: at ``granularity="sample"``, a model :mod:`torch.func` cannot run
            (in-place updates, data-dependent control flow): use ``granularity="batch"``.
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("granularity", granularity, GRANULARITIES)
    if label_samples is not None:
        if objective != "true_fisher":
            raise ValueError(f'label_samples applies to objective="true_fisher" only, not {objective!r}')
        if isinstance(label_samples, bool) or not isinstance(label_samples, int) or label_samples < 1:
            raise ValueError(f"label_samples must be None (exact) or an int >= 1, got {label_samples!r}")
    if sample_chunk_size is not None and (isinstance(sample_chunk_size, bool) or not isinstance(sample_chunk_size, int)
                                          or sample_chunk_size < 1):
        raise ValueError(f"sample_chunk_size must be None or an int >= 1, got {sample_chunk_size!r}")
    if autocast_dtype is not None and not (isinstance(autocast_dtype, torch.dtype) and autocast_dtype.is_floating_point):
        raise ValueError(f"autocast_dtype must be None or a floating torch.dtype such as torch.bfloat16, got {autocast_dtype!r}")
    if autocast_dtype is not None and (granularity == "sample" or (objective == "true_fisher" and label_samples is None)):
        # torch.func's vmap does not compose with autocast for every layer (BatchNorm
        # receives mixed dtypes); per-sample importances stay in float32.
        raise ValueError('autocast_dtype is supported with granularity="batch" only (and not for the exact true Fisher)')
    device = resolve_device(device, model)
    params = trainable_parameters(model)
    draws = None if label_samples is None else torch.Generator(device=device).manual_seed(seed + process_rank())
    exact_true_fisher = objective == "true_fisher" and label_samples is None
    if (granularity == "sample" or exact_true_fisher) and sample_chunk_size is None:
        sample_chunk_size = default_sample_chunk_size(params.values(), device)
    need_labels = objective == "fisher"

    def run(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model_logits(model, batch, forward=forward, need_labels=need_labels)

    if channels_last and device.type == "cpu":
        _check_cpu_channels_last(model)
    prepare = _input_preparer(device, channels_last)

    loader = tally = _Tally(loader)  # counts the samples and batches the importance is estimated over
    with _EvalMode(model):
        if granularity == "batch" and not exact_true_fisher:
            acc, count = _batch_importance(
                model, params, loader, objective, run, prepare, device, autocast_dtype, progress,
                label_samples, draws,
            )
        else:  # per sample; the exact batch true Fisher weights each sample by 1/B^2 (module docstring)
            acc, count = _sample_importance(
                model, params, loader, objective, run, prepare, progress, sample_chunk_size,
                label_samples, draws, per_batch=granularity == "batch",
            )
    count = all_reduce_sums(acc, count)  # over every process of a torch.distributed group, if any
    if count == 0:
        raise ValueError("the loader yielded no data: cannot estimate importance over an empty set")
    torch._foreach_div_(acc, float(count))
    result = dict(zip(params.keys(), acc))
    # Sums of squares or absolute values are >= 0 by construction: only NaN or inf (a
    # model that overflows) can go wrong, and the largest element of each tensor shows it.
    filled = [a for a in acc if a.numel()]
    if filled and not bool(torch.stack(torch._foreach_max(filled)).isfinite().all()):
        check_importance(result, name="computed importance")  # names the first bad entry
    samples, batches = tally.totals(acc[0].device)
    info = ImportanceInfo(objective=objective, granularity=granularity, samples=samples, batches=batches,
                          label_samples=label_samples, parameters={name: tuple(p.shape) for name, p in params.items()})
    return Importance(result, info)


class _Tally:
    """A loader that counts, as they pass, the non-empty batches it yields and their samples."""

    def __init__(self, loader: Iterable):
        self.loader, self.samples, self.batches, self.unsized = loader, 0, 0, 0

    def __iter__(self):
        for batch in self.loader:
            size = batch_size(batch)
            if size != 0:  # empty batches are skipped by the estimators
                self.batches += 1
                self.samples += size or 0
                self.unsized += size is None  # a batch only a forward hook understands
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def totals(self, device: torch.device) -> tuple[int | None, int]:
        """``(samples, batches)`` over every process of a torch.distributed group, if any
        (``samples`` is ``None`` when a batch had no tensor to count them by)."""
        tally = torch.tensor([self.samples, self.batches, self.unsized], dtype=torch.float64, device=device)
        all_reduce_sums([tally], 0)
        samples, batches, unsized = (int(v) for v in tally.tolist())
        return (None if unsized else samples), batches


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
    """Move every tensor of a batch to ``device`` (4-D ones in channels_last if asked)."""

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if channels_last and tensor.dim() == 4:
            return tensor.to(device, memory_format=torch.channels_last, non_blocking=True)
        return tensor.to(device, non_blocking=True)

    return lambda batch: map_tensors(move, batch)


def _draw_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per row of ``logits``, drawn from its softmax with ``generator``."""
    probs = torch.softmax(_class_logits(logits, "true_fisher").detach().float(), dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _batch_importance(model, params, loader, objective, run, prepare, device, autocast_dtype, progress,
                      label_samples, draws):
    tensors = list(params.values())
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    n_batches = 0
    for batch in progress_bar(loader, progress, f"importance ({objective}, batch)"):
        batch = prepare(batch)
        if batch_size(batch) == 0:
            continue
        with autocast(device, autocast_dtype):
            logits, labels = run(model, batch)
        # The objective is always evaluated in float32 (autocast only covers the model).
        logits = logits.float()
        if objective == "true_fisher":  # k label draws from the model, each weighted 1/k
            for draw in range(label_samples):
                loss = batch_objective(logits, _draw_labels(logits, draws), objective)
                grads = torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=draw < label_samples - 1)
                del loss
                accumulate_(acc, grads, objective, weight=1.0 / label_samples)
                del grads
            del logits
            n_batches += 1
            continue
        loss = batch_objective(logits, labels, objective)
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


class _ModelOnBatch(nn.Module):
    """``run(model, batch)`` as a module holding ``model``, so that :func:`torch.func.functional_call`
    can swap the model's weights for the ones it is given, whatever ``run`` does with the model."""

    def __init__(self, model: nn.Module, run):
        super().__init__()
        self.model = model
        self.run = run

    def forward(self, batch):
        return self.run(self.model, batch)


def _rows(batch, start: int, stop: int):
    """Samples ``start:stop`` of every tensor of a batch."""
    return map_tensors(lambda t: t[start:stop], batch)


def _per_sample(transform, *args):
    """Call a :mod:`torch.func` transform of the model; when torch.func cannot run the model, say what to do."""
    try:
        return transform(*args)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        raise RuntimeError(
            'granularity="sample" takes per-sample gradients with torch.func (vmap over grad), which failed on this '
            f"model: {error}\nPer-sample granularity needs a torch.func-compatible model (no in-place updates of "
            "tensors it does not own, no Python control flow or .item() on tensor values); "
            'granularity="batch" runs any model.'
        ) from error


def _sample_importance(model, params, loader, objective, run, prepare, progress, chunk, label_samples=None,
                       draws=None, per_batch=False):
    """Per-sample importances, summed; returns them with the count to divide by.

    Every tensor of a batch is cut into samples (:func:`torch.func.vmap` over its first
    dimension), and ``run`` is given each sample as a batch of one.
    With ``per_batch`` (the exact true Fisher at batch granularity) each sample of a batch
    of ``B`` is weighted ``1/B^2`` and the count is the number of batches.
    """
    from torch.func import functional_call, grad, jacrev, vmap

    names = list(params.keys())
    detached = {n: p.detach() for n, p in params.items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    fixed = {f"model.{n}": t for n, t in {**frozen, **buffers}.items()}
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in detached.values()]
    on_batch = _ModelOnBatch(model, run)

    def logits_of(trainable, sample):  # vmap takes the batch dimension away: give run a batch of one
        one = map_tensors(lambda t: t.unsqueeze(0), sample)
        return functional_call(on_batch, ({f"model.{n}": t for n, t in trainable.items()}, fixed), (one,))

    def per_sample_objective(trainable, sample, drawn=None):
        logits, labels = logits_of(trainable, sample)
        return batch_objective(logits.float(), labels if drawn is None else drawn.unsqueeze(0), objective)

    def log_probs(trainable, sample):  # the exact true Fisher: every class's log-probability, and the probabilities
        logits, _ = logits_of(trainable, sample)
        logp = torch.log_softmax(_class_logits(logits, objective).float(), dim=1)[0]
        return logp, logp.detach().exp()

    exact = objective == "true_fisher" and label_samples is None
    if exact:
        grad_fn = vmap(jacrev(log_probs, has_aux=True), in_dims=(None, 0), randomness="same")
    elif objective == "true_fisher":
        grad_fn = vmap(grad(per_sample_objective), in_dims=(None, 0, 0), randomness="same")
    else:
        grad_fn = vmap(grad(per_sample_objective), in_dims=(None, 0), randomness="same")

    def add(grads: dict, weight: float) -> None:
        # fresh per-sample gradients (chunk x parameter): square / abs them in place (fused
        # over all parameters), so no second chunk-sized temporary is allocated, then add
        # their sums over the chunk.
        gs = [grads[name].float() for name in names]
        grads.clear()
        if objective == "l2":
            torch._foreach_abs_(gs)
        else:
            torch._foreach_mul_(gs, gs)
        torch._foreach_add_(acc, [gi.sum(0) for gi in gs], alpha=weight)

    count = 0
    for batch in progress_bar(loader, progress, f"importance ({objective}, sample)"):
        batch = prepare(batch)
        size = batch_size(batch)
        if size is None:
            raise TypeError(f'granularity="sample" needs batches holding tensors with a batch dimension, got {type(batch).__name__}')
        if size == 0:
            continue
        if exact and count == 0:  # one gradient per class and sample: a chunk of as many gradients
            with torch.no_grad():
                chunk = max(1, chunk // _class_logits(run(model, _rows(batch, 0, 1))[0], objective).shape[1])
        weight = 1.0 / size**2 if per_batch else 1.0
        for start in range(0, size, chunk):
            part = _rows(batch, start, start + chunk)
            if exact:
                # d log p_c / d theta for every class c (chunk x classes x parameter), weighted
                # by sqrt(p_c) so that the squares sum to sum_c p_c (d log p_c)^2
                jac, probs = _per_sample(grad_fn, detached, part)
                root = probs.sqrt()
                add({n: (g * root.view(*root.shape, *([1] * (g.dim() - 2)))).flatten(0, 1) for n, g in jac.items()}, weight)
                del jac
                continue
            if objective == "true_fisher":
                with torch.no_grad():
                    logits = torch.cat([run(model, _rows(part, i, i + 1))[0] for i in range(batch_size(part))])
                for _ in range(label_samples):
                    add(_per_sample(grad_fn, detached, part, _draw_labels(logits, draws)), weight / label_samples)
            else:
                add(_per_sample(grad_fn, detached, part), weight)
        count += 1 if per_batch else size
    return acc, count

