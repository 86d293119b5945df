"""One forget request: its loaders, its evaluation and, for the bundled digits, the trained model.

* :class:`SplitLoaders` — every loader of a forget request (``D_r``, ``D_f``, ``D``, test parts);
* :func:`build_split_loaders` — builds them from a dataset and a :class:`~lfssd_tutorial.data.ForgetSplit`;
* :func:`evaluate_request` — Acc(D_r), Acc(D_f) and the MIA of a model on a request;
* :class:`ForgetRequest` and :func:`digits_request` — the book's running example: the digits
  data, the forget split, the loaders and the trained original model, built in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from .data import DataBundle, ForgetSplit, full_class_split, load_digits, make_loader, random_split, sub_class_split
from .metrics import entropy_mia, evaluate_accuracy
from .models import SmallCNN
from .training import TrainConfig, seed_everything, train_model

__all__ = ["SplitLoaders", "build_split_loaders", "evaluate_request", "ForgetRequest", "digits_request", "DIGITS_TRAIN_CONFIG"]

#: The training recipe of the book's digits models (original and retrained).
DIGITS_TRAIN_CONFIG = TrainConfig(epochs=30, lr=0.05, milestones=(15, 25))


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


@dataclass
class ForgetRequest:
    """One forget request: the data, the split, its loaders and the trained original model.

    Attributes:
        data: the dataset.
        split: which samples are forgotten.
        loaders: every loader of the request (batch size and seed as built).
        original: the model trained on all of ``D``.
        make_model: builds a fresh, untrained network of the same architecture.
        train_config: the training recipe of ``original`` (and of :meth:`retrained`).
        seed: the seed ``original`` was trained with.
        device: where the models were trained.
    """

    data: DataBundle
    split: ForgetSplit
    loaders: SplitLoaders
    original: nn.Module
    make_model: Callable[[], nn.Module]
    train_config: TrainConfig
    seed: int = 0
    device: torch.device = torch.device("cpu")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``{"acc_retain", "acc_forget", "mia"}`` of ``model`` (see :func:`evaluate_request`)."""
        return evaluate_request(model, self.loaders)

    def retrained(self, *, progress: bool = False) -> nn.Module:
        """The retrained model: a fresh network trained on ``D_r`` only, with the original's recipe.

        Seeds every generator with ``seed + 1`` (:func:`~lfssd_tutorial.training.seed_everything`,
        so the initialisation shares nothing with the original's), builds ``make_model()`` and
        trains it with ``train_config`` on ``D_r`` shuffled with ``seed``, in batches of the
        request's batch size. Each call trains a new model, with the same result.
        """
        seed_everything(self.seed + 1)
        model = self.make_model()
        loader = make_loader(self.split.retain_set(self.data), batch_size=self.loaders.retain.batch_size, shuffle=True, seed=self.seed)
        return train_model(model, loader, self.train_config, device=self.device, progress=progress)


def digits_request(
    forget_class: int | str = 8,
    *,
    seed: int = 0,
    scenario: str = "full_class",
    forget_count: int = 100,
    width: int = 16,
    batch_size: int = 64,
    train_config: TrainConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ForgetRequest:
    """The book's running example: forget part of the bundled digits from a trained small CNN.

    Loads :func:`~lfssd_tutorial.data.load_digits` and splits it by ``scenario``:

    * ``"full_class"`` — forget every image of digit ``forget_class``;
    * ``"sub_class"`` — the superclass view of the digits (``load_digits(superclasses=True)``),
      forgetting digit ``forget_class`` while its superclass stays;
    * ``"random"`` — forget ``forget_count`` random training images (drawn with ``seed``;
      ``forget_class`` is ignored).

    Then seeds every generator with ``seed``, builds
    ``SmallCNN(in_channels=1, num_classes=..., width=width)`` and trains it on all training
    images (shuffled with ``seed``, batches of ``batch_size``) with ``train_config``
    (default :data:`DIGITS_TRAIN_CONFIG`: 30 epochs, lr 0.05, milestones 15 and 25) on
    ``device``. The loaders are :func:`build_split_loaders` at ``batch_size`` with ``seed``.
    The same arguments give the same model, bit for bit. The retrained model is
    :meth:`ForgetRequest.retrained`.
    """
    if scenario == "full_class":
        data = load_digits()
        split = full_class_split(data, forget_class)
    elif scenario == "sub_class":
        data = load_digits(superclasses=True)
        split = sub_class_split(data, forget_class)
    elif scenario == "random":
        data = load_digits()
        split = random_split(data, n=forget_count, seed=seed)
    else:
        raise ValueError(f"unknown scenario {scenario!r}; choose 'full_class', 'sub_class' or 'random'")
    config = train_config if train_config is not None else replace(DIGITS_TRAIN_CONFIG)
    device = torch.device(device)

    def make_model() -> nn.Module:
        return SmallCNN(in_channels=data.input_shape[0], num_classes=data.num_classes, width=width)

    seed_everything(seed)
    original = make_model()
    train_model(original, make_loader(data.train, batch_size=batch_size, shuffle=True, seed=seed), config, device=device, progress=progress)
    loaders = build_split_loaders(data, data, split, batch_size=batch_size, seed=seed)
    return ForgetRequest(data=data, split=split, loaders=loaders, original=original, make_model=make_model,
                         train_config=config, seed=seed, device=device)
