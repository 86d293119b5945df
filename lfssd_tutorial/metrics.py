"""Unlearning metrics: accuracy and the softmax-entropy membership inference attack (MIA)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .training import evaluate_accuracy, predict

__all__ = ["accuracy", "softmax_entropy", "entropy_mia"]

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

    A class-balanced logistic regression on one feature, the softmax entropy, is
    trained to tell retain-train samples (members) from test samples (non-members);
    the score is the percentage of forget samples it predicts to be members. Lower
    means the forget set looks less like training data; the retrained model's score,
    not zero, is the target.
    """
    from sklearn.linear_model import LogisticRegression

    def entropies(loader):
        logits, _ = predict(model, loader, device=device)
        return softmax_entropy(logits).numpy().astype(np.float64).reshape(-1, 1)

    member, nonmember, forget = entropies(retain_loader), entropies(test_loader), entropies(forget_loader)
    x = np.concatenate([member, nonmember])
    y = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs")
    clf.fit(x, y)
    return 100.0 * float(clf.predict(forget).mean())
