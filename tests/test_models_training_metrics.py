"""Models build with the right shapes; training learns; metrics behave."""

import numpy as np
import pytest
import torch
from torch import nn

from lfssd_tutorial.data import load_digits, make_loader
from lfssd_tutorial.metrics import entropy_mia, softmax_entropy
from lfssd_tutorial.models import SmallCNN, build_model, cifar_resnet18, count_parameters, small_vit
from lfssd_tutorial.training import TrainConfig, evaluate_accuracy, predict, seed_everything, train_model


def test_cifar_resnet18_shapes():
    model = cifar_resnet18(10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.in_features == 512 and model.fc.out_features == 10
    assert count_parameters(model) == 11_173_962
    small = cifar_resnet18(20, width=8)
    assert small.fc.in_features == 64
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 20)


def test_small_vit_and_build_model():
    assert small_vit(10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("small_cnn", 5, in_channels=1)(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet50", 10)


def test_vit_b_16_head():
    model = build_model("vit_b_16", 20, pretrained=False)
    assert model.heads.head.out_features == 20 and model.heads.head.in_features == 768


def test_training_learns_and_is_reproducible():
    data = load_digits()

    def run():
        seed_everything(0)
        model = SmallCNN(width=8)
        train_model(model, make_loader(data.train, shuffle=True), TrainConfig(epochs=3, lr=0.05, milestones=(2,)), device="cpu")
        return model

    a, b = run(), run()
    acc = evaluate_accuracy(a, make_loader(data.test))
    assert acc > 80.0
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not a.training


def test_accuracy_is_sample_weighted():
    """A mean of per-batch accuracies over-weights a small last batch; ours does not."""

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.stack([x[:, 0], -x[:, 0]], dim=1) + self.w

    # 4 samples predicted right (batch 1), then 1 predicted wrong (batch 2): 80%, not (100 + 0) / 2.
    x = torch.tensor([[1.0], [1.0], [1.0], [1.0], [-1.0]])
    y = torch.zeros(5, dtype=torch.long)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    assert evaluate_accuracy(Constant(), batches) == pytest.approx(80.0)
    logits, labels = predict(Constant(), batches)
    assert logits.shape == (5, 2) and torch.equal(labels, y)


def test_softmax_entropy():
    uniform = torch.zeros(1, 4)
    assert softmax_entropy(uniform).item() == pytest.approx(np.log(4))
    assert softmax_entropy(torch.tensor([[100.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_mia_separates_confident_members():
    """Confident (low-entropy) forget samples look like members; high-entropy ones do not."""

    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w

    g = torch.Generator().manual_seed(0)
    confident = lambda n: torch.randn(n, 3, generator=g) + torch.tensor([12.0, 0.0, 0.0])  # noqa: E731
    unsure = lambda n: torch.randn(n, 3, generator=g) * 0.1  # noqa: E731
    retain, test = [confident(50)], [unsure(50)]
    assert entropy_mia(Lookup(), retain, [confident(20)], test) == pytest.approx(100.0)
    assert entropy_mia(Lookup(), retain, [unsure(20)], test) == pytest.approx(0.0)
