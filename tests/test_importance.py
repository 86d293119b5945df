"""compute_importance against naive reference loops, and its side-effect guarantees."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lfssd_tutorial import check_importance, compute_importance

from .conftest import make_batches, make_cnn


def _objective(out, y, objective):
    if objective == "fisher":
        return F.cross_entropy(out, y)
    return out.pow(2).sum(dim=1).mean()


def naive_batch(model, batches, objective):
    """The reference code's loop: zero_grad, forward, backward, accumulate grad**2 or |grad|."""
    model = copy.deepcopy(model).eval()
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in batches:
        model.zero_grad()
        _objective(model(x), y, objective).backward()
        for n, p in model.named_parameters():
            if p.grad is None:  # a parameter the objective does not reach
                continue
            g = p.grad.detach().clone()
            acc[n] += g.pow(2) if objective == "fisher" else g.abs()
    return {n: a / len(batches) for n, a in acc.items()}


def naive_sample(model, batches, objective):
    """A plain loop over single samples: |grad|/grad**2 of each sample's own objective."""
    model = copy.deepcopy(model).eval()
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    count = 0
    for x, y in batches:
        for i in range(x.shape[0]):
            model.zero_grad()
            _objective(model(x[i : i + 1]), y[i : i + 1], objective).backward()
            for n, p in model.named_parameters():
                g = p.grad.detach().clone()
                acc[n] += g.pow(2) if objective == "fisher" else g.abs()
            count += 1
    return {n: a / count for n, a in acc.items()}


@pytest.mark.parametrize("objective", ["l2", "fisher"])
@pytest.mark.parametrize("granularity,naive", [("batch", naive_batch), ("sample", naive_sample)])
def test_matches_naive_loop(cnn, batches, objective, granularity, naive):
    assert [len(b[0]) for b in batches] == [8, 8, 7]  # uneven last batch
    got = compute_importance(cnn, batches, objective=objective, granularity=granularity, sample_chunk_size=5)
    want = naive(cnn, batches, objective)
    assert got.keys() == want.keys() == dict(cnn.named_parameters()).keys()
    for name in want:
        assert got[name].dtype == torch.float32
        assert got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)
        assert got[name].abs().sum() > 0, name


class _SharedGradient(torch.nn.Module):
    """``a`` and ``b`` enter only as ``a + b``: autograd hands both the same gradient tensor."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = torch.nn.Parameter(torch.randn(3, 4, generator=g))
        self.b = torch.nn.Parameter(torch.randn(3, 4, generator=g))
        self.c = torch.nn.Parameter(torch.randn(3, generator=g))
        self.unused = torch.nn.Parameter(torch.randn(2, generator=g))

    def forward(self, x):
        return x @ (self.a + self.b).t() + self.c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("objective", ["l2", "fisher"])
def test_shared_and_float64_gradients_match_naive_loop(objective, dtype):
    """Two parameters that receive one and the same gradient tensor, in float32 and float64:
    each gets its own accumulator and the values match the naive loop."""
    model = _SharedGradient().to(dtype)
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(5, 4, generator=g, dtype=dtype), torch.randint(0, 3, (5,), generator=g)) for _ in range(3)]
    x, y = batches[0]
    ga, gb = torch.autograd.grad(_objective(model(x), y, objective), [model.a, model.b])
    assert ga.data_ptr() == gb.data_ptr()  # the case in point: one tensor for two parameters
    for n_batches in (1, 3):
        got = compute_importance(model, batches[:n_batches], objective=objective)
        want = naive_batch(model, batches[:n_batches], objective)
        for name in want:
            assert got[name].dtype == torch.float32
            torch.testing.assert_close(got[name], want[name].float(), rtol=1e-5, atol=1e-7, msg=name)
        assert got["a"].data_ptr() != got["b"].data_ptr()
        assert torch.equal(got["a"], got["b"])


def test_batch_and_sample_differ(cnn, batches):
    """The two granularities are different estimators (the batch one squares batch means)."""
    b = compute_importance(cnn, batches, objective="fisher", granularity="batch")
    s = compute_importance(cnn, batches, objective="fisher", granularity="sample")
    assert not torch.allclose(b["classifier.weight"], s["classifier.weight"])


def test_sample_granularity_ignores_batching(cnn):
    a = compute_importance(cnn, make_batches(batch_size=8), objective="l2", granularity="sample")
    b = compute_importance(cnn, make_batches(batch_size=5), objective="l2", granularity="sample")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-8)


def test_batch_granularity_depends_on_batching(cnn):
    a = compute_importance(cnn, make_batches(batch_size=8), objective="l2", granularity="batch")
    b = compute_importance(cnn, make_batches(batch_size=5), objective="l2", granularity="batch")
    assert not torch.allclose(a["classifier.weight"], b["classifier.weight"])


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_leaves_model_state_untouched(batches, granularity):
    model = make_cnn()
    model.train()
    model.features[1].eval()  # a mixed train/eval state must come back as it was
    # An existing .grad must survive.
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    compute_importance(model, batches, objective="fisher", granularity=granularity)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # parameters and BatchNorm running stats
    for p in model.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.25))


def test_runs_in_eval_mode_uses_running_stats(batches):
    """Importance is computed with BatchNorm's running statistics (eval), not batch statistics."""
    model = make_cnn()
    got = compute_importance(model, batches, objective="l2")
    want = naive_batch(model, batches, "l2")  # naive loop runs in eval mode
    torch.testing.assert_close(got["classifier.bias"], want["classifier.bias"], rtol=1e-4, atol=1e-7)
    model.train()
    train_mode = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, _ in batches:
        model.zero_grad()
        model(x).pow(2).sum(1).mean().backward()
        train_mode = {n: train_mode[n] + p.grad.abs() for n, p in model.named_parameters()}
    assert not torch.allclose(got["classifier.bias"], train_mode["classifier.bias"] / len(batches))


