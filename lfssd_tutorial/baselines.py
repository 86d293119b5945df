"""The baselines SSD and LFSSD are compared with, as in the papers' protocol.

Every method is a function ``method(model, loaders, config, *, device, progress, seed)``
that leaves ``model`` untouched and returns a new, unlearned model:

=================  =====================================================================
``original``       the trained model itself (the "Baseline" row of the papers' tables)
``retrain``        a freshly initialised model trained on ``D_r`` with the original recipe
``retrain_head``   the authors' "retrain": only the final linear layer is re-initialised,
                   the rest starts from the original's weights; then trained on ``D_r``.
                   It is *not* a retrain from scratch and is named accordingly.
``finetune``       5 epochs on ``D_r`` with Adam, lr 0.02 (the reference settings)
``bad_teacher``    1 epoch of KL distillation, Adam 1e-4, on 30% of ``D_r`` (teacher: the
                   original) plus ``D_f`` (teacher: a randomly initialised model)
``amnesiac``       ``D_f`` relabelled at random plus ``D_r``, 3 epochs, Adam 1e-4
``unsir``          error-maximising noise learned for the forget labels; 1 impair epoch
                   (noise + part of ``D_r``) and 1 repair epoch (``D_r`` part), Adam 1e-4
``ssd``/``lfssd``  through :func:`lfssd_tutorial.unlearn` (see :func:`dampening_method`)
=================  =====================================================================

The data arrive as a :class:`SplitLoaders`. Datasets are always streamed (subsets and
wrappers of the underlying datasets), never materialised as lists of tensors.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from .dampening import NothingSelectedWarning
from .importance import split_batch
from .training import TrainConfig, train_model
from .unlearn import unlearn

__all__ = [
    "BaselineConfig",
    "SplitLoaders",
    "BASELINES",
    "original",
    "retrain",
    "retrain_head",
    "finetune",
    "bad_teacher",
    "amnesiac",
    "unsir",
    "dampening_method",
    "reset_parameters",
]


@dataclass
class BaselineConfig:
    """Hyperparameters of the baselines; the defaults are the papers'/reference code's.

    ``retrain`` is the training recipe of the retrained model (normally the original's).
    """

    retrain: TrainConfig = field(default_factory=TrainConfig)
    finetune_epochs: int = 5
    finetune_lr: float = 0.02
    bad_teacher_epochs: int = 1
    bad_teacher_lr: float = 1e-4
    bad_teacher_retain_fraction: float = 0.3
    bad_teacher_temperature: float = 1.0
    amnesiac_epochs: int = 3
    amnesiac_lr: float = 1e-4
    unsir_noise_steps: int = 250
    unsir_noise_batch: int = 32
    unsir_noise_lr: float = 0.1
    unsir_noise_copies: int = 10
    unsir_retain_fraction: float = 0.3
    unsir_impair_lr: float = 1e-4
    unsir_repair_lr: float = 1e-4
    amp: bool = True  # bf16 autocast for the baselines' training steps, CUDA only
    importance_bf16: bool = False  # bf16 autocast for SSD/LFSSD's importance passes, CUDA only

    def __post_init__(self) -> None:
        for name in ("finetune_epochs", "bad_teacher_epochs", "amnesiac_epochs", "unsir_noise_steps", "unsir_noise_batch", "unsir_noise_copies"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("finetune_lr", "bad_teacher_lr", "amnesiac_lr", "unsir_noise_lr", "unsir_impair_lr", "unsir_repair_lr", "bad_teacher_temperature"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("bad_teacher_retain_fraction", "unsir_retain_fraction"):
            if not 0 < float(getattr(self, name)) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass
class SplitLoaders:
    """The loaders of one forget request.

    Attributes:
        retain, forget: ``D_r`` and ``D_f`` without augmentation, unshuffled (evaluation,
            MIA, importances, and the data the post hoc baselines train on).
        test, test_retain, test_forget: the test set and its parts for Acc(D_r)/Acc(D_f)
            (for random forgetting ``test_forget`` is the forgotten training samples).
        full: ``D`` as the reference code builds it (``D_r`` then ``D_f``, unshuffled),
            for ``Imp_D``.
        retain_train: ``D_r`` with the training augmentation, shuffled (retraining).
        forget_labels: the task labels of ``D_f`` (numpy), so no image is decoded for them.
        num_classes: number of task labels.
        forget_class: the forgotten task label for full-class forgetting, else ``None``.
        seed: seeds every shuffled loader made from these.
    """

    retain: DataLoader
    forget: DataLoader
    test: DataLoader
    test_retain: DataLoader
    test_forget: DataLoader
    full: DataLoader
    retain_train: DataLoader
    forget_labels: np.ndarray
    num_classes: int
    forget_class: int | None = None
    seed: int = 0


# ---------------------------------------------------------------------------- helpers


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loader_like(ref: DataLoader, dataset: Dataset, *, shuffle: bool, seed: int) -> DataLoader:
    """A loader over ``dataset`` with the batch size / workers / pinning of ``ref``."""
    workers = ref.num_workers
    return DataLoader(
        dataset,
        batch_size=ref.batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        pin_memory=ref.pin_memory,
        persistent_workers=False,
    )


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def _fit_adam(model: nn.Module, loader, epochs: int, lr: float, device: torch.device, amp: bool, progress: bool, desc: str) -> nn.Module:
    """Cross-entropy training with Adam (the reference's ``fit_one_unlearning_cycle``)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.to(device).train()
    for _ in _progress(range(epochs), progress, desc):
        for batch in loader:
            x, y = split_batch(batch, need_labels=True)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def _random_subset(dataset: Dataset, fraction: float, seed: int) -> Subset:
    n = len(dataset)
    k = max(1, int(round(n * fraction)))
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    return Subset(dataset, idx.tolist())


class _Tagged(Dataset):
    """Yield ``(x, tag)`` for every sample of ``base`` (bad teacher's retain 0 / forget 1)."""

    def __init__(self, base: Dataset, tag: int):
        self.base, self.tag = base, tag

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x = self.base[i][0]
        return x, self.tag


class _IntLabels(Dataset):
    """Yield ``(x, int(label))`` so datasets with tensor and int labels can be concatenated."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return item[0], int(item[-1])


class _WithLabels(Dataset):
    """Yield ``(x, labels[i])``: ``base``'s images with replacement labels."""

    def __init__(self, base: Dataset, labels: np.ndarray):
        if len(base) != len(labels):
            raise ValueError("one label per sample needed")
        self.base, self.labels = base, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.base[i][0], int(self.labels[i])


def reset_parameters(model: nn.Module) -> nn.Module:
    """Re-initialise every submodule that has ``reset_parameters`` (in place) and return it."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    return model


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to re-initialise")
    return linears[-1]


# ---------------------------------------------------------------------------- methods


def original(model: nn.Module, loaders: SplitLoaders, config: BaselineConfig, **_) -> nn.Module:
    """The trained model, unchanged (a copy): the papers' "Baseline" row."""
    return copy.deepcopy(model)


def retrain(
    model: nn.Module,
    loaders: SplitLoaders,
    config: BaselineConfig,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    device=None,
    progress: bool = False,
    **_,
) -> nn.Module:
    """Retrain from scratch: a freshly initialised model trained on ``D_r`` (the gold standard).

    ``model_factory`` builds the fresh network (with the architecture's own
    initialisation); without it, a copy of ``model`` has every layer's
    ``reset_parameters()`` called. No weight of ``model`` is reused. Trained with
    ``config.retrain`` on ``loaders.retain_train`` (augmented, shuffled).
    """
    device = _device_of(model, device)
    fresh = model_factory() if model_factory is not None else reset_parameters(copy.deepcopy(model))
    if device.type == "cuda":
        fresh = fresh.to(memory_format=torch.channels_last)
    return train_model(fresh, loaders.retain_train, config.retrain, device=device, progress=progress)


def retrain_head(model: nn.Module, loaders: SplitLoaders, config: BaselineConfig, *, device=None, progress: bool = False, **_) -> nn.Module:
    """The authors' "retrain": re-initialise only the last linear layer, then train on ``D_r``.

    All other weights start from the *original* model, which has seen ``D_f``; this is
    therefore not a retrain from scratch. Provided to reproduce the reference code.
    """
    device = _device_of(model, device)
    student = copy.deepcopy(model)
    _last_linear(student).reset_parameters()
    return train_model(student, loaders.retain_train, config.retrain, device=device, progress=progress)


def finetune(model: nn.Module, loaders: SplitLoaders, config: BaselineConfig, *, device=None, progress: bool = False, seed: int = 0, **_) -> nn.Module:
    """Fine-tune on ``D_r`` only: ``finetune_epochs`` (5) epochs, Adam, lr ``finetune_lr`` (0.02)."""
    device = _device_of(model, device)
    student = copy.deepcopy(model)
    loader = _loader_like(loaders.retain, loaders.retain.dataset, shuffle=True, seed=seed)
    return _fit_adam(student, loader, config.finetune_epochs, config.finetune_lr, device, config.amp, progress, "finetune")


def bad_teacher(
    model: nn.Module,
    loaders: SplitLoaders,
    config: BaselineConfig,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    device=None,
    progress: bool = False,
    seed: int = 0,
    **_,
) -> nn.Module:
    """Bad Teacher (Chundawat et al. 2023): distil from a competent and an incompetent teacher.

    The student (a copy of the original) matches, by KL divergence at temperature
    ``bad_teacher_temperature``, the original model on a random ``bad_teacher_retain_fraction``
    (30%) of ``D_r`` and a randomly initialised model on ``D_f``; ``bad_teacher_epochs``
    (1) epoch of Adam at ``bad_teacher_lr`` (1e-4).
    """
    device = _device_of(model, device)
    student = copy.deepcopy(model).to(device)
    competent = copy.deepcopy(model).to(device).eval()
    incompetent = (model_factory() if model_factory is not None else reset_parameters(copy.deepcopy(model))).to(device).eval()
    retain_part = _random_subset(loaders.retain.dataset, config.bad_teacher_retain_fraction, seed)
    data = ConcatDataset([_Tagged(retain_part, 0), _Tagged(loaders.forget.dataset, 1)])
    loader = _loader_like(loaders.retain, data, shuffle=True, seed=seed)
    opt = torch.optim.Adam(student.parameters(), lr=config.bad_teacher_lr)
    t = config.bad_teacher_temperature
    student.train()
    for _ in _progress(range(config.bad_teacher_epochs), progress, "bad teacher"):
        for x, is_forget in loader:
            x = x.to(device, non_blocking=True)
            is_forget = is_forget.to(device).float().unsqueeze(1)
            with torch.no_grad(), _autocast(device, config.amp):
                good = F.softmax(competent(x).float() / t, dim=1)
                bad = F.softmax(incompetent(x).float() / t, dim=1)
            target = is_forget * bad + (1 - is_forget) * good
            with _autocast(device, config.amp):
                out = student(x)
            loss = F.kl_div(F.log_softmax(out.float() / t, dim=1), target, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    student.eval()
    return student


def _random_other_labels(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """For each label, a uniformly random *different* label."""
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, num_classes, size=len(labels))
    return (np.asarray(labels) + shift) % num_classes


def amnesiac(model: nn.Module, loaders: SplitLoaders, config: BaselineConfig, *, device=None, progress: bool = False, seed: int = 0, **_) -> nn.Module:
    """Amnesiac unlearning (Graves et al. 2021): ``D_f`` with random wrong labels plus ``D_r``.

    Every forget sample gets a label drawn uniformly from the other classes; the copy of
    the model trains on that and ``D_r`` for ``amnesiac_epochs`` (3) epochs with Adam at
    ``amnesiac_lr`` (1e-4).
    """
    device = _device_of(model, device)
    if loaders.num_classes < 2:
        raise ValueError("amnesiac needs at least two classes")
    wrong = _random_other_labels(loaders.forget_labels, loaders.num_classes, seed)
    data = ConcatDataset([_IntLabels(loaders.retain.dataset), _WithLabels(loaders.forget.dataset, wrong)])
    loader = _loader_like(loaders.retain, data, shuffle=True, seed=seed)
    return _fit_adam(copy.deepcopy(model), loader, config.amnesiac_epochs, config.amnesiac_lr, device, config.amp, progress, "amnesiac")


def unsir(model: nn.Module, loaders: SplitLoaders, config: BaselineConfig, *, device=None, progress: bool = False, seed: int = 0, **_) -> nn.Module:
    """UNSIR (Tarun et al. 2023): error-maximising noise, then impair and repair.

    For every distinct label among ``D_f`` a batch of ``unsir_noise_batch`` noise images is
    optimised (Adam, lr ``unsir_noise_lr``, ``unsir_noise_steps`` steps, model frozen in
    eval mode) to *maximise* the cross-entropy w.r.t. that label, with the reference's
    ``0.1 * mean ||noise||^2`` penalty. Impair: one epoch of Adam (``unsir_impair_lr``) on
    the noise (``unsir_noise_copies`` copies) plus a random ``unsir_retain_fraction`` of
    ``D_r``. Repair: one epoch (``unsir_repair_lr``) on that part of ``D_r``.
    """
    device = _device_of(model, device)
    student = copy.deepcopy(model).to(device)
    x0, _ = split_batch(next(iter(loaders.forget)), need_labels=False)
    shape = tuple(x0.shape[1:])
    targets = np.unique(loaders.forget_labels)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(targets) * config.unsir_noise_batch, *shape), generator=generator).to(device).requires_grad_(True)
    noise_labels = torch.from_numpy(np.repeat(targets, config.unsir_noise_batch)).long()
    opt = torch.optim.Adam([noise], lr=config.unsir_noise_lr)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    y = noise_labels.to(device)
    for _ in _progress(range(config.unsir_noise_steps), progress, "UNSIR noise"):
        loss = -F.cross_entropy(student(noise), y) + 0.1 * noise.pow(2).sum(dim=tuple(range(1, noise.dim()))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in student.parameters():
        p.requires_grad_(True)
    noise_set = _IntLabels(TensorDataset(noise.detach().cpu().repeat(config.unsir_noise_copies, *([1] * len(shape))), noise_labels.repeat(config.unsir_noise_copies)))
    retain_part = _random_subset(loaders.retain.dataset, config.unsir_retain_fraction, seed)
    impair = _loader_like(loaders.retain, ConcatDataset([noise_set, _IntLabels(retain_part)]), shuffle=True, seed=seed)
    repair = _loader_like(loaders.retain, retain_part, shuffle=True, seed=seed + 1)
    _fit_adam(student, impair, 1, config.unsir_impair_lr, device, config.amp, progress, "UNSIR impair")
    return _fit_adam(student, repair, 1, config.unsir_repair_lr, device, config.amp, progress, "UNSIR repair")


def dampening_method(
    model: nn.Module,
    loaders: SplitLoaders,
    *,
    method: str,
    alpha: float,
    lambda_: float = 1.0,
    granularity: str = "batch",
    full_importance=None,
    device=None,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
):
    """SSD or LFSSD through :func:`lfssd_tutorial.unlearn`; returns ``(model, report)``.

    ``Imp_D`` is computed on ``loaders.full`` unless ``full_importance`` is given;
    ``autocast_dtype`` and ``channels_last`` go to :func:`~lfssd_tutorial.compute_importance`.
    A :class:`~lfssd_tutorial.NothingSelectedWarning` is silenced here: the report's
    ``nothing_selected`` field records it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSelectedWarning)
        return unlearn(
            model,
            loaders.forget,
            method=method,
            full_loader=None if full_importance is not None else loaders.full,
            full_importance=full_importance,
            alpha=alpha,
            lambda_=lambda_,
            granularity=granularity,
            device=device,
            progress=progress,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
        )


#: Baseline name -> function (the dampening methods are separate: see :func:`dampening_method`).
BASELINES: dict[str, Callable[..., nn.Module]] = {
    "original": original,
    "retrain": retrain,
    "retrain_head": retrain_head,
    "finetune": finetune,
    "bad_teacher": bad_teacher,
    "amnesiac": amnesiac,
    "unsir": unsir,
}
