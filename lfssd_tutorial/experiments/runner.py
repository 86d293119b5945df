"""The resumable runner: train the models of a config, run its grid of cells, sweep alpha x lambda.

A *cell* is one (target, method row, training seed) of a config. :func:`run_forget` runs
each missing cell and appends its record to ``results.jsonl`` the moment it finishes (its
wall time goes to ``timings.jsonl``, so that the results file itself is reproducible byte
for byte); a restarted run skips the cells already there. Every cell is seeded from its
own key (:func:`cell_seed`), so it gives the same numbers whether it runs first, last, or
after a restart.

Every method runs through :func:`lfssd_tutorial.methods.run_method` on the original model
of its seed. The original model (per seed) and the retrained model (per seed and target)
are checkpoints, trained once and then loaded (:func:`~.store.load_or_train`).
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
from torch import nn

from ..data import ForgetSplit, make_loader
from ..dampening import DampeningReport
from ..importance import compute_importance
from ..methods import run_method
from ..metrics import evaluate_accuracy
from ..options import MethodOptions, MethodResult
from ..request import SplitLoaders, evaluate_request
from ..sweep import sweep_alpha_lambda
from ..training import seed_everything, train_model
from ..unlearn import objective_for
from ..utils import resolve_device
from .build import load_data, loader_options, make_split, model_factory, split_loaders, uses_channels_last
from .config import ExperimentConfig, MethodSpec
from .report import plot_sweep
from .store import append_record, file_slug, load_or_train, peak_rss_mb, read_results

__all__ = ["training_id", "cell_key", "cell_seed", "run_train", "run_forget", "run_sweep"]


def training_id(config: ExperimentConfig) -> str:
    """A short hash of what determines a trained model (data, model, training recipe).

    Checkpoint names carry it, so experiments sharing an output folder share the
    original models exactly when they would train identical ones.
    """
    data = {k: v for k, v in asdict(config.data).items() if k not in ("root", "num_workers")}
    blob = json.dumps({"data": data, "model": asdict(config.model), "train": asdict(config.train)}, sort_keys=True, default=list)
    return f"{zlib.crc32(blob.encode()):08x}"


def cell_key(config: ExperimentConfig, target, label: str, seed: int) -> str:
    """The key of a cell in the results file: ``"<experiment>|<scenario>|<target>|<label>|<seed>"``."""
    return f"{config.name}|{config.scenario.kind}|{target}|{label}|{seed}"


def cell_seed(*parts) -> int:
    """A seed (31 bits) determined by ``parts`` alone: the CRC-32 of ``"|".join(parts)``."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


