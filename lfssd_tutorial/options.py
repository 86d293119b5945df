"""What an unlearning method is given besides the model and the data, and what it returns.

Every method of :data:`lfssd_tutorial.methods.METHODS` is called as
``method(model, loaders, options) -> MethodResult``:

* :class:`BaselineConfig` holds the baselines' hyperparameters;
* :class:`MethodOptions` holds everything else a method may need (SSD/LFSSD's alpha and
  lambda, the device, a model factory, a seed);
* :class:`MethodResult` carries the unlearned model and, for SSD/LFSSD, the dampening report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .dampening import DampeningReport
from .training import TrainConfig

__all__ = ["BaselineConfig", "MethodOptions", "MethodResult"]


@dataclass
class BaselineConfig:
    """Hyperparameters of the baselines; the defaults are the authors' settings.

    The authors' code (``if-loops/selective-synaptic-dampening``) is the reference for
    every default; :data:`lfssd_tutorial.reference.BASELINE_SETTINGS` lists each setting
    beside the reference's value, and says why where the package differs.

    ``retrain`` is the training recipe of the retrained model (normally the original's);
    ``retrain_head_lr`` is the rate of the authors' head-only "retrain".
    ``unsir_noise_kept`` ``None`` keeps every optimised noise image; 3 reproduces the
    reference's indexing slip, which keeps 3 images of each noise batch.
    ``amp`` runs the baselines' training steps under bf16 autocast on CUDA;
    ``importance_bf16`` does the same for SSD/LFSSD's importance passes.
    """

    retrain: TrainConfig = field(default_factory=TrainConfig)
    retrain_head_lr: float = 0.01
    finetune_epochs: int = 5
    finetune_lr: float = 0.02
    finetune_momentum: float = 0.9
    finetune_weight_decay: float = 5e-4
    bad_teacher_epochs: int = 1
    bad_teacher_lr: float = 1e-4
    bad_teacher_retain_fraction: float = 0.3
    bad_teacher_temperature: float = 1.0
    bad_teacher_batch_size: int = 256
    amnesiac_epochs: int = 3
    amnesiac_lr: float = 1e-4
    amnesiac_batch_size: int = 128
    unsir_noise_steps: int = 25
    unsir_noise_batch: int = 32
    unsir_noise_lr: float = 0.1
    unsir_noise_copies: int = 80
    unsir_noise_kept: int | None = None
    unsir_samples_per_class: int = 500
    unsir_batch_size: int = 32
    unsir_repair_batch_size: int = 128
    unsir_impair_lr: float = 1e-4
    unsir_repair_lr: float = 1e-4
    amp: bool = True  # bf16 autocast for the baselines' training steps, CUDA only
    importance_bf16: bool = False  # bf16 autocast for SSD/LFSSD's importance passes, CUDA only

    def __post_init__(self) -> None:
        for name in ("finetune_epochs", "bad_teacher_epochs", "amnesiac_epochs", "unsir_noise_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("bad_teacher_batch_size", "amnesiac_batch_size", "unsir_noise_batch", "unsir_noise_copies",
                     "unsir_samples_per_class", "unsir_batch_size", "unsir_repair_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("retrain_head_lr", "finetune_lr", "bad_teacher_lr", "amnesiac_lr", "unsir_noise_lr", "unsir_impair_lr",
                     "unsir_repair_lr", "bad_teacher_temperature"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("finetune_momentum", "finetune_weight_decay"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < float(self.bad_teacher_retain_fraction) <= 1:
            raise ValueError(f"bad_teacher_retain_fraction must be in (0, 1], got {self.bad_teacher_retain_fraction}")
        if self.unsir_noise_kept is not None and not 1 <= self.unsir_noise_kept <= self.unsir_noise_batch:
            raise ValueError(f"unsir_noise_kept must be None or in [1, unsir_noise_batch={self.unsir_noise_batch}], "
                             f"got {self.unsir_noise_kept}")


@dataclass
class MethodOptions:
    """What an unlearning method is given besides the model and the loaders.

    Attributes:
        baselines: the baselines' hyperparameters.
        alpha: SSD/LFSSD's selection weighting (required by them, unused by the baselines),
            or ``"auto"``: chosen per request without labels by
            :func:`~lfssd_tutorial.calibrate_alpha`, on ``calibration_sample`` retained inputs.
        calibration_sample: how many retained inputs ``alpha="auto"`` calibrates on.
        calibration_lambdas: with ``alpha="auto"``, candidate dampening constants to choose
            among (``lambda_`` is then not used); ``None`` dampens at ``lambda_``.
        calibration_growth: with ``alpha="auto"``, the spacing of the candidate alphas.
        calibration_forget_sample: with ``alpha="auto"``, calibrate on this many ``D_f``
            inputs (``None``: all of them); the importances use all of ``D_f``.
        label_samples: the true Fisher's label draws per input (``None``: exact), for
            ``ssd_true_fisher``.
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
        forward: how SSD/LFSSD run the model on a batch of another kind,
            ``forward(model, batch) -> (logits, labels or None)`` (:mod:`lfssd_tutorial.batches`).
    """

    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    alpha: float | str | None = None
    calibration_sample: int = 256
    calibration_lambdas: Sequence[float] | None = None
    calibration_growth: float = 2.0
    calibration_forget_sample: int | None = None
    label_samples: int | None = None
    lambda_: float = 1.0
    granularity: str = "batch"
    full_importance: Mapping[str, torch.Tensor] | None = None
    model_factory: Callable[[], nn.Module] | None = None
    device: str | torch.device | None = None
    progress: bool = False
    seed: int = 0
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    forward: Callable | None = None


@dataclass
class MethodResult:
    """What an unlearning method returns.

    Attributes:
        model: the unlearned model (the input model is never modified).
        report: the dampening report (SSD/LFSSD only; ``None`` for the baselines).
    """

    model: nn.Module
    report: DampeningReport | None = None
