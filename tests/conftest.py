import pytest
import torch

from lfssd_tutorial.models import SmallCNN


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def make_cnn(seed: int = 0, width: int = 4, num_classes: int = 5) -> SmallCNN:
    """A small CNN with BatchNorm whose running statistics are not the defaults."""
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=1, num_classes=num_classes, width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def make_batches(n: int = 23, batch_size: int = 8, num_classes: int = 5, seed: int = 1):
    """(x, y) batches with an uneven last batch (8, 8, 7 by default)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


@pytest.fixture
def cnn():
    return make_cnn()


@pytest.fixture
def batches():
    return make_batches()
