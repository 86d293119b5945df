"""What a config builds: its data, forget splits, loaders and models."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from ..data import (
    DataBundle,
    DeviceBatches,
    ForgetSplit,
    full_class_split,
    load_cifar10,
    load_cifar20,
    load_cifar100,
    load_digits,
    load_image_folder,
    random_split,
    sub_class_split,
)
from ..models import build_model
from ..request import SplitLoaders, build_split_loaders
from .config import ConfigError, ExperimentConfig

__all__ = [
    "image_size",
    "subset_bundle",
    "load_data",
    "make_split",
    "loader_options",
    "split_loaders",
    "uses_channels_last",
    "model_factory",
]


def image_size(config: ExperimentConfig) -> int:
    """The input size of the config's model: ``data.image_size``, else 224 for ``vit_b_16`` and 32 otherwise."""
    if config.data.image_size is not None:
        return config.data.image_size
    return 224 if config.model.name == "vit_b_16" else 32


def subset_bundle(data: DataBundle, n_train: int | None, n_test: int | None, seed: int = 0) -> DataBundle:
    """A class-stratified subset of a bundle (by fine labels when present), streamed via ``Subset``.

    Each class keeps its share of ``n_train`` (``n_test``) samples, at least one, drawn
    with ``seed``; ``None`` (or a number at least the set's size) keeps the whole set.
    """

    def pick(labels: np.ndarray, n: int | None) -> np.ndarray | None:
        if n is None or n >= len(labels):
            return None
        rng = np.random.default_rng(seed)
        chosen = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            k = int(round(n * len(members) / len(labels)))
            chosen.append(rng.choice(members, size=min(max(k, 1), len(members)), replace=False))
        return np.sort(np.concatenate(chosen))

    tr = pick(data.train_fine if data.train_fine is not None else data.train_labels, n_train)
    te = pick(data.test_fine if data.test_fine is not None else data.test_labels, n_test)
    out = copy.copy(data)
    if tr is not None:
        out.train = Subset(data.train, tr.tolist())
        out.train_labels = data.train_labels[tr]
        out.train_fine = None if data.train_fine is None else data.train_fine[tr]
    if te is not None:
        out.test = Subset(data.test, te.tolist())
        out.test_labels = data.test_labels[te]
        out.test_fine = None if data.test_fine is None else data.test_fine[te]
    return out


def load_data(config: ExperimentConfig, *, augment: bool) -> DataBundle:
    """The config's dataset (streamed), optionally subset; ``augment`` for training images."""
    d = config.data
    if d.dataset in ("digits", "digits-super"):
        data = load_digits(superclasses=d.dataset == "digits-super")
    else:
        if d.root is None:
            raise ConfigError("data.root", f"dataset {d.dataset!r} needs a data folder (set data.root or pass --data-root)")
        loader = {"cifar10": load_cifar10, "cifar100": load_cifar100, "cifar20": load_cifar20, "imagefolder": load_image_folder}[d.dataset]
        extra = {"in_memory": True} if d.in_memory else {}
        data = loader(d.root, augment=augment, size=image_size(config), **extra)
    if d.train_subset is not None or d.test_subset is not None:
        data = subset_bundle(data, d.train_subset, d.test_subset, seed=d.subset_seed)
    return data


def make_split(config: ExperimentConfig, data: DataBundle, target) -> ForgetSplit:
    """The forget split of one target of the config's scenario (``target`` is ignored for random forgetting)."""
    s = config.scenario
    if s.kind == "full_class":
        return full_class_split(data, target)
    if s.kind == "sub_class":
        return sub_class_split(data, target)
    return random_split(data, n=s.forget_n, fraction=s.forget_fraction, seed=s.split_seed)


def loader_options(config: ExperimentConfig, device: torch.device) -> dict:
    """``num_workers`` and ``pin_memory`` of the config's loaders on ``device``.

    Workers: ``data.num_workers``, else ``min(8, cpus)`` for image files on CUDA and 0
    otherwise (the in-memory digits never need workers). Memory is pinned on CUDA.
    """
    workers = config.data.num_workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" and not config.data.dataset.startswith("digits") else 0
    return {"num_workers": workers, "pin_memory": device.type == "cuda"}


def split_loaders(
    config: ExperimentConfig,
    train_data: DataBundle,
    eval_data: DataBundle,
    split: ForgetSplit,
    *,
    device: torch.device,
    seed: int = 0,
) -> SplitLoaders:
    """:func:`~lfssd_tutorial.request.build_split_loaders` with the config's batch size and loader
    options; with ``data.device_batches`` the retraining batches are :class:`~lfssd_tutorial.data.DeviceBatches`."""
    loaders = build_split_loaders(train_data, eval_data, split, batch_size=config.data.batch_size, seed=seed,
                                  **loader_options(config, device))
    if config.data.device_batches:
        loaders.retain_train = DeviceBatches(train_data.train, batch_size=config.data.batch_size, seed=seed,
                                             indices=split.retain, device=device)
    return loaders


def uses_channels_last(config: ExperimentConfig, device: torch.device) -> bool:
    """Whether the config's models run in channels_last memory format (the models, and the
    inputs of the importance passes): ResNets on CUDA, and the ResNet-9 on the CPU too
    (about 1.3x faster to train there; it has no strided 1x1 convolution, the layer whose
    channels_last training the package refuses on the CPU)."""
    return config.model.family == "resnet" and (device.type == "cuda" or config.model.name == "resnet9")


def model_factory(config: ExperimentConfig, data: DataBundle, device: torch.device) -> Callable[[], nn.Module]:
    """A function building a fresh, initialised model of the config for ``data``, on ``device``.

    The model takes ``data``'s input channels and classes; ``small_vit`` also its image
    size. A ``small_vit`` on data with other than three channels gets a patch embedding
    for that many channels. See :func:`uses_channels_last` for the memory format.
    """
    m = config.model

    def factory() -> nn.Module:
        kwargs = dict(m.options)
        if m.width is not None:
            kwargs["width"] = m.width
        if m.name == "vit_b_16":
            kwargs["pretrained"] = m.pretrained
        in_channels = data.input_shape[0]
        if m.name == "small_vit":
            kwargs.setdefault("image_size", data.input_shape[-1])
            model = build_model("small_vit", data.num_classes, **kwargs)
            if in_channels != 3:
                model.conv_proj = nn.Conv2d(in_channels, model.conv_proj.out_channels, model.patch_size, model.patch_size)
        else:
            model = build_model(m.name, data.num_classes, in_channels=in_channels, **kwargs)
        model = model.to(device)
        if uses_channels_last(config, device):
            model = model.to(memory_format=torch.channels_last)
        return model

    return factory
