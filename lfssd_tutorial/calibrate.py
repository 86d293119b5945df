"""Choosing alpha (and lambda) without labels: :func:`calibrate_alpha`.

LFSSD needs no labels to compute its importances, but a fixed ``alpha`` does not carry
from one forget request to the next. This module picks ``alpha``, and optionally
``lambda``, per request from *predictions* only, reusing the importances already computed
(no gradient pass).

The rule. A model that has forgotten ``D_f`` should behave like the model retrained without
it. For a full-class (or sub-class) request:

* on retained data, the retrained model predicts what the original predicts, up to the
  small disagreement between two well-trained models;
* on ``D_f`` it cannot predict the forgotten class, so its predictions move away from the
  original's;
* when the whole class is forgotten, it predicts that class for *no* input, so the few
  retained inputs the original (wrongly) assigns to it must change too.

So, for each candidate ``lambda`` (one by default) and each candidate ``alpha`` (by
default the alphas that select about 1, 2, 4, 8, ... weights, :func:`default_candidates`),
the original is dampened in a scratch copy and two agreements with the original's own
predictions are measured: ``forget_agreement`` on ``D_f``, and ``retain_agreement`` on a
small sample of retained inputs less those that must change. Which those are is read from
the original's predictions: call ``c`` the class it assigns most of ``D_f`` to. If it
assigns the retained sample to ``c`` less than a quarter as often as to the median other
class, ``c`` is gone from the retained data (a whole class is forgotten), and the retained
inputs it assigns to ``c`` are set aside (:func:`retained_to_keep`, ``AlphaChoice.set_aside``);
if ``c`` is still common there (sub-class forgetting), none is. A candidate is *admissible*
when it keeps ``retain_agreement >= 1 - retain_tolerance``. Among the admissible candidates
the rule finds the lowest ``forget_agreement`` and returns the **smallest edit** whose
``forget_agreement`` is within ``forget_slack`` of it: the fewest selected weights, then
the larger ``lambda`` (gentler dampening), then the larger ``alpha``. With one ``lambda``
this is the largest such ``alpha``.

What the rule assumes, and where it does not apply:

* the original assigns most of ``D_f`` to one class (full-class forgetting, or a
  sub-class whose superclass it predicts). Random forgetting breaks this: there the
  retrained model still classifies the forgotten images like any unseen image, so moving
  their predictions away is the wrong target. :func:`calibrate_alpha` refuses such a
  forget set (``min_concentration``);
* "forgotten" means "no longer predicted as before". For sub-class forgetting the
  retrained model may still predict the superclass for part of ``D_f``, so the rule can
  forget more than retraining does;
* agreement on retained *training* inputs is an optimistic stand-in for test accuracy: an
  edit can keep 99% of the training predictions and still lose a few points of accuracy
  on unseen inputs. Unlabelled held-out inputs of the retained classes are no simple
  remedy: on them small edits change predictions in both directions, so the agreement
  falls where the accuracy does not, and a tolerance set for training inputs rejects
  good edits. Whichever inputs are given, ``retain_tolerance`` is calibrated for them.
  The default of 1% was set on the digits. On the book's well-trained CIFAR-10 ResNet-9
  models (chapter 7), the retained inputs the original assigns to the forgotten class (up to
  2% of them) were at first counted as retained predictions to keep, and on about half of the
  requests the 1% tolerance rejected every edit that moved most of ``D_f``. Setting them
  aside is what the retrained model implies, and is the rule above; with it the rule
  succeeded on 14 of 15 requests of five other classes, for SSD and for LFSSD. When the
  rule still warns, the warning means "choose alpha on labelled validation data", not "no
  alpha works".
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .checks import check_hyperparameters, check_importances, trainable_parameters
from .dampening import importance_ratios, max_importance_ratio, select_and_dampen_
from .batches import Forward, batch_size, map_tensors, model_logits
from .utils import progress as progress_bar
from .utils import resolve_device

__all__ = ["AlphaCandidate", "AlphaChoice", "CALIBRATION_GROWTH", "CALIBRATION_LAMBDAS", "CalibrationWarning",
           "calibrate_alpha", "default_candidates", "retained_to_keep"]

#: The lambdas the rule chooses among in the book's study (settled on development seeds,
#: chapter 7); pass them as ``lambda_``.
CALIBRATION_LAMBDAS = (0.5, 1.0, 2.0)
#: The spacing of the candidate alphas in number of selected weights in that study; pass it
#: as ``growth``.
CALIBRATION_GROWTH = 2 ** 0.5


class CalibrationWarning(UserWarning):
    """The calibration found no good ``alpha``: no candidate kept the retained predictions within
    the tolerance, or none that did moved most of the forget set's predictions."""


