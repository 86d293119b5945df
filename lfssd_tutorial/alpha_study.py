"""Does a way of choosing alpha carry over to a new forget request? An out-of-sample study.

For each forget request (a training seed and a forget target of an experiment config) and
each method (SSD, LFSSD), :func:`run_alpha_study` computes ``Imp_D`` and ``Imp_Df`` once,
then dampens a copy of the original model

* at the alpha and lambda :func:`~lfssd_tutorial.calibrate_alpha` chooses, from
  predictions only, on ``D_f`` and a sample of retained *training* inputs, among the
  candidate lambdas ``calibration_lambdas`` and the alphas spaced by ``growth`` in number
  of selected weights;
* at every alpha of a fixed grid (which holds the published alpha = 10), at ``lambda_``,

and measures Acc(D_r) and Acc(D_f) on two disjoint halves of the test set, stratified by
class: the *validation* half, on which a fixed alpha may be chosen with labels, and the
*test* half, on which every rule is reported. The original and the retrained model are
measured the same way.

A request *succeeds* at an alpha when, on the test half, its Acc(D_f) is within
``forget_tolerance`` (5) points of the retrained model's and its Acc(D_r) at most
``retain_tolerance`` (2) points below the original's (:func:`succeeds`).
:func:`summarise_study` gives the share of successes of three rules: the calibrated alpha,
the published alpha, and the best fixed alpha chosen on the validation half of the
*other* targets' requests (leave one target out).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch

from .calibrate import CALIBRATION_GROWTH, CALIBRATION_LAMBDAS, calibrate_alpha
from .experiments import ExperimentConfig, append_record, forget_request, read_results
from .importance import compute_importance
from .request import half_accuracies, validation_test_halves
from .request import retain_sample as sample_retained
from .request import sample_loader
from .sweep import dampen_copy
from .unlearn import objective_for
from .utils import progress as progress_bar

__all__ = ["FIXED_ALPHAS", "PUBLISHED_ALPHA", "run_alpha_study", "succeeds", "summarise_study"]

#: The fixed alphas of the study.
FIXED_ALPHAS = (1.5, 2.0, 3.0, 5.0, 7.0, 10.0)
#: The alpha the papers publish for SSD and LFSSD on ResNet18.
PUBLISHED_ALPHA = 10.0


def run_alpha_study(
    config: ExperimentConfig,
    *,
    seeds: Sequence[int],
    targets: Sequence | None = None,
    methods: Sequence[str] = ("ssd", "lfssd"),
    fixed_alphas: Sequence[float] = FIXED_ALPHAS,
    retain_sample: int = 256,
    forget_sample: int | None = None,
    lambda_: float = 1.0,
    calibration_lambdas: Sequence[float] = CALIBRATION_LAMBDAS,
    growth: float = CALIBRATION_GROWTH,
    out_dir: str | None = None,
    records_file: str | None = None,
    retrained_forget: float | None = None,
    evaluate_candidates: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict]:
    """Run the study on ``config``'s requests for ``seeds`` x ``targets``; return its records.

    ``targets`` defaults to the config's. The calibration's retained sample is
    ``retain_sample`` training inputs of ``D_r``, drawn with the training seed, and it reads
    ``forget_sample`` inputs of ``D_f`` drawn the same way (all of ``D_f`` by default; the
    importances always use all of it). It chooses
    among ``calibration_lambdas`` (pass ``(1.0,)`` to fix lambda) and alphas spaced by
    ``growth``. The fixed grid is dampened at ``lambda_``. Records:

    * ``{"kind": "reference", "model": "original" | "retrained", ...}`` per request;
    * ``{"kind": "fixed", "method", "alpha", "lambda", "selected", ...}`` per method and grid alpha;
    * ``{"kind": "candidate", "method", "alpha", "lambda", "selected", "forget_agreement",
      "retain_agreement", "admissible", ...}`` per method and candidate pair the calibration
      tried (what it measured, and the labelled accuracies it did not see);
    * ``{"kind": "calibrated", ..., "warning", "max_ratio", "seconds", "importance_seconds"}``
      per method: the chosen candidate, the calibration's warning (or ``None``), the ratio
      ceiling, how many retained inputs it set aside (``AlphaChoice.set_aside``), the
      calibration's wall time and that of the ``Imp_D`` pass;

    each with ``seed``, ``target`` and the four accuracies of :func:`validation_test_halves`' halves.

    For a long study:

    * ``out_dir`` takes the models from a run's checkpoints (see
      :func:`~lfssd_tutorial.experiments.forget_request`);
    * ``records_file`` (JSON Lines) gets each request's records for each method as soon as
      they are measured, and the ones it already holds are skipped and returned, so an
      interrupted study resumes;
    * ``retrained_forget`` skips the retrained models: the retrained model's Acc(D_f) is
      taken as this value on both halves (0 for full-class forgetting, where a model
      trained without the class does not predict it), and its record holds no Acc(D_r),
      which :func:`succeeds` does not read;
    * ``evaluate_candidates=False`` measures the labelled accuracies of the calibrated
      candidate only (one pass over the test set instead of one per candidate); the other
      candidates' records then hold what the calibration measured, and
      :func:`summarise_study` cannot count ``any_candidate``.
    """
    targets = list(config.scenario.target_list() if targets is None else targets)
    requests = [(seed, str(target)) for seed in seeds for target in targets]
    stored = read_results(records_file) if records_file else []
    done = {(r["seed"], r["target"], r.get("method")) for r in stored}
    records = list(stored)

    def keep(new: list[dict]) -> None:
        records.extend(new)
        if records_file:
            for r in new:
                append_record(records_file, r)

    base = None
    for seed, target in progress_bar(requests, progress, "alpha study"):
        todo = [m for m in methods if (seed, target, m) not in done]
        if not todo:
            continue
        if base is None or base.seed != seed:
            base = forget_request(config, seed=seed, target=target, device=device, out_dir=out_dir)
        request = base.for_target(target)
        fine = request.data.test_fine if config.scenario.kind == "sub_class" else request.data.test_labels
        val, test = validation_test_halves(fine, seed=0)

        def evaluate(model, request=request, halves={"val": val, "test": test}):
            return half_accuracies(model, request.data, request.split, halves, batch_size=request.loaders.retain.batch_size)

        where = {"seed": seed, "target": target}
        if (seed, target, None) not in done:
            if retrained_forget is None:
                retrained = evaluate(request.retrained())
            else:
                retrained = {"val_forget": float(retrained_forget), "test_forget": float(retrained_forget), "assumed": True}
            keep([{**where, "kind": "reference", "model": "original", **evaluate(request.original)},
                  {**where, "kind": "reference", "model": "retrained", **retrained}])
        retain_loader = sample_retained(request.loaders, retain_sample, seed=seed)
        forget_loader = request.loaders.forget
        if forget_sample is not None:
            forget_loader = sample_loader(forget_loader, forget_sample, seed=seed)
        for method in todo:
            new = []
            objective = objective_for(method)
            t0 = time.perf_counter()
            full = compute_importance(request.original, request.loaders.full, objective=objective, device=device)
            importance_seconds = time.perf_counter() - t0
            forget = compute_importance(request.original, request.loaders.forget, objective=objective, device=device)
            for alpha in fixed_alphas:
                model, report = dampen_copy(request.original, full, forget, alpha=alpha, lambda_=lambda_)
                new.append({**where, "kind": "fixed", "method": method, "alpha": float(alpha),
                            "lambda": float(lambda_), "selected": report.total_selected, **evaluate(model)})
            t0 = time.perf_counter()
            choice = calibrate_alpha(request.original, full, forget, forget_loader, retain_loader,
                                     lambda_=tuple(calibration_lambdas), growth=growth, device=device, warn=False)
            seconds = time.perf_counter() - t0
            for c in choice.candidates:
                chosen = (c.alpha, c.lambda_) == (choice.alpha, choice.lambda_)
                accuracies = {}
                if evaluate_candidates or chosen:
                    model, _ = dampen_copy(request.original, full, forget, alpha=c.alpha, lambda_=c.lambda_)
                    accuracies = evaluate(model)
                new.append({**where, "kind": "candidate", "method": method, "alpha": c.alpha, "lambda": c.lambda_,
                            "selected": c.selected, "forget_agreement": c.forget_agreement,
                            "retain_agreement": c.retain_agreement, "admissible": c.admissible, **accuracies})
                if chosen:
                    new.append({**new[-1], "kind": "calibrated", "warning": choice.warning,
                                "max_ratio": choice.max_ratio, "set_aside": choice.set_aside, "seconds": seconds,
                                "importance_seconds": importance_seconds})
            keep(new)
    return records


def succeeds(record: dict, original: dict, retrained: dict, *, half: str = "test", forget_tolerance: float = 5.0,
             retain_tolerance: float = 2.0) -> bool:
    """Whether a dampened model's accuracies (``record``) meet the goal on ``half``: Acc(D_f)
    within ``forget_tolerance`` points of ``retrained``'s, Acc(D_r) at most ``retain_tolerance``
    points below ``original``'s."""
    return (abs(record[f"{half}_forget"] - retrained[f"{half}_forget"]) <= forget_tolerance + 1e-9
            and record[f"{half}_retain"] >= original[f"{half}_retain"] - retain_tolerance - 1e-9)


