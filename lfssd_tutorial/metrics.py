"""Unlearning metrics: accuracy, the softmax-entropy membership inference attack (MIA), and
evaluators (functions from a model to named metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .training import evaluate_accuracy, predict

__all__ = ["accuracy", "softmax_entropy", "entropy_mia", "Evaluator", "accuracy_evaluator"]

accuracy = evaluate_accuracy


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution of each row of ``logits`` (natural log)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def entropy_mia(
    model: torch.nn.Module,
    retain_loader: Iterable,
    forget_loader: Iterable,
    test_loader: Iterable,
    *,
    device: str | torch.device | None = None,
) -> float:
    """The papers' membership inference attack, in percent.

    A class-balanced logistic regression on one feature, the softmax
    entropy, is trained to tell retain-train samples (members) from test
    samples (non-members); the score is the percentage of forget samples it
    predicts to be members. Lower means the forget set looks less like
    training data; the retrained model's score, not zero, is the target.
    """
    from sklearn.linear_model import LogisticRegression

    def entropies(loader):
        logits, _ = predict(model, loader, device=device)
        entropy = softmax_entropy(logits).numpy().astype(np.float64)
        return entropy.reshape(-1, 1)

    member = entropies(retain_loader)
    nonmember = entropies(test_loader)
    forget = entropies(forget_loader)
    x = np.concatenate([member, nonmember])
    y = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs")
    clf.fit(x, y)
    return 100.0 * float(clf.predict(forget).mean())


#: A function from a model to named metrics, e.g. ``{"Acc(D_r)": 99.5, "Acc(D_f)": 0.0}``.
Evaluator = Callable[[nn.Module], Mapping[str, float]]


def accuracy_evaluator(loaders: Mapping[str, Iterable], *, device: str | torch.device | None = None) -> Evaluator:
    """A function ``model -> {name: accuracy in percent}`` over the given labelled loaders.

    Example::

        evaluate = accuracy_evaluator({"Acc(D_r)": test_retain_loader, "Acc(D_f)": test_forget_loader})
        evaluate(model)   # {"Acc(D_r)": 99.5, "Acc(D_f)": 0.0}
    """
    if not loaders:
        raise ValueError("give at least one loader to evaluate on")
    loaders = dict(loaders)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {name: evaluate_accuracy(model, loader, device=device) for name, loader in loaders.items()}

    return evaluate