@dataclass
class AlphaCandidate:
    """What :func:`calibrate_alpha` measured at one candidate ``(alpha, lambda_)``.

    Attributes:
        alpha: the candidate selection weighting.
        lambda_: the dampening constant it was tried with.
        selected: number of weights it selects.
        forget_agreement: share of ``D_f`` inputs whose predicted class is the original's.
        retain_agreement: the same on the retained sample, leaving out the inputs set aside
            (see :class:`AlphaChoice`).
        admissible: it selects something and ``retain_agreement >= 1 - retain_tolerance``.
    """

    alpha: float
    lambda_: float
    selected: int
    forget_agreement: float
    retain_agreement: float
    admissible: bool


@dataclass
class AlphaChoice:
    """The ``alpha`` (and ``lambda_``) chosen by :func:`calibrate_alpha`, and the evidence.

    Attributes:
        alpha: the chosen selection weighting.
        lambda_: the chosen dampening constant (the only one tried, unless several were given).
        candidates: one :class:`AlphaCandidate` per candidate pair: for each ``lambda_`` in
            the order given, the alphas largest first.
        max_ratio: the largest ratio ``Imp_Df / Imp_D`` (the ceiling of ``alpha``).
        forget_concentration: share of ``D_f`` the original assigns to its most frequent class.
        forget_class: that class, ``c``.
        set_aside: how many retained inputs were left out of ``retain_agreement``: those the
            original assigns to ``c`` when ``c`` is gone from the retained data (whole-class
            forgetting, where the retrained model predicts ``c`` for no input), else 0.
        reason: how the choice was made, in words.
        warning: why the choice is doubtful (see :class:`CalibrationWarning`), else ``None``.
    """

    alpha: float
    lambda_: float
    candidates: list[AlphaCandidate] = field(default_factory=list)
    max_ratio: float = 0.0
    forget_concentration: float = 1.0
    forget_class: int = 0
    set_aside: int = 0
    reason: str = ""
    warning: str | None = None

    def rows(self) -> list[dict]:
        """One dict per candidate (for a table)."""
        return [vars(c).copy() for c in self.candidates]

    def __str__(self) -> str:
        return (f"alpha={self.alpha:.3g}, lambda={self.lambda_:g} (of {len(self.candidates)} candidates; "
                f"ceiling {self.max_ratio:.3g}): {self.reason}")


def default_candidates(
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    *,
    growth: float = 2.0,
    largest_share: float = 0.5,
) -> list[float]:
    """Alphas that select about 1, 2, 4, 8, ... weights, up to ``largest_share`` of them.

    The ``k``-th candidate is the ``(int(growth**k) + 1)``-th largest finite ratio
    ``Imp_Df / Imp_D``, so that it selects the ``int(growth**k)`` weights with larger ratios
    (fewer where ratios tie; repeated values are dropped); ``growth = 2`` gives 1, 2, 4, 8,
    ... weights, ``growth = 2 ** 0.5`` about twice as many candidates. The candidates are
    spaced evenly in the *number of weights they select*, on a log scale, which is the
    quantity that decides what the dampening does; largest first.

    Raises:
        ValueError: no ratio is positive (nothing matters more to ``D_f`` than not at all).
    """
    ratios = importance_ratios(full_importance, forget_importance)
    if ratios.numel() < 2 or not float(ratios.max()) > 0:
        raise ValueError("no weight has a positive finite ratio Imp_Df/Imp_D, so no alpha selects by ratio")
    top = torch.sort(ratios, descending=True).values
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    alphas, k = [], 1.0
    while int(k) < len(top) * largest_share:
        alpha = float(top[int(k)])
        if alpha > 0 and (not alphas or alpha < alphas[-1]):
            alphas.append(alpha)
        k *= growth
    return alphas