def summarise_study(records: Iterable[dict], *, published_alpha: float = PUBLISHED_ALPHA, **tolerances) -> list[dict]:
    """The share of requests each rule gets right, per method.

    One row per method: ``requests``, and the successes (on the test half) of
    ``calibrated``, ``published`` (``published_alpha``) and ``leave_one_out`` (the fixed
    alpha with the most successes on the validation half of the other targets' requests,
    all seeds; ties go to the larger alpha), plus the alphas leave-one-out chose and the
    calibrated alphas and lambdas.
    ``any_candidate`` counts the requests where at least one of the calibration's
    candidates succeeds: the most that any rule choosing among them could reach (``None``
    when the study did not measure every candidate's accuracies). Keyword
    arguments go to :func:`succeeds`.
    """
    records = list(records)
    refs = {(r["seed"], r["target"], r["model"]): r for r in records if r["kind"] == "reference"}
    rows = []
    for method in dict.fromkeys(r["method"] for r in records if r["kind"] != "reference"):
        fixed = [r for r in records if r["kind"] == "fixed" and r["method"] == method]
        calibrated = [r for r in records if r["kind"] == "calibrated" and r["method"] == method]
        alphas = sorted({r["alpha"] for r in fixed})

        def ok(r, half="test"):
            return succeeds(r, refs[(r["seed"], r["target"], "original")], refs[(r["seed"], r["target"], "retrained")],
                            half=half, **tolerances)

        loo, chosen = 0, []
        for r in calibrated:
            others = [f for f in fixed if f["target"] != r["target"]]
            best = max(alphas, key=lambda a: (sum(ok(f, "val") for f in others if f["alpha"] == a), a))
            chosen.append(best)
            mine = next(f for f in fixed if f["seed"] == r["seed"] and f["target"] == r["target"] and f["alpha"] == best)
            loo += ok(mine)
        candidates = [r for r in records if r["kind"] == "candidate" and r["method"] == method]
        reachable = None
        if all("test_forget" in c for c in candidates):
            reachable = sum(any(ok(c) for c in candidates if c["seed"] == r["seed"] and c["target"] == r["target"])
                            for r in calibrated)
        published = [f for f in fixed if f["alpha"] == published_alpha]
        rows.append({
            "method": method,
            "requests": len(calibrated),
            "calibrated": sum(ok(r) for r in calibrated),
            "published": sum(ok(f) for f in published) if published else None,
            "leave_one_out": loo,
            "any_candidate": reachable,
            "leave_one_out_alphas": sorted(set(chosen)),
            "calibrated_alphas": [r["alpha"] for r in calibrated],
            "calibrated_lambdas": [r["lambda"] for r in calibrated],
        })
    return rows