def test_accepts_inputs_only_and_triples(cnn, batches):
    bare = [x for x, _ in batches]
    triples = [(x, torch.zeros_like(y), y) for x, y in batches]  # (x, fine, coarse): label is last
    a = compute_importance(cnn, bare, objective="l2")
    b = compute_importance(cnn, batches, objective="l2")
    c = compute_importance(cnn, triples, objective="fisher")
    d = compute_importance(cnn, batches, objective="fisher")
    for name in a:
        assert torch.equal(a[name], b[name])
        assert torch.equal(c[name], d[name])


def test_frozen_parameters_are_skipped(cnn, batches):
    cnn.classifier.weight.requires_grad_(False)
    imp = compute_importance(cnn, batches, objective="l2", granularity="sample")
    assert "classifier.weight" not in imp and "classifier.bias" in imp
    ref = compute_importance(cnn, batches, objective="l2", granularity="batch")
    assert imp.keys() == ref.keys()


# ----------------------------------------------------------------- bad input


def test_empty_loader(cnn):
    with pytest.raises(ValueError, match="no data"):
        compute_importance(cnn, [], objective="l2")
    with pytest.raises(ValueError, match="no data"):
        compute_importance(cnn, [], objective="l2", granularity="sample")


def test_fisher_without_labels(cnn, batches):
    with pytest.raises(ValueError, match="needs labels"):
        compute_importance(cnn, [x for x, _ in batches], objective="fisher")
    with pytest.raises(ValueError, match="needs labels"):
        compute_importance(cnn, [(x,) for x, _ in batches], objective="fisher", granularity="sample")


def test_non_tensor_batches(cnn):
    with pytest.raises(TypeError, match="yielded str"):  # mappings are batches too (tests/test_batches_outputs.py)
        compute_importance(cnn, ["pixels"], objective="l2")
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        compute_importance(cnn, [([1.0, 2.0], torch.zeros(2))], objective="l2")
    with pytest.raises(TypeError, match="labels must be a tensor"):
        compute_importance(cnn, [(torch.zeros(2, 1, 8, 8), [0, 1])], objective="fisher")


def test_unknown_objective_and_granularity(cnn, batches):
    with pytest.raises(ValueError, match="unknown objective 'mse'"):
        compute_importance(cnn, batches, objective="mse")
    with pytest.raises(ValueError, match="unknown granularity 'epoch'"):
        compute_importance(cnn, batches, objective="l2", granularity="epoch")


def test_non_finite_importance_is_an_error(cnn, batches):
    x, y = batches[0]
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_importance(cnn, [(x, y)], objective="l2")


# ---------------------------------------------- save / load: tests/test_importance_file.py


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("classifier.bias"), "missing"),
        (lambda d: d.__setitem__("extra.weight", torch.zeros(1)), "not trainable parameters"),
        (lambda d: d.__setitem__("classifier.bias", torch.zeros(3)), "shape"),
        (lambda d: d.__setitem__("classifier.bias", torch.full((5,), float("inf"))), "NaN or inf"),
        (lambda d: d.__setitem__("classifier.bias", -torch.ones(5)), "negative"),
        (lambda d: d.__setitem__("classifier.bias", [0.0] * 5), "not a tensor"),
        (lambda d: d.__setitem__("classifier.bias", torch.full((5,), 1e300, dtype=torch.float64)),
         r"\['classifier.bias'\] has values that overflow float32"),
    ],
)
def test_check_importance_names_the_problem(cnn, mutate, match):
    imp = {n: torch.ones_like(p) for n, p in cnn.named_parameters()}
    mutate(imp)
    with pytest.raises(ValueError, match=match):
        check_importance(imp, cnn)


