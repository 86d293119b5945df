"""The loaders of one forget request, and its evaluation.

* :class:`SplitLoaders` — every loader of a forget request (``D_r``, ``D_f``, ``D``, test parts);
* :func:`build_split_loaders` — builds them from a dataset and a :class:`~lfssd_tutorial.data.ForgetSplit`;
* :func:`evaluate_request` — Acc(D_r), Acc(D_f) and the MIA of a model on a request.

A whole request with its trained models is an
:class:`~lfssd_tutorial.experiments.ForgetRequest`; the book's digits request is
:func:`lfssd_tutorial.digits.digits_request`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from .data import DataBundle, ForgetSplit, make_loader
from .metrics import entropy_mia, evaluate_accuracy

__all__ = ["SplitLoaders", "build_split_loaders", "evaluate_request"]


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
