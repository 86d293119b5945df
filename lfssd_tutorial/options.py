"""What an unlearning method is given besides the model and the data, and what it returns.

Every method of :data:`lfssd_tutorial.methods.METHODS` is called as
``method(model, loaders, options) -> MethodResult``:

* :class:`BaselineConfig` holds the baselines' hyperparameters;
* :class:`MethodOptions` holds everything else a method may need (SSD/LFSSD's alpha and
  lambda, the device, a model factory, a seed);
* :class:`MethodResult` carries the unlearned model and, for SSD/LFSSD, the dampening report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .dampening import DampeningReport
from .training import TrainConfig

__all__ = ["BaselineConfig", "MethodOptions", "MethodResult"]


@dataclass
class BaselineConfig:
    """Hyperparameters of the baselines; the defaults follow the papers and their code.

    ``retrain`` is the training recipe of the retrained model (normally the original's).
    ``amp`` runs the baselines' training steps under bf16 autocast on CUDA;
    ``importance_bf16`` does the same for SSD/LFSSD's importance passes.
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
class MethodOptions:
    """What an unlearning method is given besides the model and the loaders.

    Attributes:
        baselines: the baselines' hyperparameters.
        alpha: SSD/LFSSD's selection weighting (required by them, unused by the baselines).
        lambda_: SSD/LFSSD's dampening constant.
        granularity: SSD/LFSSD's importance granularity, ``"batch"`` or ``"sample"``.
        full_importance: a precomputed ``Imp_D`` for SSD/LFSSD (else computed on ``loaders.full``).
        model_factory: builds a fresh, initialised network of the model's architecture
            (``retrain``'s starting point and ``bad_teacher``'s incompetent teacher); without
            it, a copy of the model has its layers re-initialised.
        device: where to compute; by default the model's device.
        progress: show progress bars.
        seed: seeds the baselines' random draws (subsets, labels, noise, shuffling).
        autocast_dtype: autocast dtype of SSD/LFSSD's importance passes (``None``: full precision).
        channels_last: run SSD/LFSSD's importance passes in channels-last memory format.
    """

    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    alpha: float | None = None
    lambda_: float = 1.0
    granularity: str = "batch"
    full_importance: Mapping[str, torch.Tensor] | None = None
    model_factory: Callable[[], nn.Module] | None = None
    device: str | torch.device | None = None
    progress: bool = False
    seed: int = 0
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False


@dataclass
class MethodResult:
    """What an unlearning method returns.

    Attributes:
        model: the unlearned model (the input model is never modified).
        report: the dampening report (SSD/LFSSD only; ``None`` for the baselines).
    """

    model: nn.Module
    report: DampeningReport | None = None