@pytest.mark.parametrize("granularity", ["batch", "sample"])
@pytest.mark.parametrize("objective", ["l2", "fisher"])
def test_channels_last_gives_the_same_values(cnn, batches, granularity, objective):
    want = compute_importance(cnn, batches, objective=objective, granularity=granularity)
    model = copy.deepcopy(cnn).to(memory_format=torch.channels_last)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    got = compute_importance(model, batches, objective=objective, granularity=granularity, channels_last=True)
    assert seen and all(seen)  # the inputs really arrived in channels_last
    for name in want:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("objective", ["l2", "fisher"])
def test_bf16_autocast_is_close_but_not_exact(cnn, batches, objective):
    """bf16 autocast changes the values (so it really ran), within bf16's precision."""
    want = compute_importance(cnn, batches, objective=objective)
    got = compute_importance(cnn, batches, objective=objective, autocast_dtype=torch.bfloat16)
    num = sum(float((got[n] - want[n]).abs().sum()) for n in want)
    den = sum(float(want[n].abs().sum()) for n in want)
    assert all(got[n].dtype == torch.float32 for n in got)
    assert 0 < num / den < 0.05  # bf16 keeps 8 bits of mantissa: about 0.4% per operation
    assert all(p.dtype == torch.float32 for p in cnn.parameters())  # the model is untouched


def test_bad_autocast_dtype(cnn, batches):
    for bad in (torch.int8, "bfloat16"):
        with pytest.raises(ValueError, match="autocast_dtype"):
            compute_importance(cnn, batches, objective="l2", autocast_dtype=bad)
    with pytest.raises(ValueError, match='granularity="batch" only'):
        compute_importance(cnn, batches, objective="l2", granularity="sample", autocast_dtype=torch.bfloat16)


def test_sample_chunk_size_default_and_bad_values(cnn, batches, monkeypatch):
    from lfssd_tutorial.importance import default_sample_chunk_size

    params = list(cnn.parameters())
    assert default_sample_chunk_size(params, "cpu") == 16
    # On a GPU: the largest power of two <= 256 whose chunk (1.5x the parameter bytes per
    # sample) fits in a quarter of the free memory (stubbed here).
    per_sample = 3 * sum(p.numel() * 4 for p in params) // 2
    for free, want in [(4 * per_sample * 100, 64), (4 * per_sample * 128, 128), (4 * per_sample * 1000, 256), (0, 1)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, free))
        assert default_sample_chunk_size(params, "cuda") == want
    monkeypatch.undo()
    # None and an explicit chunk give the same values (chunking does not change them)
    a = compute_importance(cnn, batches, objective="l2", granularity="sample")
    b = compute_importance(cnn, batches, objective="l2", granularity="sample", sample_chunk_size=3)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="sample_chunk_size"):
            compute_importance(cnn, batches, objective="l2", granularity="sample", sample_chunk_size=bad)


def test_cpu_channels_last_refused_for_small_strided_1x1_convolutions(batches):
    """oneDNN's CPU kernel for this case corrupts memory: refused with a clear error, before any pass."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 8, 1, stride=2), torch.nn.Flatten(), torch.nn.Linear(128, 5)
    )
    with pytest.raises(ValueError, match=r"'1'.*stride \(2, 2\).*4 input channels.*channels_last=False"):
        compute_importance(model.to(memory_format=torch.channels_last), batches, objective="l2", channels_last=True)
    compute_importance(model, batches, objective="l2")  # the default layout is fine
    wide = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1, stride=2), torch.nn.Flatten(),
                               torch.nn.Linear(128, 5))
    compute_importance(wide.to(memory_format=torch.channels_last), batches, objective="l2", channels_last=True)


@pytest.mark.parametrize("objective", ["l2", "fisher"])
def test_batch_objective_and_accumulate(objective):
    from lfssd_tutorial.importance import accumulate_, batch_objective

    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    torch.testing.assert_close(batch_objective(logits, labels, objective), _objective(logits, labels, objective))
    acc = [torch.ones(3), torch.ones(2)]
    grads = [torch.tensor([1.0, -2.0, 0.5]), None]
    want = torch.ones(3) + (grads[0] ** 2 if objective == "fisher" else grads[0].abs())
    accumulate_(acc, grads, objective)
    assert torch.equal(acc[0], want) and torch.equal(acc[1], torch.ones(2))  # None entries are skipped
