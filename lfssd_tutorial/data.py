"""Datasets and forget/retain/test splits.

Every dataset is a :class:`DataBundle`: a training and a test ``Dataset`` yielding
``(image, label)`` plus the label arrays needed to build splits without touching the
images. Images stream from disk (or from one in-memory tensor for the bundled digits
data) through transforms; no dataset is ever materialised as a list of tensors.

Sources:

* :func:`load_digits` — the bundled default: scikit-learn's 8x8 handwritten digits
  (1,797 images, 10 classes), available offline.
* :func:`load_cifar10`, :func:`load_cifar100`, :func:`load_cifar20` — torchvision's
  CIFAR files; CIFAR-20 labels CIFAR-100 images by their 20 superclasses and keeps the
  fine labels for sub-class forgetting.
* :func:`load_image_folder` — any ``root/train/<class>/*`` and ``root/test/<class>/*`` tree,
  e.g. CIFAR-10 exported as JPEG files; streamed from disk, or decoded once into memory
  (:class:`ImageTensor`), whose training batches can be cut and augmented on the device
  itself (:class:`DeviceBatches`).

Splits (:class:`ForgetSplit`): full-class, sub-class and random forgetting as in the
papers' protocol, with indices that can be saved to and loaded from JSON.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .utils import atomic_write_text

__all__ = [
    "CIFAR100_FINE_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_TO_COARSE",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DIGITS_SUPERCLASSES",
    "DataBundle",
    "ForgetSplit",
    "load_digits",
    "load_cifar10",
    "load_cifar100",
    "load_cifar20",
    "load_image_folder",
    "full_class_split",
    "sub_class_split",
    "random_split",
    "make_loader",
    "Relabelled",
    "ImageTensor",
    "DeviceBatches",
    "cifar_transforms",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR100_FINE_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables "
    "household_electrical_devices household_furniture insects large_carnivores "
    "large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores "
    "medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2"
).split()

#: The official CIFAR-100 fine-label -> superclass (coarse-label) map, indexed by fine label.
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)

#: A grouping of the ten digits into five "superclasses", made up for this project so
#: that sub-class forgetting can be demonstrated on the bundled data (digits have no
#: natural superclasses).
DIGITS_SUPERCLASSES = (("zero_six", (0, 6)), ("one_seven", (1, 7)), ("two_five", (2, 5)),
                       ("three_eight", (3, 8)), ("four_nine", (4, 9)))


@dataclass
class DataBundle:
    """A dataset ready for unlearning experiments.

    Attributes:
        name: e.g. ``"digits"``, ``"cifar10"``, ``"cifar20"``.
        train, test: datasets yielding ``(image tensor, label)``.
        train_labels, test_labels: the task labels as integer arrays (what the model predicts).
        classes: names of the task labels.
        train_fine, test_fine, fine_classes: fine labels for sub-class forgetting
            (CIFAR-20 and the digits superclass view), else ``None``.
        input_shape: shape of one image, e.g. ``(3, 32, 32)``.
    """

    name: str
    train: Dataset
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    input_shape: tuple[int, ...]
    train_fine: np.ndarray | None = None
    test_fine: np.ndarray | None = None
    fine_classes: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_index(self, name: str | int) -> int:
        """The task-label index of a class given by name or index."""
        return _index(name, self.classes, "class", self.name)

    def fine_index(self, name: str | int) -> int:
        if self.fine_classes is None:
            raise ValueError(f"dataset {self.name!r} has no fine labels: sub-class forgetting needs e.g. cifar20")
        return _index(name, self.fine_classes, "fine class", self.name)


def _index(name: str | int, names: Sequence[str], what: str, dataset: str) -> int:
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if not 0 <= int(name) < len(names):
            raise ValueError(f"{what} index {name} is out of range for {dataset!r} ({len(names)} classes)")
        return int(name)
    if name not in names:
        raise ValueError(f"unknown {what} {name!r} for dataset {dataset!r}; known: {', '.join(names)}")
    return list(names).index(name)


class Relabelled(Dataset):
    """``base``'s samples with integer labels: ``(x, int(labels[i]))`` for the ``i``-th sample.

    Without ``labels``, the label is ``base``'s own (its last item) as a Python ``int``, so
    datasets with tensor and integer labels can be concatenated.
    """

    def __init__(self, base: Dataset, labels: Sequence[int] | np.ndarray | None = None):
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if len(labels) != len(base):
                raise ValueError(f"one label per sample needed: {len(labels)} labels for {len(base)} samples")
        self.base, self.labels = base, labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        item = self.base[i]
        return item[0], int(item[-1] if self.labels is None else self.labels[i])


# ---------------------------------------------------------------------------- digits


def load_digits(*, superclasses: bool = False, test_fraction: float = 0.25, seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits as a 1x8x8 image dataset, split stratified into train/test.

    Pixels are scaled to [0, 1] and standardised with the training mean/std. With
    ``superclasses=True`` the task labels are :data:`DIGITS_SUPERCLASSES` (five groups
    of two digits) and the digits themselves are kept as fine labels, for sub-class
    forgetting on the bundled data.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    raw = _sk_digits()
    images = (raw.images / 16.0).astype(np.float32)
    digits = raw.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(digits)), test_size=test_fraction, random_state=seed, stratify=digits
    )
    mean, std = images[idx_train].mean(), images[idx_train].std()
    x = torch.from_numpy((images - mean) / std).unsqueeze(1)
    digit_names = [str(d) for d in range(10)]
    if superclasses:
        coarse_of = np.zeros(10, dtype=np.int64)
        for k, (_, members) in enumerate(DIGITS_SUPERCLASSES):
            coarse_of[list(members)] = k
        labels = coarse_of[digits]
        classes = [name for name, _ in DIGITS_SUPERCLASSES]
        fine, fine_classes = digits, digit_names
    else:
        labels, classes, fine, fine_classes = digits, digit_names, None, None
    y = torch.from_numpy(labels)
    return DataBundle(
        name="digits-super" if superclasses else "digits",
        train=TensorDataset(x[idx_train], y[idx_train]),
        test=TensorDataset(x[idx_test], y[idx_test]),
        train_labels=labels[idx_train],
        test_labels=labels[idx_test],
        classes=classes,
        input_shape=(1, 8, 8),
        train_fine=None if fine is None else fine[idx_train],
        test_fine=None if fine is None else fine[idx_test],
        fine_classes=fine_classes,
    )


# ---------------------------------------------------------------------------- CIFAR


def cifar_transforms(mean: Sequence[float], std: Sequence[float], *, augment: bool, size: int = 32):
    """The papers' CIFAR transforms: crop 32 pad 4, flip, rotation 15 (train), normalise.

    ``size`` other than 32 resizes on the fly (e.g. 224 for ViT-B/16).
    """
    from torchvision import transforms as T

    steps = []
    if augment:
        steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.RandomRotation(15)]
    if size != 32:
        steps.append(T.Resize(size, antialias=True))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def load_cifar10(root: str | os.PathLike, *, download: bool = False, augment: bool = True, size: int = 32) -> DataBundle:
    """CIFAR-10 through :class:`torchvision.datasets.CIFAR10` (``root`` holds ``cifar-10-batches-py``)."""
    from torchvision.datasets import CIFAR10

    train = CIFAR10(root, train=True, download=download, transform=cifar_transforms(CIFAR10_MEAN, CIFAR10_STD, augment=augment, size=size))
    test = CIFAR10(root, train=False, download=download, transform=cifar_transforms(CIFAR10_MEAN, CIFAR10_STD, augment=False, size=size))
    return DataBundle(
        name="cifar10",
        train=train,
        test=test,
        train_labels=np.asarray(train.targets, dtype=np.int64),
        test_labels=np.asarray(test.targets, dtype=np.int64),
        classes=list(train.classes),
        input_shape=(3, size, size),
    )


def _cifar100_coarse(root: str | os.PathLike, train: bool) -> np.ndarray:
    from torchvision.datasets import CIFAR100

    path = os.path.join(os.fspath(root), CIFAR100.base_folder, "train" if train else "test")
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return np.asarray(entry["coarse_labels"], dtype=np.int64)


def load_cifar100(root: str | os.PathLike, *, download: bool = False, augment: bool = True, size: int = 32) -> DataBundle:
    """CIFAR-100 (fine labels) through :class:`torchvision.datasets.CIFAR100`."""
    from torchvision.datasets import CIFAR100

    train = CIFAR100(root, train=True, download=download, transform=cifar_transforms(CIFAR100_MEAN, CIFAR100_STD, augment=augment, size=size))
    test = CIFAR100(root, train=False, download=download, transform=cifar_transforms(CIFAR100_MEAN, CIFAR100_STD, augment=False, size=size))
    return DataBundle(
        name="cifar100",
        train=train,
        test=test,
        train_labels=np.asarray(train.targets, dtype=np.int64),
        test_labels=np.asarray(test.targets, dtype=np.int64),
        classes=list(train.classes),
        input_shape=(3, size, size),
    )


def load_cifar20(root: str | os.PathLike, *, download: bool = False, augment: bool = True, size: int = 32) -> DataBundle:
    """CIFAR-100 images labelled by their 20 superclasses; fine labels kept for sub-class forgetting.

    The superclass labels are read from the CIFAR-100 files themselves (``coarse_labels``).
    """
    fine = load_cifar100(root, download=download, augment=augment, size=size)
    train_coarse = _cifar100_coarse(root, True)
    test_coarse = _cifar100_coarse(root, False)
    return DataBundle(
        name="cifar20",
        train=Relabelled(fine.train, train_coarse),
        test=Relabelled(fine.test, test_coarse),
        train_labels=train_coarse,
        test_labels=test_coarse,
        classes=list(CIFAR100_COARSE_CLASSES),
        input_shape=fine.input_shape,
        train_fine=fine.train_labels,
        test_fine=fine.test_labels,
        fine_classes=fine.classes,
    )


class ImageTensor(Dataset):
    """Images held in memory as one ``uint8`` tensor ``(N, C, H, W)``, normalised on the fly.

    ``augment`` applies the fast CIFAR recipes' augmentation to each sample: a random
    crop of the image padded by ``padding`` zero pixels on each side (torchvision's
    ``RandomCrop(size, padding)``) and a random horizontal flip, drawn from torch's global
    generator. Items are ``(float image, int label)``.
    """

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | np.ndarray, mean: Sequence[float], std: Sequence[float],
                 *, augment: bool = False, padding: int = 4):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} of shape {tuple(images.shape)}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(images):
            raise ValueError(f"one label per image needed: {len(labels)} labels for {len(images)} images")
        self.images, self.labels, self.augment, self.padding = images, labels, augment, padding
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.augment:
            p, (h, w) = self.padding, x.shape[-2:]
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = torch.nn.functional.pad(x, (p, p, p, p))[:, dy:dy + h, dx:dx + w]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x.float() / 255 - self.mean) / self.std, int(self.labels[i])


class DeviceBatches:
    """Shuffled, augmented batches of an :class:`ImageTensor`'s images, cut on ``device``.

    The uint8 images are copied to ``device`` once (CIFAR-10: 150 MB); every batch is
    indexed, cropped, flipped and normalised there, so a GPU is never waiting for a
    loader. The augmentation is :class:`ImageTensor`'s (a crop of the image padded by
    ``padding`` zero pixels, a horizontal flip) drawn per sample from a CPU generator
    seeded with ``seed``, so a seed gives the same batches on every device. ``indices``
    selects the samples (default: all). Iterating yields ``(images, labels)`` on
    ``device``, one epoch per iteration; ``len()`` is the number of batches.
    """

    def __init__(self, data: Dataset, *, batch_size: int, seed: int = 0, shuffle: bool = True, augment: bool = True,
                 indices: Sequence[int] | np.ndarray | None = None, device: str | torch.device = "cpu", padding: int = 4):
        base, idx = data, np.arange(len(data))
        while isinstance(base, Subset):  # compose the indices of nested subsets down to the images
            idx = np.asarray(base.indices)[idx]
            base = base.dataset
        if not isinstance(base, ImageTensor):
            raise TypeError(f"DeviceBatches needs an ImageTensor (or a Subset of one), got {type(base).__name__}")
        if indices is not None:
            idx = idx[np.asarray(indices, dtype=np.int64)]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = _on_device(base.images, self.device)
        self.labels = torch.from_numpy(base.labels).to(self.device)
        self.index = torch.from_numpy(idx).to(self.device)
        self.mean, self.std = base.mean.to(self.device), base.std.to(self.device)
        self.batch_size, self.shuffle, self.augment, self.padding = batch_size, shuffle, augment, padding
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self):
        n = len(self.index)
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else torch.arange(n, device=self.device)
        for start in range(0, n, self.batch_size):
            idx = self.index[order[start:start + self.batch_size]]
            x = self.images[idx]
            if self.augment:
                x = self._crop_and_flip(x)
            yield (x.float() / 255 - self.mean) / self.std, self.labels[idx]

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        # ImageTensor's augmentation, for a whole batch at once by advanced indexing. One image
        # at a time, ImageTensor's plain slice is about 7x faster on the CPU, so both are kept.
        b, c, h, w = x.shape
        p = self.padding
        shifts = torch.randint(0, 2 * p + 1, (b, 2), generator=self.generator).to(self.device)
        flips = (torch.rand(b, generator=self.generator) < 0.5).to(self.device)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        rows = (shifts[:, :1] + torch.arange(h, device=self.device))[:, None, :, None]
        cols = (shifts[:, 1:] + torch.arange(w, device=self.device))[:, None, None, :]
        batch = torch.arange(b, device=self.device)[:, None, None, None]
        channel = torch.arange(c, device=self.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
        return torch.where(flips[:, None, None, None], x.flip(-1), x)


_DEVICE_COPIES: dict = {}


def _on_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One copy of ``images`` per device, shared by every :class:`DeviceBatches` of them."""
    if images.device == device:
        return images
    key = (id(images), str(device))
    if key not in _DEVICE_COPIES:
        _DEVICE_COPIES.clear()  # keep one data set's copy at a time
        _DEVICE_COPIES[key] = (images, images.to(device))
    return _DEVICE_COPIES[key][1]


