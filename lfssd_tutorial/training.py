"""One device-aware training loop and sample-weighted evaluation."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batches import Forward, map_tensors, model_logits, split_batch
from .utils import autocast, progress as progress_bar, resolve_device

__all__ = ["TrainConfig", "seed_everything", "amp_dtype", "train_model", "predict", "evaluate_accuracy"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    """SGD with momentum and a learning-rate schedule; cross-entropy loss.

    ``schedule="multistep"`` (the papers' recipe): a linear warm-up over the first
    ``warmup_epochs`` epochs (per step), then the rate is multiplied by ``gamma`` at each
    milestone epoch. The papers' ResNet18 settings are ``lr=0.1, momentum=0.9,
    weight_decay=5e-4``, batch 64, one warm-up epoch, ``gamma=0.2``; CIFAR-10 trains 20
    epochs with milestones ``(8, 12, 16)``.

    ``schedule="onecycle"`` (the fast CIFAR recipes): the rate rises linearly from 0 to
    ``lr`` over ``warmup_epochs`` epochs, then falls linearly to 0 at the last step
    (``milestones`` and ``gamma`` are unused). ``nesterov`` selects Nesterov momentum and
    ``label_smoothing`` smooths the cross-entropy's targets.
    """

    epochs: int = 20
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Sequence[int] = (8, 12, 16)
    gamma: float = 0.2
    warmup_epochs: float = 1
    schedule: str = "multistep"
    nesterov: bool = False
    label_smoothing: float = 0.0
    amp: bool = True  # bf16 autocast, used on CUDA only

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("multistep", "onecycle"):
            raise ValueError(f"schedule must be 'multistep' or 'onecycle', got {self.schedule!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of training step ``step`` (counted from 0) with ``steps_per_epoch`` steps per epoch."""
        warmup = int(round(self.warmup_epochs * steps_per_epoch))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.schedule == "onecycle":
            total = self.epochs * steps_per_epoch
            return self.lr * max(total - step, 0) / max(total - warmup, 1)
        epoch, lr = step // steps_per_epoch, self.lr
        for milestone in self.milestones:  # one multiplication per milestone passed, as MultiStepLR does
            if epoch >= milestone:
                lr *= self.gamma
        return lr


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype of a training step: bf16 when ``amp`` is on and ``device`` is CUDA,
    else ``None`` (full precision)."""
    return torch.bfloat16 if amp and device.type == "cuda" else None


def train_model(
    model: nn.Module,
    loader: Iterable,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` in place on ``(inputs, labels)`` batches with cross-entropy.

    The learning rate of every step is :meth:`TrainConfig.lr_at`. On CUDA the forward
    pass runs under bf16 autocast when ``config.amp``. The loader must have a length
    (the schedule is laid out in steps).
    """
    config = config or TrainConfig()
    device = resolve_device(device)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                          nesterov=config.nesterov)
    try:
        steps_per_epoch = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("train_model needs a loader with a length (the schedule is laid out in steps)") from None
    step = 0
    model.train()
    for _ in progress_bar(range(config.epochs), progress, "epochs"):
        for batch in loader:
            inputs, labels = split_batch(batch, need_labels=True)
            inputs = inputs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step, steps_per_epoch)
            with autocast(device, amp_dtype(device, config.amp)):
                loss = F.cross_entropy(model(inputs), labels, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    return model


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device | None = None,
    amp: bool = False,
    forward: Forward | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (float32, CPU) for every sample of ``loader``, and the labels if the batches carry them.

    Batches and outputs may be of any kind :mod:`lfssd_tutorial.batches` takes (``forward``
    for any other)."""
    device = resolve_device(device, model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            batch = map_tensors(lambda t: t.to(device, non_blocking=True), batch)
            with autocast(device, amp_dtype(device, amp)):
                out, y = model_logits(model, batch, forward=forward)
            logits.append(out.float().cpu())
            if y is not None:
                labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("the loader yielded no data")
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def evaluate_accuracy(model: nn.Module, loader: Iterable, *, device: str | torch.device | None = None) -> float:
    """Accuracy in percent, weighted by sample (every sample counts once, whatever its batch)."""
    logits, labels = predict(model, loader, device=device)
    if labels is None:
        raise ValueError("accuracy needs labelled batches (inputs, labels)")
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()
