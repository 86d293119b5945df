"""The loaders of one forget request, and its evaluation.

* :class:`SplitLoaders` — every loader of a forget request (``D_r``, ``D_f``, ``D``, test parts);
* :func:`build_split_loaders` — builds them from a dataset and a :class:`~lfssd_tutorial.data.ForgetSplit`;
* :func:`evaluate_request` — Acc(D_r), Acc(D_f) and the MIA of a model on a request;
* :func:`validation_test_halves` and :func:`half_accuracies` — the test set split into a
  validation half (for choosing hyperparameters) and a test half (for reporting);
* :func:`retain_sample` — a small loader of retained inputs (the label-free calibration's).

A whole request with its trained models is an
:class:`~lfssd_tutorial.experiments.ForgetRequest`; the book's digits request is
:func:`lfssd_tutorial.digits.digits_request`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset

from .data import DataBundle, ForgetSplit, make_loader
from .metrics import entropy_mia, evaluate_accuracy
from .training import predict

__all__ = ["SplitLoaders", "build_split_loaders", "evaluate_request", "validation_test_halves", "half_accuracies",
           "retain_sample", "sample_loader"]


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
        retain_train: ``D_r`` with the training augmentation, shuffled (retraining); a
            ``DataLoader``, or any iterable of batches with a length, such as
            :class:`~lfssd_tutorial.data.DeviceBatches`.
        forget_labels, retain_labels: the task labels of ``D_f`` and ``D_r`` (numpy), so no
            image is decoded for them.
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
    retain_train: Iterable
    forget_labels: np.ndarray
    retain_labels: np.ndarray
    num_classes: int
    forget_class: int | None = None
    seed: int = 0


def build_split_loaders(
    train_data: DataBundle,
    eval_data: DataBundle,
    split: ForgetSplit,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> SplitLoaders:
    """All loaders of one forget request (see :class:`SplitLoaders`).

    ``train_data`` supplies the augmented ``D_r`` for retraining (``retain_train``, shuffled
    with ``seed``); every other loader reads ``eval_data`` (no augmentation), unshuffled.
    Both bundles must hold the same samples in the same order.
    """

    def loader(dataset, shuffle: bool = False) -> DataLoader:
        return make_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers, pin_memory=pin_memory)

    retain, forget = split.retain_set(eval_data), split.forget_set(eval_data)
    forget_class = eval_data.class_index(split.target) if split.scenario == "full_class" else None
    return SplitLoaders(
        retain=loader(retain),
        forget=loader(forget),
        test=loader(eval_data.test),
        test_retain=loader(split.test_retain_set(eval_data)),
        test_forget=loader(split.test_forget_set(eval_data)),
        full=loader(ConcatDataset([retain, forget])),
        retain_train=loader(split.retain_set(train_data), True),
        forget_labels=eval_data.train_labels[split.forget],
        retain_labels=eval_data.train_labels[split.retain],
        num_classes=eval_data.num_classes,
        forget_class=forget_class,
        seed=seed,
    )


def evaluate_request(model: nn.Module, loaders: SplitLoaders, *, device: str | torch.device | None = None) -> dict[str, float]:
    """``{"acc_retain", "acc_forget", "mia"}``: Acc(D_r) and Acc(D_f) (sample-weighted, percent)
    on ``loaders.test_retain`` / ``loaders.test_forget``, and the entropy MIA (percent).

    ``device`` defaults to the model's own device.
    """
    return {
        "acc_retain": evaluate_accuracy(model, loaders.test_retain, device=device),
        "acc_forget": evaluate_accuracy(model, loaders.test_forget, device=device),
        "mia": entropy_mia(model, loaders.retain, loaders.forget, loaders.test, device=device),
    }


def validation_test_halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Test indices split into a validation and a test half, stratified by ``labels``.

    Each class's indices are shuffled with ``seed``; the first half (rounded down) is
    validation, the rest test. Returns sorted index arrays.
    """
    rng = np.random.default_rng(seed)
    val, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[: len(members) // 2])
        test.append(members[len(members) // 2:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


def half_accuracies(model: nn.Module, data: DataBundle, split: ForgetSplit, halves: dict[str, np.ndarray], *,
                    batch_size: int = 256, device: str | torch.device | None = None) -> dict[str, float]:
    """Acc(D_r) and Acc(D_f) (percent) on each half of the test set: ``{"<half>_retain", "<half>_forget"}``.

    ``halves`` maps a name (``"val"``, ``"test"``) to test indices, e.g. from
    :func:`validation_test_halves`. Acc(D_r) counts the retained classes' test images of
    the half, Acc(D_f) the forgotten ones'. For random forgetting, Acc(D_f) is measured on
    the forgotten training samples, which belong to no half: every half gets that value.
    One prediction pass over the test images (and ``D_f``).
    """
    out = {}
    parts = {"retain": split.test_retain, "forget": split.test_forget}
    for part, members in parts.items():
        if members is None:  # random forgetting: the forgotten samples themselves
            logits, labels = predict(model, make_loader(split.forget_set(data), batch_size=batch_size), device=device)
            acc = 100.0 * (logits.argmax(1) == labels).float().mean().item()
            out.update({f"{half}_{part}": acc for half in halves})
            continue
        logits, labels = predict(model, make_loader(Subset(data.test, members.tolist()), batch_size=batch_size), device=device)
        correct = (logits.argmax(1) == labels).float()
        for half, idx in halves.items():
            mask = torch.from_numpy(np.isin(members, idx))
            if not mask.any():
                raise ValueError(f"the {half} half holds none of the {part} test images")
            out[f"{half}_{part}"] = 100.0 * correct[mask].mean().item()
    return out


def sample_loader(loader: DataLoader, n: int, *, seed: int = 0) -> DataLoader:
    """A loader over ``n`` of ``loader``'s samples, drawn without replacement with ``seed``
    (all of them when it holds at most ``n``), in their original order."""
    dataset = loader.dataset
    idx = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return make_loader(Subset(dataset, np.sort(idx).tolist()), batch_size=loader.batch_size)


def retain_sample(loaders: SplitLoaders, n: int = 256, *, seed: int = 0) -> DataLoader:
    """A loader over ``n`` retained training inputs (``loaders.retain``'s, unaugmented), drawn with ``seed``.

    The small sample of ``D_r`` that :func:`~lfssd_tutorial.calibrate_alpha` compares
    predictions on; all of ``D_r`` when it holds at most ``n`` samples.
    """
    return sample_loader(loaders.retain, n, seed=seed)
