"""The true Fisher: exact expectations against brute force, sampled labels, label blindness."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfssd_tutorial.importance import compute_importance

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(6, 4)
    y = torch.randint(0, 3, (6,))
    return model, x, y


def _grads(model, loss):
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)]


def _per_sample_true_fisher(model, x):
    """sum_c p_c (d log p_c / d theta)^2 per sample, by brute force, averaged over samples."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for xi in x:
        logp = torch.log_softmax(model(xi[None]), dim=1)[0]
        for c in range(logp.shape[0]):
            g = _grads(model, logp[c])
            for t, gi in zip(total, g):
                t += logp[c].exp().item() * gi ** 2
    return [t / len(x) for t in total]


def _batch_true_fisher(model, batches):
    """E over model-drawn labels of (d mean CE / d theta)^2, by enumerating every labelling."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for xb in batches:
        logits = model(xb)
        probs = torch.softmax(logits, dim=1).detach()
        for labels in itertools.product(range(logits.shape[1]), repeat=len(xb)):
            weight = torch.prod(probs[torch.arange(len(xb)), torch.tensor(labels)]).item()
            g = _grads(model, F.cross_entropy(model(xb), torch.tensor(labels)))
            for t, gi in zip(total, g):
                t += weight * gi ** 2
    return [t / len(batches) for t in total]


def test_exact_sample_true_fisher_matches_brute_force(tiny):
    model, x, _ = tiny
    imp = compute_importance(model, [x[:4], x[4:]], objective="true_fisher", granularity="sample")
    for got, want in zip(imp.values(), _per_sample_true_fisher(model, x)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_exact_batch_true_fisher_is_the_expectation_over_labellings(tiny):
    model, x, _ = tiny
    batches = [x[:3], x[3:5], x[5:]]  # sizes 3, 2, 1: the 1/B^2 weights differ per batch
    imp = compute_importance(model, batches, objective="true_fisher", granularity="batch")
    for got, want in zip(imp.values(), _batch_true_fisher(model, batches)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_sampled_labels_approach_the_exact_value(tiny, granularity):
    model, x, _ = tiny
    batches = [x[:3], x[3:]]
    exact = compute_importance(model, batches, objective="true_fisher", granularity=granularity)
    sampled = compute_importance(model, batches, objective="true_fisher", granularity=granularity, label_samples=3000)
    for name in exact:
        assert torch.allclose(sampled[name], exact[name], rtol=0.1, atol=1e-3 * exact[name].max().item()), name


def test_sampled_labels_are_seeded(tiny):
    model, x, _ = tiny
    run = lambda seed: compute_importance(model, [x], objective="true_fisher", label_samples=2, seed=seed)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_true_fisher_ignores_the_labels(tiny, granularity):
    model, x, y = tiny
    bare = compute_importance(model, [x], objective="true_fisher", granularity=granularity)
    labelled = compute_importance(model, [(x, y)], objective="true_fisher", granularity=granularity)
    shuffled = compute_importance(model, [(x, y.flip(0))], objective="true_fisher", granularity=granularity)
    assert all(torch.equal(bare[n], labelled[n]) and torch.equal(bare[n], shuffled[n]) for n in bare)


def test_true_fisher_differs_from_the_empirical_one(tiny):
    model, x, y = tiny
    true = compute_importance(model, [(x, y)], objective="true_fisher", granularity="sample")
    empirical = compute_importance(model, [(x, y)], objective="fisher", granularity="sample")
    assert any(not torch.allclose(true[n], empirical[n]) for n in true)


@pytest.mark.parametrize("kwargs,match", [
    ({"objective": "fisher", "label_samples": 1}, "true_fisher"),
    ({"objective": "true_fisher", "label_samples": 0}, "label_samples"),
    ({"objective": "true_fisher", "autocast_dtype": torch.bfloat16}, "autocast"),
])
def test_bad_true_fisher_arguments(tiny, kwargs, match):
    model, x, y = tiny
    with pytest.raises(ValueError, match=match):
        compute_importance(model, [(x, y)], **kwargs)
