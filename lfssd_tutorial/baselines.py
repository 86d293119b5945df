"""The baselines SSD and LFSSD are compared with, as in the papers' protocol.

Every baseline is a function ``method(model, loaders, options) -> MethodResult`` (see
:mod:`lfssd_tutorial.options`) that leaves ``model`` untouched and returns a new,
unlearned model; the hyperparameters are ``options.baselines``
(a :class:`~lfssd_tutorial.options.BaselineConfig`):

=================  =====================================================================
``original``       the trained model itself (the "Baseline" row of the papers' tables)
``retrain``        a freshly initialised model trained on ``D_r`` with the original recipe
``retrain_head``   the authors' "retrain": only the final linear layer is re-initialised,
                   the rest starts from the original's weights; then trained on ``D_r``
                   at lr 0.01. It is *not* a retrain from scratch and is named accordingly.
``finetune``       5 epochs on ``D_r``, SGD (momentum 0.9, weight decay 5e-4) at lr 0.02
``bad_teacher``    1 epoch of KL distillation, Adam 1e-4, batch 256, on 30% of ``D_r``
                   (teacher: the original) plus ``D_f`` (teacher: a randomly initialised model)
``amnesiac``       ``D_f`` relabelled at random plus ``D_r``, 3 epochs, Adam 1e-4, batch 128
``unsir``          error-maximising noise (25 steps) for the forget labels; 1 impair epoch
                   (80 copies of the noise + 500 images of each retained class, batch 32)
                   and 1 repair epoch (those images, batch 128), Adam 1e-4
=================  =====================================================================

The defaults are the authors' settings; :mod:`lfssd_tutorial.reference` lists them beside
the reference code's values.

SSD and LFSSD, with the same signature, are in :mod:`lfssd_tutorial.methods`, which also
holds the registry of every method. The data arrive as a
:class:`~lfssd_tutorial.request.SplitLoaders`. Datasets are always streamed (subsets and
wrappers of the underlying datasets), never materialised as lists of tensors.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from .data import Relabelled, make_loader
from .batches import split_batch
from .options import MethodOptions, MethodResult
from .request import SplitLoaders
from .training import amp_dtype, train_model
from .utils import autocast, progress as progress_bar, resolve_device

__all__ = [
    "original",
    "retrain",
    "retrain_head",
    "finetune",
    "bad_teacher",
    "amnesiac",
    "unsir",
    "random_other_labels",
    "reset_parameters",
]


# ---------------------------------------------------------------------------- helpers


def _loader_like(ref: DataLoader, dataset: Dataset, *, seed: int, batch_size: int | None = None) -> DataLoader:
    """A shuffled loader over ``dataset`` with the workers and pinning of ``ref``, and its
    batch size unless ``batch_size`` is given.

    Its workers are not persistent: each baseline iterates its loaders only a few times.
    """
    return make_loader(dataset, batch_size=batch_size or ref.batch_size, shuffle=True, seed=seed, num_workers=ref.num_workers,
                       pin_memory=ref.pin_memory, persistent_workers=False)


def _fit(model: nn.Module, loader, epochs: int, opt: torch.optim.Optimizer, device: torch.device, amp: bool, progress: bool,
         desc: str) -> nn.Module:
    """Cross-entropy training at the optimiser's constant rate (the reference's
    ``fit_one_unlearning_cycle`` with Adam, and its ``fit_one_cycle`` without milestones with SGD)."""
    model.to(device).train()
    for _ in progress_bar(range(epochs), progress, desc):
        for batch in loader:
            x, y = split_batch(batch, need_labels=True)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp_dtype(device, amp)):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def _fit_adam(model: nn.Module, loader, epochs: int, lr: float, device: torch.device, amp: bool, progress: bool, desc: str) -> nn.Module:
    """:func:`_fit` with Adam at ``lr`` (no weight decay)."""
    return _fit(model, loader, epochs, torch.optim.Adam(model.parameters(), lr=lr), device, amp, progress, desc)


def _per_class_subset(dataset: Dataset, labels: np.ndarray, per_class: int, seed: int) -> Subset:
    """Up to ``per_class`` samples of each label of ``labels`` (``dataset``'s), drawn with ``seed``, in dataset order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.append(members if len(members) <= per_class else rng.choice(members, size=per_class, replace=False))
    return Subset(dataset, np.sort(np.concatenate(chosen)).tolist())


def _random_subset(dataset: Dataset, fraction: float, seed: int) -> Subset:
    n = len(dataset)
    k = max(1, int(round(n * fraction)))
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    return Subset(dataset, idx.tolist())


def reset_parameters(model: nn.Module) -> nn.Module:
    """Re-initialise every submodule that has ``reset_parameters`` (in place) and return it."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    return model


def _fresh_model(model: nn.Module, options: MethodOptions) -> nn.Module:
    """``options.model_factory()``, or a copy of ``model`` with every layer re-initialised."""
    return options.model_factory() if options.model_factory is not None else reset_parameters(copy.deepcopy(model))


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to re-initialise")
    return linears[-1]


def random_other_labels(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """For each label, a uniformly random *different* label in ``[0, num_classes)``."""
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, num_classes, size=len(labels))
    return (np.asarray(labels) + shift) % num_classes


# ---------------------------------------------------------------------------- methods


def original(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """The trained model, unchanged (a copy): the papers' "Baseline" row."""
    return MethodResult(copy.deepcopy(model))


def retrain(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """Retrain from scratch: a freshly initialised model trained on ``D_r`` (the gold standard).

    ``options.model_factory`` builds the fresh network (with the architecture's own
    initialisation); without it, a copy of ``model`` has every layer's
    ``reset_parameters()`` called. No weight of ``model`` is reused. Trained with
    ``options.baselines.retrain`` on ``loaders.retain_train`` (augmented, shuffled); on CUDA
    in channels-last memory format.
    """
    device = resolve_device(options.device, model)
    fresh = _fresh_model(model, options)
    if device.type == "cuda":
        fresh = fresh.to(memory_format=torch.channels_last)
    return MethodResult(train_model(fresh, loaders.retain_train, options.baselines.retrain, device=device, progress=options.progress))


def retrain_head(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """The authors' "retrain": re-initialise only the last linear layer, then train on ``D_r``.

    All other weights start from the *original* model, which has seen ``D_f``; this is
    therefore not a retrain from scratch. Provided to reproduce the reference code: its
    recipe is the original's at ``retrain_head_lr`` (0.01). The reference's warm-up, which
    overshoots to twice that rate over two epochs, is not reproduced.
    """
    device = resolve_device(options.device, model)
    student = copy.deepcopy(model)
    _last_linear(student).reset_parameters()
    recipe = dataclasses.replace(options.baselines.retrain, lr=options.baselines.retrain_head_lr)
    return MethodResult(train_model(student, loaders.retain_train, recipe, device=device, progress=options.progress))


def finetune(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """Fine-tune on ``D_r`` only: ``finetune_epochs`` (5) epochs of SGD at a constant
    ``finetune_lr`` (0.02), momentum ``finetune_momentum`` (0.9), weight decay
    ``finetune_weight_decay`` (5e-4), on the unaugmented ``D_r`` shuffled, at the loaders' batch size."""
    config = options.baselines
    device = resolve_device(options.device, model)
    loader = _loader_like(loaders.retain, loaders.retain.dataset, seed=options.seed)
    student = copy.deepcopy(model)
    opt = torch.optim.SGD(student.parameters(), lr=config.finetune_lr, momentum=config.finetune_momentum,
                          weight_decay=config.finetune_weight_decay)
    return MethodResult(_fit(student, loader, config.finetune_epochs, opt, device, config.amp, options.progress, "finetune"))


def bad_teacher(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """Bad Teacher (Chundawat et al. 2023): distil from a competent and an incompetent teacher.

    The student (a copy of the original) matches, by KL divergence at temperature
    ``bad_teacher_temperature``, the original model on a random ``bad_teacher_retain_fraction``
    (30%) of ``D_r`` and a randomly initialised model (``options.model_factory``) on ``D_f``;
    ``bad_teacher_epochs`` (1) epoch of Adam at ``bad_teacher_lr`` (1e-4), batches of
    ``bad_teacher_batch_size`` (256). The KL divergence is averaged over the batch (the
    reference averages over batch and classes, a factor ``1/classes`` that Adam's
    normalised steps all but ignore).
    """
    config, seed = options.baselines, options.seed
    device = resolve_device(options.device, model)
    amp = amp_dtype(device, config.amp)
    student = copy.deepcopy(model).to(device)
    competent = copy.deepcopy(model).to(device).eval()
    incompetent = _fresh_model(model, options).to(device).eval()
    retain_part = _random_subset(loaders.retain.dataset, config.bad_teacher_retain_fraction, seed)
    forget_part = loaders.forget.dataset
    # The label of each sample says which teacher it follows: 0 the competent, 1 the incompetent.
    data = ConcatDataset([Relabelled(retain_part, np.zeros(len(retain_part))), Relabelled(forget_part, np.ones(len(forget_part)))])
    loader = _loader_like(loaders.retain, data, seed=seed, batch_size=config.bad_teacher_batch_size)
    opt = torch.optim.Adam(student.parameters(), lr=config.bad_teacher_lr)
    t = config.bad_teacher_temperature
    student.train()
    for _ in progress_bar(range(config.bad_teacher_epochs), options.progress, "bad teacher"):
        for x, is_forget in loader:
            x = x.to(device, non_blocking=True)
            is_forget = is_forget.to(device).float().unsqueeze(1)
            with torch.no_grad(), autocast(device, amp):
                good = F.softmax(competent(x).float() / t, dim=1)
                bad = F.softmax(incompetent(x).float() / t, dim=1)
            target = is_forget * bad + (1 - is_forget) * good
            with autocast(device, amp):
                out = student(x)
            loss = F.kl_div(F.log_softmax(out.float() / t, dim=1), target, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    student.eval()
    return MethodResult(student)


def amnesiac(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """Amnesiac unlearning (Graves et al. 2021): ``D_f`` with random wrong labels plus ``D_r``.

    Every forget sample gets a label drawn uniformly from the other classes; the copy of
    the model trains on that and ``D_r`` for ``amnesiac_epochs`` (3) epochs with Adam at
    ``amnesiac_lr`` (1e-4), batches of ``amnesiac_batch_size`` (128).
    """
    config, seed = options.baselines, options.seed
    device = resolve_device(options.device, model)
    if loaders.num_classes < 2:
        raise ValueError("amnesiac needs at least two classes")
    wrong = random_other_labels(loaders.forget_labels, loaders.num_classes, seed)
    data = ConcatDataset([Relabelled(loaders.retain.dataset), Relabelled(loaders.forget.dataset, wrong)])
    loader = _loader_like(loaders.retain, data, seed=seed, batch_size=config.amnesiac_batch_size)
    student = _fit_adam(copy.deepcopy(model), loader, config.amnesiac_epochs, config.amnesiac_lr, device, config.amp,
                        options.progress, "amnesiac")
    return MethodResult(student)


def unsir(model: nn.Module, loaders: SplitLoaders, options: MethodOptions) -> MethodResult:
    """UNSIR (Tarun et al. 2023): error-maximising noise, then impair and repair.

    For every distinct label among ``D_f`` a batch of ``unsir_noise_batch`` (32) noise
    images is optimised (Adam, lr ``unsir_noise_lr`` 0.1, ``unsir_noise_steps`` 25 steps,
    model frozen in eval mode) to *maximise* the cross-entropy w.r.t. that label, with the
    reference's ``0.1 * mean ||noise||^2`` penalty. The noisy set is ``unsir_noise_copies``
    (80) copies of the noise (of its first ``unsir_noise_kept`` images per label, if set).
    The retained images are up to ``unsir_samples_per_class`` (500) of each class of
    ``D_r``. Impair: one epoch of Adam (``unsir_impair_lr`` 1e-4) on the noise plus those
    images, batch ``unsir_batch_size`` (32). Repair: one epoch (``unsir_repair_lr`` 1e-4)
    on the retained images, batch ``unsir_repair_batch_size`` (128).
    """
    config, seed, progress = options.baselines, options.seed, options.progress
    device = resolve_device(options.device, model)
    student = copy.deepcopy(model).to(device)
    x0, _ = split_batch(next(iter(loaders.forget)), need_labels=False)
    shape = tuple(x0.shape[1:])
    targets = np.unique(loaders.forget_labels)
    batch = config.unsir_noise_batch
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(targets) * batch, *shape), generator=generator).to(device).requires_grad_(True)
    noise_labels = torch.from_numpy(np.repeat(targets, batch)).long()
    opt = torch.optim.Adam([noise], lr=config.unsir_noise_lr)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    y = noise_labels.to(device)
    for _ in progress_bar(range(config.unsir_noise_steps), progress, "UNSIR noise"):
        loss = -F.cross_entropy(student(noise), y) + 0.1 * noise.pow(2).sum(dim=tuple(range(1, noise.dim()))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in student.parameters():
        p.requires_grad_(True)
    kept = torch.arange(len(noise_labels)) % batch < (config.unsir_noise_kept or batch)
    copies = config.unsir_noise_copies
    images, labels = noise.detach().cpu()[kept], noise_labels[kept]
    noise_set = Relabelled(TensorDataset(images.repeat(copies, *([1] * len(shape))), labels.repeat(copies)))
    retain_part = _per_class_subset(loaders.retain.dataset, loaders.retain_labels, config.unsir_samples_per_class, seed)
    impair = _loader_like(loaders.retain, ConcatDataset([noise_set, Relabelled(retain_part)]), seed=seed,
                          batch_size=config.unsir_batch_size)
    repair = _loader_like(loaders.retain, retain_part, seed=seed + 1, batch_size=config.unsir_repair_batch_size)
    _fit_adam(student, impair, 1, config.unsir_impair_lr, device, config.amp, progress, "UNSIR impair")
    return MethodResult(_fit_adam(student, repair, 1, config.unsir_repair_lr, device, config.amp, progress, "UNSIR repair"))