@functools.lru_cache(maxsize=4)
def _decode_folder(folder: str) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Every image of an ``ImageFolder`` tree as one uint8 tensor ``(N, 3, H, W)``, its labels and class names.

    Cached: the augmented and the plain view of a tree share one decoded tensor (never modified).
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder

    tree = ImageFolder(folder)
    if not tree.samples:
        raise ValueError(f"{folder!r} holds no images")
    arrays = []
    for path, _ in tree.samples:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images of {folder!r} differ in size ({sorted(shapes)[:3]}...); in_memory needs one size")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, np.asarray(tree.targets, dtype=np.int64), list(tree.classes)


def load_image_folder(
    root: str | os.PathLike,
    *,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    augment: bool = True,
    size: int = 32,
    name: str = "imagefolder",
    in_memory: bool = False,
) -> DataBundle:
    """An ``ImageFolder`` tree with ``train/`` and ``test/`` sub-folders of class folders.

    For example CIFAR-10 exported as JPEGs: ``root/train/airplane/0001.jpg``. By default
    images are decoded lazily, one at a time, with the papers' CIFAR transforms (``size``
    resizes on the fly). With ``in_memory`` every image is decoded once into an
    :class:`ImageTensor` (CIFAR-10: 150 MB of uint8 for 50,000 training images), augmented
    by crop and flip only (no rotation), at the images' own size, which must be ``size``.
    """
    root = os.fspath(root)
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"{root!r} has no {split}/ folder; expected {root}/{{train,test}}/<class>/<image>")
    if in_memory:
        train_x, train_y, classes = _decode_folder(os.path.join(root, "train"))
        test_x, test_y, test_classes = _decode_folder(os.path.join(root, "test"))
        if classes != test_classes:
            raise ValueError(f"train and test class folders differ: {classes} vs {test_classes}")
        if train_x.shape[1:] != test_x.shape[1:] or train_x.shape[-1] != size:
            raise ValueError(f"in_memory images must all be {size}x{size}; got train {tuple(train_x.shape[1:])}, "
                             f"test {tuple(test_x.shape[1:])}")
        train = ImageTensor(train_x, train_y, mean, std, augment=augment)
        test = ImageTensor(test_x, test_y, mean, std, augment=False)
        return DataBundle(name=name, train=train, test=test, train_labels=train_y, test_labels=test_y, classes=classes,
                          input_shape=tuple(train_x.shape[1:]))

    from torchvision.datasets import ImageFolder

    train = ImageFolder(os.path.join(root, "train"), transform=cifar_transforms(mean, std, augment=augment, size=size))
    test = ImageFolder(os.path.join(root, "test"), transform=cifar_transforms(mean, std, augment=False, size=size))
    if train.classes != test.classes:
        raise ValueError(f"train and test class folders differ: {train.classes} vs {test.classes}")
    return DataBundle(
        name=name,
        train=train,
        test=test,
        train_labels=np.asarray(train.targets, dtype=np.int64),
        test_labels=np.asarray(test.targets, dtype=np.int64),
        classes=list(train.classes),
        input_shape=(3, size, size),
    )


