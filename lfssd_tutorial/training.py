"""One device-aware training loop and sample-weighted evaluation."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .importance import split_batch
from .utils import autocast, progress as progress_bar, resolve_device

__all__ = ["TrainConfig", "seed_everything", "amp_dtype", "train_model", "predict", "evaluate_accuracy"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    """SGD with momentum, linear warm-up and a multi-step schedule (the papers' recipe).

    The papers' ResNet18 settings are ``lr=0.1, momentum=0.9, weight_decay=5e-4``,
    batch 64, one warm-up epoch, ``gamma=0.2``; CIFAR-10 trains 20 epochs with
    milestones ``(8, 12, 16)``.
    """

    epochs: int = 20
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Sequence[int] = (8, 12, 16)
    gamma: float = 0.2
    warmup_epochs: int = 1
    amp: bool = True  # bf16 autocast, used on CUDA only

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


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

    Warm-up raises the learning rate linearly over the first ``warmup_epochs`` epochs
    (per step), then MultiStepLR multiplies it by ``gamma`` at each milestone epoch.
    On CUDA the forward pass runs under bf16 autocast when ``config.amp``.
    """
    config = config or TrainConfig()
    device = resolve_device(device)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.milestones), gamma=config.gamma)
    try:
        steps_per_epoch = len(loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    warmup_steps = config.warmup_epochs * (steps_per_epoch or 0)
    step = 0
    model.train()
    for epoch in progress_bar(range(config.epochs), progress, "epochs"):
        for batch in loader:
            inputs, labels = split_batch(batch, need_labels=True)
            inputs = inputs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if step < warmup_steps:
                for group in opt.param_groups:
                    group["lr"] = config.lr * (step + 1) / warmup_steps
            with autocast(device, amp_dtype(device, config.amp)):
                loss = F.cross_entropy(model(inputs), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (float32, CPU) for every sample of ``loader``, and the labels if the batches carry them."""
    device = resolve_device(device, model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            inputs, y = split_batch(batch, need_labels=False)
            with autocast(device, amp_dtype(device, amp)):
                out = model(inputs.to(device, non_blocking=True))
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