class _Experiment:
    """The data, splits and models of one experiment, built when first needed."""

    def __init__(self, config: ExperimentConfig, out_dir: str, device: torch.device, progress: bool):
        self.config, self.device, self.progress = config, device, progress
        self.train_data = load_data(config, augment=True)
        self.eval_data = load_data(config, augment=False)
        self.factory = model_factory(config, self.eval_data, device)
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        self.splits: dict = {}

    def split(self, target) -> ForgetSplit:
        if target not in self.splits:
            self.splits[target] = make_split(self.config, self.eval_data, None if self.config.scenario.kind == "random" else target)
        return self.splits[target]

    def loaders(self, target, seed: int) -> SplitLoaders:
        return split_loaders(self.config, self.train_data, self.eval_data, self.split(target), device=self.device, seed=seed)

    def options(self, spec: MethodSpec, seed: int) -> MethodOptions:
        """What every method of the config is given; SSD/LFSSD read their row's hyperparameters."""
        c = self.config
        baselines = c.baseline_config()
        bf16 = self.device.type == "cuda" and baselines.importance_bf16 and spec.granularity == "batch"
        return MethodOptions(
            baselines=baselines, alpha=c.alpha_of(spec) if spec.dampening else None, lambda_=spec.lambda_,
            granularity=spec.granularity, model_factory=self.factory, device=self.device, progress=self.progress,
            seed=seed, autocast_dtype=torch.bfloat16 if bf16 else None, channels_last=uses_channels_last(c, self.device),
        )

    def _meta(self, kind: str, seed: int, target=None) -> dict:
        return {"kind": kind, "experiment": self.config.name, "seed": seed, "target": target, "config": self.config.to_dict()}

    def original(self, seed: int) -> tuple[nn.Module, dict]:
        """The model trained on all of ``D`` with ``seed`` (a checkpoint), and its sidecar."""
        c = self.config
        opts = loader_options(c, self.device)
        test_loader = make_loader(self.eval_data.test, batch_size=c.data.batch_size, **opts)

        def train_fn(model: nn.Module) -> nn.Module:
            seed_everything(seed)
            model = self.factory()  # the seeded initialisation
            loader = make_loader(self.train_data.train, batch_size=c.data.batch_size, shuffle=True, seed=seed, **opts)
            return train_model(model, loader, c.train, device=self.device, progress=self.progress)

        return load_or_train(
            os.path.join(self.ckpt_dir, f"original-{training_id(c)}-seed{seed}.pt"), self.factory, train_fn,
            meta=self._meta("original", seed), device=self.device,
            evaluate=lambda m: {"test_accuracy": evaluate_accuracy(m, test_loader, device=self.device)},
        )

    def retrained(self, seed: int, target) -> tuple[nn.Module, dict]:
        """The ``retrain`` method's model for ``seed`` and ``target`` (a checkpoint), and its sidecar."""
        c = self.config
        loaders = self.loaders(target, seed)
        spec = MethodSpec("retrain")

        def train_fn(model: nn.Module) -> nn.Module:
            seed_everything(cell_seed("retrain", seed, target))
            original, _ = self.original(seed)
            return run_method("retrain", original, loaders, self.options(spec, seed)).model

        return load_or_train(
            os.path.join(self.ckpt_dir, f"retrain-{training_id(c)}-{c.scenario.kind}-{file_slug(target)}-seed{seed}.pt"),
            self.factory, train_fn, meta=self._meta("retrain", seed, str(target)), device=self.device,
            evaluate=lambda m: {
                "acc_retain": evaluate_accuracy(m, loaders.test_retain, device=self.device),
                "acc_forget": evaluate_accuracy(m, loaders.test_forget, device=self.device),
            },
        )

    def unlearn(self, spec: MethodSpec, original: nn.Module, seed: int, target, loaders: SplitLoaders,
                method_seed: int) -> tuple[MethodResult, float]:
        """Run one method row on ``original``; the result and its wall time in seconds.

        The retrained model is trained once per seed and target and kept as a checkpoint;
        its time is the training time recorded in the checkpoint's sidecar.
        """
        if spec.method == "retrain":
            model, info = self.retrained(seed, target)
            return MethodResult(model), info.get("wall_seconds")
        t0 = time.perf_counter()
        result = run_method(spec.method, original, loaders, self.options(spec, method_seed))
        return result, time.perf_counter() - t0


def _dampening_fields(spec: MethodSpec, alpha: float, report: DampeningReport) -> dict:
    return {
        "alpha": alpha, "lambda": spec.lambda_, "granularity": spec.granularity,
        "selected": int(report.total_selected), "fraction_selected": float(report.fraction_selected),
        "max_ratio": float(report.max_ratio) if math.isfinite(report.max_ratio) else None,
    }


def run_train(config: ExperimentConfig, *, out_dir: str, device=None, progress: bool = False, seeds: Sequence[int] | None = None,
              retrain: bool = True) -> list[dict]:
    """Train (or load) the original model of every seed and, with ``retrain``, the retrained
    model of every target (when the config has a ``retrain`` row); return their sidecars."""
    experiment = _Experiment(config, out_dir, resolve_device(device), progress)
    infos = []
    for seed in seeds if seeds is not None else config.seeds:
        infos.append(experiment.original(seed)[1])
        if retrain and any(m.method == "retrain" for m in config.methods):
            for target in config.scenario.target_list():
                infos.append(experiment.retrained(seed, target)[1])
    return infos