# ---------------------------------------------------------------------------- splits


@dataclass
class ForgetSplit:
    """Which training samples to forget, and which test samples measure what.

    Attributes:
        scenario: ``"full_class"``, ``"sub_class"`` or ``"random"``.
        target: the forgotten class (full/sub-class) or ``None`` (random).
        forget: training indices of ``D_f``.
        retain: training indices of ``D_r`` (the rest).
        test_retain: test indices for Acc(D_r) (retained classes; the whole test set for random).
        test_forget: test indices for Acc(D_f) (the forgotten class); ``None`` for random,
            where Acc(D_f) is measured on the forgotten training samples.
        seed: the seed that drew a random split.
    """

    scenario: str
    target: str | None
    forget: np.ndarray
    retain: np.ndarray
    test_retain: np.ndarray
    test_forget: np.ndarray | None
    seed: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.forget) == 0:
            raise ValueError(f"the forget set of {self.scenario} split {self.target!r} is empty")
        if np.intersect1d(self.forget, self.retain).size:
            raise ValueError("forget and retain indices overlap")

    def to_dict(self) -> dict:
        as_list = lambda a: None if a is None else [int(i) for i in a]  # noqa: E731
        return {
            "scenario": self.scenario,
            "target": self.target,
            "seed": self.seed,
            "meta": self.meta,
            "forget": as_list(self.forget),
            "retain": as_list(self.retain),
            "test_retain": as_list(self.test_retain),
            "test_forget": as_list(self.test_forget),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the split's indices as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ForgetSplit":
        with open(os.fspath(path)) as f:
            d = json.load(f)
        arr = lambda a: None if a is None else np.asarray(a, dtype=np.int64)  # noqa: E731
        return cls(
            scenario=d["scenario"],
            target=d["target"],
            forget=arr(d["forget"]),
            retain=arr(d["retain"]),
            test_retain=arr(d["test_retain"]),
            test_forget=arr(d["test_forget"]),
            seed=d.get("seed"),
            meta=d.get("meta", {}),
        )

    # Subsets --------------------------------------------------------------
    def forget_set(self, data: DataBundle) -> Dataset:
        return Subset(data.train, self.forget.tolist())

    def retain_set(self, data: DataBundle) -> Dataset:
        return Subset(data.train, self.retain.tolist())

    def test_retain_set(self, data: DataBundle) -> Dataset:
        return Subset(data.test, self.test_retain.tolist())

    def test_forget_set(self, data: DataBundle) -> Dataset:
        """Test data for Acc(D_f): the forgotten class's test images, or (random) the forgotten training samples."""
        if self.test_forget is None:
            return self.forget_set(data)
        return Subset(data.test, self.test_forget.tolist())


def full_class_split(data: DataBundle, target: str | int) -> ForgetSplit:
    """Forget every training image of one class."""
    c = data.class_index(target)
    return ForgetSplit(
        scenario="full_class",
        target=data.classes[c],
        forget=np.flatnonzero(data.train_labels == c),
        retain=np.flatnonzero(data.train_labels != c),
        test_retain=np.flatnonzero(data.test_labels != c),
        test_forget=np.flatnonzero(data.test_labels == c),
    )


def sub_class_split(data: DataBundle, target: str | int) -> ForgetSplit:
    """Forget every training image of one *fine* class while the model keeps its superclass.

    Acc(D_f) is then accuracy on the fine class's test images w.r.t. the superclass label.
    """
    f = data.fine_index(target)
    assert data.train_fine is not None and data.test_fine is not None
    return ForgetSplit(
        scenario="sub_class",
        target=data.fine_classes[f],
        forget=np.flatnonzero(data.train_fine == f),
        retain=np.flatnonzero(data.train_fine != f),
        test_retain=np.flatnonzero(data.test_fine != f),
        test_forget=np.flatnonzero(data.test_fine == f),
        meta={"superclass": data.classes[int(data.train_labels[data.train_fine == f][0])] if (data.train_fine == f).any() else None},
    )


def random_split(data: DataBundle, *, n: int | None = None, fraction: float | None = None, seed: int = 0) -> ForgetSplit:
    """Forget a random subset of training samples: ``n`` of them, or ``fraction`` of the set.

    The papers' CIFAR-10 setting is ``fraction=0.00165`` (83 samples). Acc(D_r) is then
    measured on the whole test set and Acc(D_f) on the forgotten samples themselves.
    """
    total = len(data.train_labels)
    if (n is None) == (fraction is None):
        raise ValueError("give exactly one of n or fraction")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        n = int(total * fraction)
    assert n is not None
    if not 0 < n < total:
        raise ValueError(f"n must be in [1, {total - 1}], got {n}")
    rng = np.random.default_rng(seed)
    forget = np.sort(rng.choice(total, size=n, replace=False))
    retain = np.setdiff1d(np.arange(total), forget)
    return ForgetSplit(
        scenario="random",
        target=None,
        forget=forget,
        retain=retain,
        test_retain=np.arange(len(data.test_labels)),
        test_forget=None,
        seed=seed,
    )


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """A DataLoader with an explicit generator seeded with ``seed`` (deterministic shuffling).

    ``persistent_workers`` keeps the worker processes between epochs; by default it is on
    whenever ``num_workers > 0``. Turn it off for a loader that is iterated only once or twice.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
    )
