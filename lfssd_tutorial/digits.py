"""The book's running example: forget part of the bundled digits from a trained small CNN.

* :data:`DIGITS_TRAIN_CONFIG` — the training recipe of the digits models;
* :func:`digits_config` — the digits request as an experiment config;
* :func:`digits_request` — that request built in memory (data, split, loaders, the trained
  original model, its evaluation, the retrained model), as chapters 1-7 use it.

``make demo`` runs :func:`digits_config` through the experiments' runner, so its table
and the chapters show the same models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace

import torch

from .experiments import ExperimentConfig, ForgetRequest, config_from_dict, forget_request
from .training import TrainConfig

__all__ = ["DIGITS_TRAIN_CONFIG", "digits_config", "digits_request"]

#: The training recipe of the book's digits models (original and retrained).
DIGITS_TRAIN_CONFIG = TrainConfig(epochs=30, lr=0.05, milestones=(15, 25))


def digits_config(
    forget_class: int | str = 8,
    *,
    scenario: str = "full_class",
    forget_count: int = 100,
    split_seed: int = 0,
    width: int = 16,
    batch_size: int = 64,
    train_config: TrainConfig | None = None,
    methods: Sequence = ("original", "retrain"),
    seeds: Sequence[int] = (0,),
    name: str = "digits",
) -> ExperimentConfig:
    """The digits request as an experiment config.

    ``scenario`` is one of:

    * ``"full_class"`` — forget every image of digit ``forget_class``;
    * ``"sub_class"`` — the superclass view of the digits (dataset ``digits-super``),
      forgetting digit ``forget_class`` while its superclass stays;
    * ``"random"`` — forget ``forget_count`` random training images drawn with
      ``split_seed`` (``forget_class`` is ignored).

    The model is ``small_cnn`` at ``width``, trained with ``train_config`` (default
    :data:`DIGITS_TRAIN_CONFIG`) in batches of ``batch_size``. ``methods`` and ``seeds``
    are the config's rows and training seeds.
    """
    if scenario not in ("full_class", "sub_class", "random"):
        raise ValueError(f"unknown scenario {scenario!r}; choose 'full_class', 'sub_class' or 'random'")
    if scenario == "random":
        scenario_section = {"kind": "random", "forget_n": forget_count, "split_seed": split_seed}
    else:
        scenario_section = {"kind": scenario, "targets": [str(forget_class)]}
    train = train_config if train_config is not None else replace(DIGITS_TRAIN_CONFIG)
    return config_from_dict({
        "name": name,
        "data": {"dataset": "digits-super" if scenario == "sub_class" else "digits", "batch_size": batch_size},
        "model": {"name": "small_cnn", "width": width},
        "train": asdict(train),
        "scenario": scenario_section,
        "methods": list(methods),
        "seeds": list(seeds),
    })


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
    """The book's running example: the digits request of :func:`digits_config`, trained.

    Seeds every generator with ``seed``, builds
    ``SmallCNN(in_channels=1, num_classes=..., width=width)`` and trains it on all training
    images (shuffled with ``seed``, batches of ``batch_size``) with ``train_config``
    (default :data:`DIGITS_TRAIN_CONFIG`: 30 epochs, lr 0.05, milestones 15 and 25) on
    ``device``. Random forgetting draws its ``forget_count`` images with ``seed``. The
    loaders are seeded with ``seed``. The same arguments give the same model, bit for bit;
    the retrained model is :meth:`ForgetRequest.retrained`.
    """
    config = digits_config(forget_class, scenario=scenario, forget_count=forget_count, split_seed=seed, width=width,
                           batch_size=batch_size, train_config=train_config, seeds=(seed,))
    return forget_request(config, seed=seed, device=device, progress=progress)
