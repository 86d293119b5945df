"""Tiny datasets written in the official on-disk formats, for offline tests."""

from __future__ import annotations

import os
import pickle

import numpy as np

from lfssd_tutorial.data import CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES, CIFAR100_FINE_TO_COARSE

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: str, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> None:
    """cifar-10-batches-py with 5 training batches of ``per_batch`` images and one test batch."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(base, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        labels = [int(i % 10) for i in range(n)]
        entry = {"batch_label": name, "labels": labels, "data": _images(n, rng), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(os.path.join(base, name), "wb") as f:
            pickle.dump(entry, f)
    with open(os.path.join(base, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)


def write_cifar100(root: str, n_train: int = 200, n_test: int = 100, seed: int = 0) -> None:
    """cifar-100-python with every fine class present (cycled), coarse labels from the official map."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "cifar-100-python")
    os.makedirs(base, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(i % 100) for i in range(n)]
        coarse = [CIFAR100_FINE_TO_COARSE[f] for f in fine]
        entry = {"batch_label": name, "fine_labels": fine, "coarse_labels": coarse, "data": _images(n, rng), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(os.path.join(base, name), "wb") as f:
            pickle.dump(entry, f)
    with open(os.path.join(base, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": list(CIFAR100_FINE_CLASSES), "coarse_label_names": list(CIFAR100_COARSE_CLASSES)}, f)


def write_image_folder(root: str, classes=("cat", "dog", "ship"), per_class: int = 4, seed: int = 0) -> None:
    """root/{train,test}/<class>/<i>.jpg with random 32x32 RGB JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            folder = os.path.join(root, split, c)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i:04d}.jpg"))


def bypass_torchvision_checksums(monkeypatch) -> None:
    """Fake files cannot match torchvision's md5 sums: skip that check (tests only)."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
