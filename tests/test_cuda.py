"""The GPU code paths. Skipped without CUDA; run them on a machine with a GPU.

Every other test pins the CPU. These check, on CUDA: the batch and per-sample estimators
against the naive loops (same device), CUDA against CPU values, the dampening's selection
and edit against the CPU's, a forget request with an ``Imp_D`` cached on the CPU, bf16
autocast and channels_last, and the experiment runner (pinned memory, channels_last
ResNets, bf16 training) end to end.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from lfssd_tutorial import compute_importance, select_and_dampen_, unlearn
from lfssd_tutorial import experiments as E
from lfssd_tutorial.dampening import NothingSelectedWarning, max_importance_ratio
from lfssd_tutorial.models import cifar_resnet18

from .conftest import make_batches, make_cnn
from .fake_data import write_cifar10
from .test_importance import naive_batch, naive_sample

GPU = torch.device("cuda")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def exact_float32():
    """No TF32 in convolutions and matrix products, so that CUDA's float32 is comparable to the CPU's."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _resnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cifar_resnet18(5, width=4).eval()


def _image_batches(n: int = 20, batch_size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


def _on(batches, device):
    return [(x.to(device), y.to(device)) for x, y in batches]


def _assert_close(got: dict, want: dict, tol: float) -> None:
    """Relative l1 error and largest difference (over the largest value) both within ``tol``.

    Summary measures, not element by element: with random weights, many batch-mean
    gradients are sums that nearly cancel, so a different summation order (another
    kernel, another device) moves them by a large relative amount at a tiny absolute one.
    """
    assert got.keys() == want.keys()
    assert all(got[k].device == want[k].device and got[k].shape == want[k].shape for k in want)
    num = sum(float((got[k] - want[k]).abs().sum()) for k in want)
    den = sum(float(want[k].abs().sum()) for k in want)
    max_abs = max(float((got[k] - want[k]).abs().max()) for k in want)
    scale = max(float(want[k].abs().max()) for k in want)
    assert num <= tol * den and max_abs <= tol * scale, (num / den, max_abs / scale)


MODELS = {"cnn": (make_cnn, make_batches), "resnet": (_resnet, _image_batches)}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("objective", ["l2", "fisher"])
@pytest.mark.parametrize("granularity,naive", [("batch", naive_batch), ("sample", naive_sample)])
def test_estimators_on_cuda_match_the_naive_loops(model_name, objective, granularity, naive, exact_float32):
    # Without exact_float32 (TF32, 10-bit mantissa, in cuDNN's convolutions: torch's default),
    # the per-sample ResNet rows differ from the naive loop by ~0.3% (relative l1, H100): the
    # vmapped and the one-sample convolutions round differently.
    build, data = MODELS[model_name]
    model, batches = build().to(GPU), data()
    got = compute_importance(model, batches, objective=objective, granularity=granularity, sample_chunk_size=5)
    want = naive(model, _on(batches, GPU), objective)
    assert all(t.device.type == "cuda" and t.dtype == torch.float32 for t in got.values())
    _assert_close(got, want, tol=1e-5)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("objective", ["l2", "fisher"])
def test_cuda_values_match_the_cpu(model_name, objective, exact_float32):
    build, data = MODELS[model_name]
    model, batches = build(), data()
    cpu = compute_importance(model, batches, objective=objective)
    gpu = compute_importance(copy.deepcopy(model).to(GPU), batches, objective=objective)
    _assert_close({k: v.cpu() for k, v in gpu.items()}, cpu, tol=1e-4)


def _random_importances(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    full = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    forget = {}
    for n, f in full.items():
        spec = f * torch.rand(f.shape, generator=g)
        spec[torch.rand(f.shape, generator=g) < 0.01] *= 40.0
        forget[n] = spec
    return full, forget


@pytest.mark.parametrize("importances_on", ["cpu", "cuda"])
def test_dampening_on_cuda_equals_the_cpu(importances_on):
    """The selection is the same, weight for weight, and so are the dampened values."""
    model = _resnet()
    full, forget = _random_importances(model)
    alpha = max_importance_ratio(full, forget) / 4
    on_cpu, on_gpu = copy.deepcopy(model), copy.deepcopy(model).to(GPU)
    rep_cpu = select_and_dampen_(on_cpu, full, forget, alpha=alpha, lambda_=0.9)
    moved = {k: v.to(importances_on) for k, v in full.items()}, {k: v.to(importances_on) for k, v in forget.items()}
    rep_gpu = select_and_dampen_(on_gpu, *moved, alpha=alpha, lambda_=0.9)
    assert rep_cpu.total_selected > 0
    assert rep_gpu.selected == rep_cpu.selected and rep_gpu.changed == rep_cpu.changed
    assert rep_gpu.max_ratio == rep_cpu.max_ratio
    before = dict(model.named_parameters())
    for (name, a), b in zip(on_cpu.named_parameters(), on_gpu.parameters()):
        b = b.detach().cpu()
        assert torch.equal(a.detach() != before[name].detach(), b != before[name].detach()), name
        assert torch.allclose(b, a.detach(), rtol=1e-6, atol=0), name


@pytest.mark.parametrize("method", ["ssd", "lfssd"])
def test_forget_request_on_cuda_with_an_importance_cached_on_the_cpu(method, tmp_path, exact_float32):
    from lfssd_tutorial import load_importance, save_importance

    model, batches = make_cnn().to(GPU), make_batches()
    objective = "l2" if method == "lfssd" else "fisher"
    forget_batches = batches[:1]
    imp_gpu = compute_importance(model, batches, objective=objective)
    save_importance({k: v.cpu() for k, v in imp_gpu.items()}, tmp_path / "imp.pt")
    imp_cpu = load_importance(tmp_path / "imp.pt", model=model)
    assert all(v.device.type == "cpu" for v in imp_cpu.values())
    alpha = 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSelectedWarning)
        a, rep_a = unlearn(model, forget_batches, method=method, full_importance=imp_cpu, alpha=alpha)
        b, rep_b = unlearn(model, forget_batches, method=method, full_importance=imp_gpu, alpha=alpha)
        c, rep_c = unlearn(model, forget_batches, method=method, full_loader=batches, alpha=alpha)
    assert rep_a.total_selected > 0
    assert rep_a.selected == rep_b.selected == rep_c.selected
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert pa.device.type == "cuda"
        assert torch.equal(pa, pb) and torch.equal(pa, pc)


@pytest.mark.parametrize("objective", ["l2", "fisher"])
def test_bf16_autocast_and_channels_last_on_cuda(objective, exact_float32):
    model, batches = _resnet().to(GPU), _image_batches()
    ref = compute_importance(model, batches, objective=objective)
    bf16 = compute_importance(model, batches, objective=objective, autocast_dtype=torch.bfloat16)
    rel = sum(float((bf16[k] - ref[k]).abs().sum()) for k in ref) / sum(float(v.abs().sum()) for v in ref.values())
    assert 0 < rel < 0.05  # bf16 ran (the values changed) and stayed close
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl = compute_importance(model_cl, batches, objective=objective, channels_last=True)
    _assert_close(cl, ref, tol=1e-4)


def test_experiment_runner_on_cuda(tmp_path, monkeypatch):
    """Digits with the small CNN and fake CIFAR-10 with a ResNet (channels_last on CUDA), every kind of method."""
    from torchvision.datasets import CIFAR10, cifar

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    write_cifar10(str(tmp_path / "cifar"), per_batch=12, n_test=20)
    methods = ["original", "retrain", "finetune", "ssd", "lfssd", {"method": "lfssd", "granularity": "sample", "alpha": 2}]
    fast = {"finetune_epochs": 1, "importance_bf16": True}
    train = {"epochs": 2, "lr": 0.05, "milestones": []}
    cases = [
        ({"dataset": "digits", "train_subset": 120, "test_subset": 60}, {"name": "small_cnn", "width": 4},
         {"kind": "full_class", "targets": ["3"]}),
        ({"dataset": "cifar10", "root": str(tmp_path / "cifar")}, {"name": "resnet18", "width": 2},
         {"kind": "random", "forget_n": 6}),
    ]
    for i, (data, model, scenario) in enumerate(cases):
        cfg = E.config_from_dict({"name": f"gpu-{i}", "data": data, "model": model, "train": train, "scenario": scenario,
                                  "methods": methods, "baselines": fast, "seeds": [0]})
        out = tmp_path / f"run{i}"
        records = E.run_forget(cfg, out_dir=str(out), device="cuda")
        assert [r["label"] for r in records] == cfg.labels()
        for r in records:
            assert all(0.0 <= r[k] <= 100.0 for k in ("acc_retain", "acc_forget", "mia"))
        timings = [line for line in (out / "timings.jsonl").read_text().splitlines() if line]
        assert len(timings) == len(records) and all('"device": "cuda' in t for t in timings)
        assert any(r["method"] == "lfssd" and r["selected"] > 0 for r in records)
