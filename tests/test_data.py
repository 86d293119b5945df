"""Datasets, splits and loaders (bundled digits, fake CIFAR files in the official format, ImageFolder)."""

import numpy as np
import pytest
import torch

from lfssd_tutorial.data import (
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    CIFAR100_FINE_TO_COARSE,
    ForgetSplit,
    Relabelled,
    full_class_split,
    load_cifar10,
    load_cifar20,
    load_cifar100,
    load_digits,
    load_image_folder,
    make_loader,
    random_split,
    sub_class_split,
)

from .fake_data import bypass_torchvision_checksums, write_cifar10, write_cifar100, write_image_folder

# The five CIFAR-100 classes forgotten in the papers and their superclasses.
PAPER_PAIRS = {
    "rocket": "vehicles_2",
    "mushroom": "fruit_and_vegetables",
    "baby": "people",
    "lamp": "household_electrical_devices",
    "sea": "large_natural_outdoor_scenes",
}


def test_cifar100_superclass_map():
    assert len(CIFAR100_FINE_CLASSES) == 100 and len(CIFAR100_COARSE_CLASSES) == 20
    counts = np.bincount(CIFAR100_FINE_TO_COARSE, minlength=20)
    assert (counts == 5).all()  # every superclass holds exactly five classes
    more = {"apple": "fruit_and_vegetables", "bicycle": "vehicles_1", "whale": "aquatic_mammals", "oak_tree": "trees", "tractor": "vehicles_2", "woman": "people"}
    for fine, coarse in {**PAPER_PAIRS, **more}.items():
        assert CIFAR100_COARSE_CLASSES[CIFAR100_FINE_TO_COARSE[CIFAR100_FINE_CLASSES.index(fine)]] == coarse


def test_digits_and_full_class_split():
    data = load_digits()
    assert len(data.train) == 1347 and len(data.test) == 450 and data.num_classes == 10
    x, y = data.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    split = full_class_split(data, 8)
    assert split.target == "8"
    assert (data.train_labels[split.forget] == 8).all() and (data.train_labels[split.retain] != 8).all()
    assert len(split.forget) + len(split.retain) == len(data.train)
    assert (data.test_labels[split.test_forget] == 8).all() and (data.test_labels[split.test_retain] != 8).all()
    assert all(int(y) == 8 for _, y in split.forget_set(data))


def test_digits_sub_class_split_keeps_superclass_labels():
    data = load_digits(superclasses=True)
    assert data.num_classes == 5 and data.fine_classes is not None
    split = sub_class_split(data, "8")
    assert split.meta["superclass"] == "three_eight"
    labels = {int(y) for _, y in split.forget_set(data)}
    assert labels == {data.class_index("three_eight")}
    assert {int(y) for _, y in split.test_forget_set(data)} == {data.class_index("three_eight")}
    # the other member of the superclass stays in the retain set
    assert (data.train_fine[split.retain] == 3).any()


def test_random_split_seeded_and_saved(tmp_path):
    data = load_digits()
    a = random_split(data, n=83, seed=3)
    b = random_split(data, n=83, seed=3)
    c = random_split(data, n=83, seed=4)
    assert np.array_equal(a.forget, b.forget) and not np.array_equal(a.forget, c.forget)
    assert len(a.forget) == 83 and len(np.intersect1d(a.forget, a.retain)) == 0
    assert a.test_forget is None and len(a.test_forget_set(data)) == 83  # Acc(D_f) on the forgotten samples
    assert len(random_split(data, fraction=0.1).forget) == 134
    path = tmp_path / "split.json"
    a.save(path)
    loaded = ForgetSplit.load(path)
    assert np.array_equal(loaded.forget, a.forget) and loaded.seed == 3 and loaded.scenario == "random"


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda d: full_class_split(d, "eleven"), "unknown class 'eleven'"),
        (lambda d: full_class_split(d, 12), "out of range"),
        (lambda d: sub_class_split(d, "3"), "no fine labels"),
        (lambda d: random_split(d, n=0), "n must be"),
        (lambda d: random_split(d, fraction=1.5), "fraction"),
        (lambda d: random_split(d), "exactly one of n or fraction"),
    ],
)
def test_split_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(load_digits())


def test_loader_is_seeded():
    data = load_digits()
    first = lambda seed: next(iter(make_loader(data.train, batch_size=16, shuffle=True, seed=seed)))[1]  # noqa: E731
    assert torch.equal(first(1), first(1)) and not torch.equal(first(1), first(2))


def test_relabelled_replaces_or_converts_labels():
    base = torch.utils.data.TensorDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([4, 5, 6]))
    relabelled = Relabelled(base, np.array([0, 1, 2]))
    assert len(relabelled) == 3
    x, y = relabelled[2]
    assert torch.equal(x, base[2][0]) and y == 2 and type(y) is int
    x, y = Relabelled(base)[1]
    assert torch.equal(x, base[1][0]) and y == 5 and type(y) is int
    with pytest.raises(ValueError, match="one label per sample"):
        Relabelled(base, [0, 1])


def test_loader_persistent_workers():
    data = load_digits()
    assert not make_loader(data.test).persistent_workers
    assert make_loader(data.test, num_workers=1).persistent_workers
    assert not make_loader(data.test, num_workers=1, persistent_workers=False).persistent_workers


def test_cifar10_official_format(tmp_path, monkeypatch):
    bypass_torchvision_checksums(monkeypatch)
    write_cifar10(str(tmp_path))
    data = load_cifar10(tmp_path, augment=False)
    assert len(data.train) == 100 and len(data.test) == 30 and data.classes[0] == "airplane"
    x, y = data.train[3]
    assert x.shape == (3, 32, 32) and y == 3
    split = full_class_split(data, "cat")
    assert len(split.forget) == 10 and len(split.test_forget) == 3
    big = load_cifar10(tmp_path, augment=True, size=64)
    assert big.train[0][0].shape == (3, 64, 64)


def test_cifar100_and_cifar20(tmp_path, monkeypatch):
    bypass_torchvision_checksums(monkeypatch)
    write_cifar100(str(tmp_path))
    c100 = load_cifar100(tmp_path, augment=False)
    assert c100.num_classes == 100 and c100.classes[69] == "rocket"
    c20 = load_cifar20(tmp_path, augment=False)
    assert c20.num_classes == 20 and len(c20.train) == 200
    for fine, coarse in PAPER_PAIRS.items():
        f = CIFAR100_FINE_CLASSES.index(fine)
        idx = np.flatnonzero(c20.train_fine == f)
        assert len(idx) == 2
        for i in idx:
            _, label = c20.train[int(i)]
            assert c20.classes[label] == coarse
        full = full_class_split(c20, coarse)  # full-class CIFAR-20: the whole superclass
        assert len(full.forget) == 10
        sub = sub_class_split(c20, fine)  # sub-class: the fine class, labelled by its superclass
        assert len(sub.forget) == 2 and sub.meta["superclass"] == coarse
        assert {c20.classes[y] for _, y in sub.test_forget_set(c20)} == {coarse}


def test_image_folder(tmp_path):
    write_image_folder(str(tmp_path))
    data = load_image_folder(tmp_path, augment=False)
    assert data.classes == ["cat", "dog", "ship"] and len(data.train) == 12
    x, y = data.train[5]
    assert x.shape == (3, 32, 32) and y == 1
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        load_image_folder(tmp_path / "train")
