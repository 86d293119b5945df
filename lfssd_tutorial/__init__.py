"""lfssd_tutorial: Loss-Free Selective Synaptic Dampening (LFSSD) and SSD, from first principles.

The public API::

    compute_importance(model, loader, objective="l2" | "fisher" | "true_fisher", granularity="batch" | "sample")
        # -> Importance: a dict of tensors whose .info records objective, granularity, samples, batches
    select_and_dampen_(model, full_importance, forget_importance, alpha=..., lambda_=...)
    unlearn(model, forget_loader, method="lfssd" | "ssd", full_loader=... | full_importance=...)
    calibrate_alpha(model, full_importance, forget_importance, forget_loader, retain_loader)  # alpha without labels
    unlearning(net, retain, forget, validation)          # NeurIPS 2023 starting-kit contract
    save_importance / load_importance                     # cache Imp_D across forget requests (safetensors)
"""

from .calibrate import AlphaChoice, CalibrationWarning, calibrate_alpha
from .checks import check_hyperparameters, check_importance
from .dampening import (
    DampeningReport,
    NothingSelectedWarning,
    importance_ratios,
    max_importance_ratio,
    select_and_dampen_,
)
from .importance import compute_importance
from .importance_file import load_importance, save_importance
from .importance_info import Importance, ImportanceInfo
from .unlearn import unlearn, unlearning

__version__ = "0.1.0"

__all__ = [
    "AlphaChoice",
    "CalibrationWarning",
    "DampeningReport",
    "Importance",
    "ImportanceInfo",
    "NothingSelectedWarning",
    "calibrate_alpha",
    "check_hyperparameters",
    "check_importance",
    "compute_importance",
    "importance_ratios",
    "load_importance",
    "max_importance_ratio",
    "save_importance",
    "select_and_dampen_",
    "unlearn",
    "unlearning",
    "__version__",
]