def _inputs(loader: Iterable, name: str) -> list:
    batches = list(loader)
    if not batches or sum(batch_size(batch) or 0 for batch in batches) == 0:
        raise ValueError(f"{name} yielded no inputs")
    return batches


@torch.no_grad()
def _predictions(model: nn.Module, batches: list, device: torch.device, forward: Forward | None) -> torch.Tensor:
    out = []
    for batch in batches:
        logits, _ = model_logits(model, map_tensors(lambda t: t.to(device), batch), forward=forward)
        if logits.dim() != 2:
            raise ValueError(f"calibrate_alpha needs class scores of shape (batch, classes); the model returned shape {tuple(logits.shape)}")
        out.append(logits.argmax(dim=1).cpu())
    return torch.cat(out)


def calibrate_alpha(
    model: nn.Module,
    full_importance: Mapping[str, torch.Tensor],
    forget_importance: Mapping[str, torch.Tensor],
    forget_loader: Iterable,
    retain_loader: Iterable,
    *,
    lambda_: float | Sequence[float] = 1.0,
    candidates: Sequence[float] | None = None,
    growth: float = 2.0,
    retain_tolerance: float = 0.01,
    forget_slack: float = 0.02,
    min_concentration: float = 0.5,
    device: str | torch.device | None = None,
    progress: bool = False,
    warn: bool = True,
    forward: Forward | None = None,
) -> AlphaChoice:
    """Choose ``alpha`` (and, given several, ``lambda_``) for one forget request from predictions alone.

    Uses only inputs: labels in the batches are ignored, and bare input tensors are
    accepted. Reuses ``Imp_D`` and ``Imp_Df`` (no gradient pass) and never modifies
    ``model``: each candidate is tried on a scratch copy. The rule is in the module
    docstring. Each candidate pair costs one dampening pass and one forward pass over
    ``D_f`` and the retained sample.

    Args:
        model: the trained (original) network.
        full_importance, forget_importance: ``Imp_D`` and ``Imp_Df`` of the method
            (same objective and granularity), as for :func:`~lfssd_tutorial.select_and_dampen_`.
        forget_loader: the forget set ``D_f``.
        retain_loader: a small sample of retained inputs (a few hundred suffice; their
            labels are not used). Inputs the model was trained on make the agreement
            optimistic (see the module docstring).
        lambda_: the dampening constant, or several candidate constants: then every
            ``(alpha, lambda_)`` pair is tried and the rule chooses ``lambda_`` too. On the
            digits' full-class requests ``(0.5, 1.0, 2.0)`` with ``growth=2 ** 0.5`` did
            better than ``lambda_ = 1`` alone (chapter 7 of the book).
        candidates: the ``alpha`` values to try; by default :func:`default_candidates`
            (the alphas that select about 1, ``growth``, ``growth**2``, ... weights, up to
            half of them).
        growth: the spacing of the default candidates in number of selected weights.
        retain_tolerance: the largest share of retained predictions a candidate may change.
        forget_slack: how far above the lowest ``forget_agreement`` the chosen candidate may be.
        min_concentration: the smallest share of ``D_f`` the original must assign to one
            class; below it the request looks like random forgetting and is refused.
        device: where to evaluate; by default the model's device.
        progress: show a progress bar over the candidates.
        warn: emit a :class:`CalibrationWarning` when the choice is doubtful (it is
            recorded in ``AlphaChoice.warning`` either way).
        forward: how to run the model on batches of another kind, as for
            :func:`~lfssd_tutorial.compute_importance` (:mod:`lfssd_tutorial.batches`).

    Returns:
        An :class:`AlphaChoice`: ``.alpha``, ``.lambda_`` and, per candidate pair, the
        weights selected and the two agreements.

    Raises:
        ValueError: an empty loader; importances that do not fit ``model`` or that record
            different objectives or granularities (:func:`~lfssd_tutorial.checks.check_same_kind`); a bad
            or empty ``lambda_``, candidate, ``growth`` or tolerance; a forget set spread over
            many classes (``min_concentration``); candidates none of which selects a weight.

    Warns:
        CalibrationWarning: no candidate kept ``retain_agreement >= 1 - retain_tolerance``
            (the smallest edit that selects anything is returned), or no admissible
            candidate changed the predictions on more than half of ``D_f`` (at these
            ``lambda_`` the edit cannot forget without changing retained predictions).
    """
    lambdas = _lambdas(lambda_)
    check_importances([(full_importance, "full_importance (Imp_D)"), (forget_importance, "forget_importance (Imp_Df)")], model)
    for name, value in (("retain_tolerance", retain_tolerance), ("forget_slack", forget_slack), ("min_concentration", min_concentration)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    device = resolve_device(device, model)
    forget_inputs, retain_inputs = _inputs(forget_loader, "forget_loader"), _inputs(retain_loader, "retain_loader")

    work = copy.deepcopy(model).to(device).eval()
    forget_before = _predictions(work, forget_inputs, device, forward)
    retain_before = _predictions(work, retain_inputs, device, forward)
    forget_counts = np.bincount(forget_before.numpy())
    forget_class = int(forget_counts.argmax())
    concentration = float(forget_counts.max() / len(forget_before))
    if concentration < min_concentration:
        raise ValueError(
            f"the original model assigns only {100 * concentration:.0f}% of the forget set to its most frequent class "
            f"(min_concentration={min_concentration:g}). calibrate_alpha assumes full-class or sub-class forgetting; "
            "with random forgetting the retrained model still classifies the forgotten inputs like unseen ones, so "
            "moving their predictions is the wrong target. Choose alpha on labelled validation data instead."
        )

    keep = retained_to_keep(retain_before, forget_class)
    retain_before = retain_before[keep]

    max_ratio = max_importance_ratio(full_importance, forget_importance)
    if candidates is None:
        alphas = default_candidates(full_importance, forget_importance, growth=growth)
    else:
        alphas = sorted((float(a) for a in candidates), reverse=True)
    if not alphas:
        raise ValueError("candidates is empty")
    for a in alphas:
        check_hyperparameters(a, 1.0)

    params = trainable_parameters(work)
    saved = {name: p.detach().clone() for name, p in params.items()}
    pairs = [(alpha, lam) for lam in lambdas for alpha in alphas]
    tried = []
    for alpha, lam in progress_bar(pairs, progress, "calibrating alpha"):
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
        report = select_and_dampen_(work, full_importance, forget_importance, alpha=alpha, lambda_=lam, warn=False)
        if report.nothing_selected:
            tried.append(AlphaCandidate(alpha, lam, 0, 1.0, 1.0, False))
            continue
        forget_agree = float((_predictions(work, forget_inputs, device, forward) == forget_before).float().mean())
        retain_after = _predictions(work, retain_inputs, device, forward)[keep]
        retain_agree = float((retain_after == retain_before).float().mean())
        tried.append(AlphaCandidate(alpha, lam, report.total_selected, forget_agree, retain_agree,
                                    retain_agree >= 1 - retain_tolerance - 1e-12))

    selecting = [c for c in tried if c.selected > 0]
    if not selecting:
        raise ValueError(f"none of the {len(alphas)} candidate alphas selects a weight (the largest ratio Imp_Df/Imp_D "
                         f"is {max_ratio:.3g}; only alpha below it selects anything)")
    admissible = [c for c in tried if c.admissible]
    set_aside = int((~keep).sum())
    kept = f"{100 * (1 - retain_tolerance):g}% of the retained predictions"
    if set_aside:
        kept += f" (less the {set_aside} of class {forget_class}, which must change)"
    at = f"lambda={lambdas[0]:g}" if len(lambdas) == 1 else f"any lambda of {', '.join(f'{v:g}' for v in lambdas)}"
    warning = None
    if not admissible:
        chosen = min(selecting, key=_edit_size)
        reason = f"no candidate kept {kept}; returned the smallest edit that selects anything"
        warning = f"{reason} (alpha={chosen.alpha:.3g}, retain agreement {100 * chosen.retain_agreement:.1f}%)"
    else:
        lowest = min(c.forget_agreement for c in admissible)
        chosen = min((c for c in admissible if c.forget_agreement <= lowest + forget_slack + 1e-12), key=_edit_size)
        reason = (f"the smallest edit (fewest weights, then largest lambda and alpha) keeping >= {kept} whose "
                  f"forget agreement ({100 * chosen.forget_agreement:.1f}%) is within {100 * forget_slack:g} points "
                  f"of the lowest ({100 * lowest:.1f}%)")
        if lowest > 0.5:
            warning = (f"every candidate that keeps {kept} leaves at least {100 * lowest:.0f}% of the forget set's "
                       f"predictions as they were: at {at} the selected weights cannot forget D_f without changing "
                       f"more than {100 * retain_tolerance:g}% of the retained predictions. Changed predictions need not "
                       "mean lost accuracy: check the candidates on labelled validation data before trusting this "
                       "alpha")
    if warning is not None and warn:
        warnings.warn(f"calibrate_alpha: {warning}", CalibrationWarning, stacklevel=2)
    return AlphaChoice(alpha=chosen.alpha, lambda_=chosen.lambda_, candidates=tried, max_ratio=max_ratio,
                       forget_concentration=concentration, forget_class=forget_class,
                       set_aside=set_aside, reason=reason, warning=warning)


def retained_to_keep(retain_predictions: torch.Tensor, forget_class: int) -> torch.Tensor:
    """Which retained inputs the retrained model should classify as the original does.

    All of them, unless the original assigns fewer of them to ``forget_class`` than a quarter
    of the median count of the other classes it assigns them to: then the class is gone from
    the retained data (a whole class is forgotten), the retrained model predicts it for no
    input, and the retained inputs assigned to it must change, so they are left out.

    A wholly forgotten class receives only the original's errors on retained inputs, about
    ``1 - accuracy`` of a class's share: a small fraction on the book's CIFAR-10 models
    (chapter 7), none on the digits. A class still present in the retained data keeps a
    sizeable share: in sub-class forgetting, its other sub-classes (half the class when it
    pairs two, as in the digits' sub-class view; four fifths of a CIFAR-20 superclass). A
    weak model can misassign so much that a forgotten class looks present; then nothing is
    set aside and the rule is as strict as without this step.
    """
    counts = np.bincount(retain_predictions.numpy(), minlength=forget_class + 1)
    others = np.delete(counts, forget_class)
    others = others[others > 0]
    if len(others) and counts[forget_class] < 0.25 * np.median(others):
        keep = retain_predictions != forget_class
        if keep.any():
            return keep
    return torch.ones_like(retain_predictions, dtype=torch.bool)


def _lambdas(lambda_: float | Sequence[float]) -> list[float]:
    """``lambda_`` as a list of distinct valid dampening constants, in the order given."""
    values = list(lambda_) if isinstance(lambda_, Iterable) and not isinstance(lambda_, str) else [lambda_]
    if not values:
        raise ValueError("lambda_ is an empty sequence; give one dampening constant or several")
    for value in values:
        check_hyperparameters(1.0, value)
    return [float(v) for v in dict.fromkeys(values)]


def _edit_size(candidate: AlphaCandidate) -> tuple:
    """Sort key, smallest edit first: fewest weights, then gentler dampening, then larger alpha."""
    return candidate.selected, -candidate.lambda_, -candidate.alpha