def run_forget(
    config: ExperimentConfig,
    *,
    out_dir: str,
    device=None,
    progress: bool = False,
    seeds: Sequence[int] | None = None,
    max_cells: int | None = None,
    on_cell: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every missing cell of the grid; return all records of the results file.

    Cells already in ``out_dir/results.jsonl`` are skipped. ``max_cells`` stops after
    that many new cells (the rest are left for a later run); ``on_cell`` is called with
    each new record after it is written.
    """
    device = resolve_device(device)
    os.makedirs(out_dir, exist_ok=True)
    results_path = os.path.join(out_dir, "results.jsonl")
    timings_path = os.path.join(out_dir, "timings.jsonl")
    done = {r["key"] for r in read_results(results_path)}
    experiment: _Experiment | None = None
    new = 0
    for seed in seeds if seeds is not None else config.seeds:
        for target in config.scenario.target_list():
            for spec, label in zip(config.methods, config.labels()):
                key = cell_key(config, target, label, seed)
                if key in done:
                    continue
                if max_cells is not None and new >= max_cells:
                    return read_results(results_path)
                experiment = experiment or _Experiment(config, out_dir, device, progress)
                original, _ = experiment.original(seed)
                split = experiment.split(target)
                seed_of_cell = cell_seed(key)
                loaders = experiment.loaders(target, seed_of_cell)
                seed_everything(seed_of_cell)
                result, seconds = experiment.unlearn(spec, original, seed, target, loaders, seed_of_cell)
                record = {
                    "key": key, "experiment": config.name, "dataset": config.data.dataset, "model": config.model.name,
                    "scenario": config.scenario.kind, "target": str(target), "method": spec.method, "label": label,
                    "seed": seed, "n_forget": int(len(split.forget)), "n_retain": int(len(split.retain)),
                    **evaluate_request(result.model, loaders, device=device),
                }
                if result.report is not None:
                    record.update(_dampening_fields(spec, config.alpha_of(spec), result.report))
                append_record(results_path, record)
                append_record(timings_path, {"key": key, "seconds": seconds, "device": str(device), "peak_rss_mb": peak_rss_mb()})
                done.add(key)
                new += 1
                if on_cell is not None:
                    on_cell(record)
    return read_results(results_path)


def run_sweep(
    config: ExperimentConfig,
    *,
    out_dir: str,
    method: str = "lfssd",
    alphas: Sequence[float] = (1.5, 2, 3, 5, 7, 10),
    lambdas: Sequence[float] = (0.5, 1, 2),
    granularity: str = "batch",
    target=None,
    seed: int | None = None,
    device=None,
    progress: bool = False,
) -> list[dict]:
    """Acc(D_r) and Acc(D_f) on an alpha x lambda grid for one target and seed.

    ``target`` defaults to the config's first, ``seed`` to its first training seed. The
    importances are computed once; :func:`lfssd_tutorial.sweep.sweep_alpha_lambda`
    dampens a fresh copy of the original model per grid point. Records go to
    ``sweep-<method>-<granularity>-<target>-seed<seed>.jsonl`` as each point finishes
    (points already there are not recomputed) and a heatmap PNG next to it; all the
    file's records are returned.
    """
    device = resolve_device(device)
    target = target if target is not None else config.scenario.target_list()[0]
    seed = config.seeds[0] if seed is None else seed
    os.makedirs(out_dir, exist_ok=True)
    stem = f"sweep-{method}-{granularity}-{file_slug(target)}-seed{seed}"
    path = os.path.join(out_dir, stem + ".jsonl")
    done = {(r["alpha"], r["lambda"]) for r in read_results(path)}
    if any((float(a), float(lam)) not in done for a in alphas for lam in lambdas):
        experiment = _Experiment(config, out_dir, device, progress)
        original, _ = experiment.original(seed)
        loaders = experiment.loaders(target, cell_seed("sweep", seed, target))
        objective = objective_for(method)
        full_imp, forget_imp = (compute_importance(original, loader, objective=objective, granularity=granularity, device=device,
                                                   progress=progress) for loader in (loaders.full, loaders.forget))

        def evaluate(model: nn.Module) -> dict[str, float]:
            return {"acc_retain": evaluate_accuracy(model, loaders.test_retain, device=device),
                    "acc_forget": evaluate_accuracy(model, loaders.test_forget, device=device)}

        def record(alpha: float, lambda_: float, metrics, report: DampeningReport) -> None:
            append_record(path, {
                "experiment": config.name, "method": method, "granularity": granularity, "target": str(target), "seed": seed,
                "alpha": alpha, "lambda": lambda_, **metrics, "selected": int(report.total_selected),
                "max_ratio": float(report.max_ratio) if math.isfinite(report.max_ratio) else None,
            })

        sweep_alpha_lambda(original, full_imp, forget_imp, evaluate, alphas=alphas, lambdas=lambdas, label=method,
                           progress=progress, skip=done, on_point=record)
    records = read_results(path)
    plot_sweep(records, os.path.join(out_dir, stem + ".png"))
    return records
