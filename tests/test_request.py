"""The forget request: loaders, evaluation, and the digits request the chapters build."""

import pytest
import torch
from torch.utils.data import ConcatDataset

from lfssd_tutorial.data import full_class_split, load_digits, make_loader
from lfssd_tutorial.metrics import accuracy, entropy_mia
from lfssd_tutorial.models import SmallCNN
from lfssd_tutorial.digits import DIGITS_TRAIN_CONFIG, digits_config, digits_request
from lfssd_tutorial.experiments import run_forget, store
from lfssd_tutorial.request import build_split_loaders, evaluate_request
from lfssd_tutorial.training import TrainConfig, seed_everything, train_model


# The chapters train for 30 epochs; a 3-epoch recipe exercises the same code in a few seconds.
SHORT = TrainConfig(epochs=3, lr=0.05, milestones=(2,))


@pytest.fixture(scope="module")
def request_8():
    torch.set_num_threads(2)
    return digits_request(train_config=SHORT)


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_digits_request_is_the_chapters_model(request_8):
    # what chapters 1-7 wrote out before the request had a function of its own
    data = load_digits()
    split = full_class_split(data, 8)
    assert DIGITS_TRAIN_CONFIG == TrainConfig(epochs=30, lr=0.05, milestones=(15, 25))  # the chapters' recipe
    config = SHORT
    assert request_8.train_config == config
    seed_everything(0)
    original = SmallCNN(in_channels=1, num_classes=10, width=16)
    train_model(original, make_loader(data.train, batch_size=64, shuffle=True, seed=0), config, device="cpu")
    _equal(request_8.original, original)

    seed_everything(1)
    retrained = SmallCNN(in_channels=1, num_classes=10, width=16)
    train_model(retrained, make_loader(split.retain_set(data), batch_size=64, shuffle=True, seed=0), config, device="cpu")
    _equal(request_8.retrained(), retrained)

    loaders = {
        "retain": make_loader(split.retain_set(data), batch_size=64),
        "forget": make_loader(split.forget_set(data), batch_size=64),
        "test": make_loader(data.test, batch_size=64),
        "test_retain": make_loader(split.test_retain_set(data), batch_size=64),
        "test_forget": make_loader(split.test_forget_set(data), batch_size=64),
    }
    expected = {
        "acc_retain": accuracy(original, loaders["test_retain"]),
        "acc_forget": accuracy(original, loaders["test_forget"]),
        "mia": entropy_mia(original, loaders["retain"], loaders["forget"], loaders["test"]),
    }
    assert request_8.evaluate(request_8.original) == expected


def test_digits_request_loaders(request_8):
    r = request_8
    assert r.split.target == "8" and r.loaders.forget_class == 8 and r.loaders.num_classes == 10
    assert len(r.loaders.full.dataset) == len(r.data.train)
    assert r.loaders.retain.batch_size == 64
    assert (r.loaders.forget_labels == 8).all()
    # D is D_r then D_f, unshuffled
    full = ConcatDataset([r.split.retain_set(r.data), r.split.forget_set(r.data)])
    for got, want in zip(r.loaders.full, make_loader(full, batch_size=64)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    model = r.make_model()
    assert isinstance(model, SmallCNN) and model.classifier.out_features == 10


def test_build_split_loaders_and_evaluate_request():
    data = load_digits()
    split = full_class_split(data, 3)
    loaders = build_split_loaders(data, data, split, batch_size=32, seed=4)
    assert loaders.seed == 4 and loaders.forget_class == 3
    assert loaders.retain_train.batch_size == 32 and loaders.test.batch_size == 32
    assert len(loaders.test_forget.dataset) == len(split.test_forget)
    model = SmallCNN(1, 10, width=4)
    metrics = evaluate_request(model, loaders)
    assert set(metrics) == {"acc_retain", "acc_forget", "mia"}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())


def test_digits_request_scenarios():
    fast = TrainConfig(epochs=0, milestones=())
    random = digits_request(scenario="random", forget_count=20, train_config=fast)
    assert random.split.scenario == "random" and len(random.split.forget) == 20 and random.loaders.forget_class is None
    sub = digits_request(3, scenario="sub_class", train_config=fast)
    assert sub.split.target == "3" and sub.loaders.num_classes == 5
    with pytest.raises(ValueError, match="scenario"):
        digits_request(scenario="everything", train_config=fast)


def test_the_runner_trains_the_requests_models(request_8, tmp_path):
    # make demo runs digits_config through the runner: its checkpoints are the chapters' models
    config = digits_config(8, train_config=SHORT, methods=["original", "retrain"])
    records = run_forget(config, out_dir=str(tmp_path))
    factory = request_8.make_model
    ckpts = sorted((tmp_path / "checkpoints").glob("*.pt"))
    assert [p.name.split("-")[0] for p in ckpts] == ["original", "retrain"]
    _equal(store.load_or_train(ckpts[0], factory, None)[0], request_8.original)
    _equal(store.load_or_train(ckpts[1], factory, None)[0], request_8.retrained())
    by_method = {r["method"]: r for r in records}
    assert {k: by_method["original"][k] for k in ("acc_retain", "acc_forget", "mia")} == request_8.evaluate(request_8.original)


def test_digits_config_scenarios():
    assert digits_config(3).scenario.targets == ["3"] and digits_config(3).data.dataset == "digits"
    sub = digits_config(3, scenario="sub_class")
    assert sub.data.dataset == "digits-super" and sub.scenario.kind == "sub_class"
    rnd = digits_config(scenario="random", forget_count=20, split_seed=4)
    assert rnd.scenario.forget_n == 20 and rnd.scenario.split_seed == 4
    assert digits_config().train == DIGITS_TRAIN_CONFIG
