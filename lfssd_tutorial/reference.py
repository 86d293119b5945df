"""The baselines' settings in the authors' code, beside the package's.

The authors' code is the public repository ``if-loops/selective-synaptic-dampening`` at
commit ``cdfdc0e`` (``src/forget_full_class_strategies.py``, ``src/forget_random_strategies.py``,
``src/utils.py``, ``src/unlearn.py``, ``src/forget_*_main.py``). Each
:class:`ReferenceSetting` is one setting of one baseline: the reference's value, the
:class:`~lfssd_tutorial.options.BaselineConfig` field that holds the package's (or a
description where no field does), and, where the package differs on purpose, why.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import BaselineConfig

__all__ = ["REFERENCE_COMMIT", "ReferenceSetting", "BASELINE_SETTINGS", "baseline_settings_table"]

#: The commit of the authors' code that :data:`BASELINE_SETTINGS` was read from.
REFERENCE_COMMIT = "cdfdc0e"


@dataclass(frozen=True)
class ReferenceSetting:
    """One setting of one baseline.

    Attributes:
        baseline: the method's name (``"finetune"``, ...).
        setting: what is set.
        reference: the value in the authors' code.
        field: the :class:`BaselineConfig` field holding the package's value, if any.
        ours: the package's value where no field holds it.
        why: why the package differs (``None`` where it does not).
    """

    baseline: str
    setting: str
    reference: object
    field: str | None = None
    ours: str | None = None
    why: str | None = None

    def value(self, config: BaselineConfig | None = None) -> object:
        """The package's value: ``config``'s field (default config if ``None``), else :attr:`ours`."""
        if self.field is None:
            return self.ours
        return getattr(config or BaselineConfig(), self.field)


#: Every setting of the baselines that the authors' code fixes, in the order of chapter 6's table.
BASELINE_SETTINGS: tuple[ReferenceSetting, ...] = (
    ReferenceSetting("retrain", "starting point", "original weights, head re-initialised", ours="fresh initialisation",
                     why="the reference resets only the last layer (the other children are Sequential blocks without "
                         "reset_parameters); a retrain from scratch is the gold standard. The reference's version is "
                         "the method retrain_head"),
    ReferenceSetting("retrain", "recipe", "SGD 0.01, momentum 0.9, wd 5e-4, the original's epochs and milestones",
                     ours="the original's recipe", why="a model retrained without D_f is trained as the original was"),
    ReferenceSetting("retrain_head", "learning rate", 0.01, "retrain_head_lr"),
    ReferenceSetting("finetune", "epochs", 5, "finetune_epochs"),
    ReferenceSetting("finetune", "optimiser", "SGD, constant rate", ours="SGD, constant rate"),
    ReferenceSetting("finetune", "learning rate", 0.02, "finetune_lr"),
    ReferenceSetting("finetune", "momentum", 0.9, "finetune_momentum"),
    ReferenceSetting("finetune", "weight decay", 5e-4, "finetune_weight_decay"),
    ReferenceSetting("bad_teacher", "epochs", 1, "bad_teacher_epochs"),
    ReferenceSetting("bad_teacher", "learning rate (Adam)", 1e-4, "bad_teacher_lr"),
    ReferenceSetting("bad_teacher", "share of D_r used", 0.3, "bad_teacher_retain_fraction"),
    ReferenceSetting("bad_teacher", "KL temperature", 1.0, "bad_teacher_temperature"),
    ReferenceSetting("bad_teacher", "batch size", 256, "bad_teacher_batch_size"),
    ReferenceSetting("bad_teacher", "KL reduction", "mean over batch and classes", ours="mean over the batch",
                     why="the KL divergence's own value; the factor 1/classes hardly changes Adam's steps"),
    ReferenceSetting("amnesiac", "epochs", 3, "amnesiac_epochs"),
    ReferenceSetting("amnesiac", "learning rate (Adam)", 1e-4, "amnesiac_lr"),
    ReferenceSetting("amnesiac", "batch size", 128, "amnesiac_batch_size"),
    ReferenceSetting("amnesiac", "new labels", "a random other class, drawn once", ours="a random other class, drawn once"),
    ReferenceSetting("unsir", "noise steps", 25, "unsir_noise_steps"),
    ReferenceSetting("unsir", "noise batch", 32, "unsir_noise_batch"),
    ReferenceSetting("unsir", "noise learning rate (Adam)", 0.1, "unsir_noise_lr"),
    ReferenceSetting("unsir", "copies of the noise", 80, "unsir_noise_copies"),
    ReferenceSetting("unsir", "noise images kept per batch", 3, "unsir_noise_kept",
                     why="an indexing slip in the reference keeps 3 of the 32 images (None keeps all; set 3 to "
                         "reproduce it)"),
    ReferenceSetting("unsir", "retained images per class", 500, "unsir_samples_per_class"),
    ReferenceSetting("unsir", "which retained images", "the first 500 in dataset order", ours="500 drawn at random",
                     why="a seeded draw does not depend on how the dataset happens to be ordered"),
    ReferenceSetting("unsir", "impair batch size", 32, "unsir_batch_size"),
    ReferenceSetting("unsir", "repair batch size", 128, "unsir_repair_batch_size"),
    ReferenceSetting("unsir", "impair / repair learning rate (Adam)", 1e-4, "unsir_impair_lr"),
    ReferenceSetting("unsir", "model during noise steps", "train mode", ours="eval mode, frozen",
                     why="in train mode the 25 noise passes move the BatchNorm statistics, and stale gradients "
                         "reach the first impair step"),
    ReferenceSetting("all", "accuracy", "mean of per-batch accuracies", ours="per sample",
                     why="a short last batch would count as much as a full one"),
)


def baseline_settings_table(config: BaselineConfig | None = None) -> list[dict[str, str]]:
    """:data:`BASELINE_SETTINGS` as rows of text: baseline, setting, reference, ours, why
    (``""`` where the two agree). ``config`` gives the package's values (default: the defaults)."""

    def text(value: object) -> str:
        if value is None:
            return "all"
        return f"{value:g}" if isinstance(value, float) else str(value)

    rows = []
    for s in BASELINE_SETTINGS:
        rows.append({"baseline": s.baseline, "setting": s.setting, "reference": text(s.reference),
                     "ours": text(s.value(config)), "why": s.why or ""})
    return rows
