"""The resumable runner: train the models of a config, run its grid of cells, sweep alpha x lambda.

A *cell* is one (target, method row, training seed) of a config. :func:`run_forget` runs
each missing cell and appends its record to ``results.jsonl`` the moment it finishes (its
wall time goes to ``timings.jsonl``, so that the results file itself is reproducible byte
for byte); a restarted run skips the cells already there. Every cell is seeded from its
own key (:func:`cell_seed`), so it gives the same numbers whether it runs first, last, or
after a restart.

Every method runs through :func:`lfssd_tutorial.methods.run_method` on the original model
of its seed. The original model (per seed) and the retrained model (per seed and target)
are checkpoints, trained once and then loaded (:func:`~.store.load_or_train`); they are
seeded with the training seed ``s`` and with ``s + 1``, not from a cell's key.

:func:`forget_request` builds the same data, loaders and models for one (seed, target)
as a :class:`ForgetRequest`, in memory, for code that works with one request at a time
(the book's chapters build theirs with :func:`lfssd_tutorial.digits.digits_request`).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from ..data import DataBundle, DeviceBatches, ForgetSplit, make_loader
from ..dampening import DampeningReport
from ..importance import compute_importance
from ..importance_file import load_importance, save_importance
from ..methods import run_method
from ..metrics import evaluate_accuracy
from ..options import MethodOptions, MethodResult
from ..request import SplitLoaders, evaluate_request, half_accuracies, validation_test_halves
from ..sweep import sweep_alpha_lambda
from ..training import TrainConfig, seed_everything, train_model
from ..unlearn import objective_for
from ..utils import resolve_device
from .build import load_data, loader_options, make_split, model_factory, split_loaders, uses_channels_last
from .config import ExperimentConfig, MethodSpec
from .report import plot_sweep
from .store import append_record, file_slug, load_or_train, peak_rss_mb, read_results

__all__ = ["training_id", "original_checkpoint", "original_file", "cell_key", "cell_seed", "ForgetRequest", "forget_request", "run_train", "run_forget", "run_sweep"]


def training_id(config: ExperimentConfig) -> str:
    """A short hash of what determines a trained model (data, model, training recipe).

    Checkpoint names carry it, so experiments sharing an output folder share the
    original models exactly when they would train identical ones.
    """
    # Where the data live and how the test set is split do not change a trained model; device_batches
    # does, and is left out when off, so that checkpoints named before it existed keep their names.
    data = {k: v for k, v in asdict(config.data).items()
            if k not in ("root", "num_workers", "validation") and not (k == "device_batches" and not v)}
    blob = json.dumps({"data": data, "model": asdict(config.model), "train": asdict(config.train)}, sort_keys=True, default=list)
    return f"{zlib.crc32(blob.encode()):08x}"


def original_checkpoint(config: ExperimentConfig, out_dir: str, seed: int) -> str:
    """Where :func:`run_train` keeps the original model of ``seed`` in ``out_dir``."""
    return os.path.join(out_dir, "checkpoints", original_file(config, seed))


def original_file(config: ExperimentConfig, seed: int) -> str:
    """The file name of the original model of ``seed`` (its checkpoint folder aside)."""
    return f"original-{training_id(config)}-seed{seed}.pt"


def cell_key(config: ExperimentConfig, target, label: str, seed: int) -> str:
    """The key of a cell in the results file: ``"<experiment>|<scenario>|<target>|<label>|<seed>"``."""
    return f"{config.name}|{config.scenario.kind}|{target}|{label}|{seed}"


def cell_seed(*parts) -> int:
    """A seed (31 bits) determined by ``parts`` alone: the CRC-32 of ``"|".join(parts)``."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


class _Experiment:
    """The data, splits and models of one experiment, built when first needed.

    With an ``out_dir``, the trained models are checkpoints in ``out_dir/checkpoints``;
    without one, they are trained in memory (the original once per seed).
    """

    def __init__(self, config: ExperimentConfig, out_dir: str | None, device: torch.device, progress: bool):
        self.config, self.device, self.progress = config, device, progress
        self.train_data = load_data(config, augment=True)
        self.eval_data = load_data(config, augment=False)
        self.factory = model_factory(config, self.eval_data, device)
        self.ckpt_dir = None if out_dir is None else os.path.join(out_dir, "checkpoints")
        self.splits: dict = {}
        self.originals: dict = {}
        self.importances: dict = {}
        self.halves = None
        if config.data.validation:
            d = self.eval_data
            labels = d.test_fine if config.scenario.kind == "sub_class" else d.test_labels
            val, test = validation_test_halves(labels, seed=config.data.subset_seed)
            self.halves = {"val": val, "test": test}

    def split(self, target) -> ForgetSplit:
        if target not in self.splits:
            self.splits[target] = make_split(self.config, self.eval_data, None if self.config.scenario.kind == "random" else target)
        return self.splits[target]

    def loaders(self, target, seed: int) -> SplitLoaders:
        return split_loaders(self.config, self.train_data, self.eval_data, self.split(target), device=self.device, seed=seed)

    def options(self, spec: MethodSpec, seed: int, progress: bool | None = None) -> MethodOptions:
        """What every method of the config is given; SSD/LFSSD read their row's hyperparameters."""
        c = self.config
        baselines = c.baseline_config()
        return MethodOptions(
            baselines=baselines, alpha=c.alpha_of(spec) if spec.dampening else None, lambda_=spec.lambda_,
            calibration_sample=spec.calibration_sample, calibration_lambdas=spec.calibration_lambdas,
            calibration_growth=spec.calibration_growth, calibration_forget_sample=spec.calibration_forget_sample,
            label_samples=spec.label_samples, granularity=spec.granularity,
            model_factory=self.factory,
            device=self.device, progress=self.progress if progress is None else progress, seed=seed,
            autocast_dtype=self.importance_dtype(spec), channels_last=uses_channels_last(c, self.device),
        )

    def importance_dtype(self, spec: MethodSpec) -> torch.dtype | None:
        """bf16 for batch-granularity importance passes on CUDA when ``baselines.importance_bf16``, else ``None``."""
        bf16 = self.device.type == "cuda" and self.config.baseline_config().importance_bf16 and spec.granularity == "batch"
        return torch.bfloat16 if bf16 else None

    def full_importance(self, spec: MethodSpec, seed: int, target, loaders: SplitLoaders) -> tuple[dict, float]:
        """``Imp_D`` of the original of ``seed`` with ``spec``'s objective and granularity, and
        the seconds its pass took; every row with other alphas or lambdas reuses it.

        At batch granularity it depends on how ``D`` is batched, which follows the split
        (``loaders.full``: ``D_r``, then ``D_f``), so it is computed once per target. At sample
        granularity it is a mean over the samples of ``D``, the same for every split, so it is
        computed once per seed over the training set in dataset order, and kept (with an
        ``out_dir``) as ``checkpoints/importance-<training id>-<method>-sample-seed<seed>.safetensors``
        for the other configs of the same models (a ``.pt`` file of the older format there is read too).
        """
        per_seed = spec.granularity == "sample"
        key = (seed, None if per_seed else str(target), spec.method, spec.granularity, spec.label_samples)
        if key in self.importances:
            return self.importances[key]
        c = self.config
        path = None
        if per_seed and self.ckpt_dir is not None:
            draws = "" if spec.label_samples is None else f"-k{spec.label_samples}"
            path = os.path.join(self.ckpt_dir, f"importance-{training_id(c)}-{spec.method}{draws}-sample-seed{seed}.safetensors")
            for saved in (path, path.removesuffix(".safetensors") + ".pt"):
                if os.path.exists(saved):
                    importance, meta = load_importance(saved, with_metadata=True)
                    self.importances[key] = (importance, float(meta["seconds"]))
                    return self.importances[key]
        original, _ = self.original(seed)
        loader = make_loader(self.eval_data.train, batch_size=c.data.batch_size, **loader_options(c, self.device)) if per_seed else loaders.full
        t0 = time.perf_counter()
        objective = objective_for(spec.method)
        draws = {"label_samples": spec.label_samples, "seed": seed} if objective == "true_fisher" else {}
        importance = compute_importance(original, loader, objective=objective, granularity=spec.granularity,
                                        device=self.device, progress=self.progress, autocast_dtype=self.importance_dtype(spec),
                                        channels_last=uses_channels_last(c, self.device), **draws)
        seconds = time.perf_counter() - t0
        if path is not None:
            save_importance(importance, path, metadata={"method": spec.method, "granularity": "sample", "seed": seed,
                                                        "seconds": seconds})
        self.importances[key] = (importance, seconds)
        return self.importances[key]

    def evaluate(self, model: nn.Module, target, loaders: SplitLoaders) -> dict:
        """:func:`~lfssd_tutorial.request.evaluate_request`'s metrics, and with ``data.validation``
        those of each half of the test set (:func:`~lfssd_tutorial.request.half_accuracies`)."""
        metrics = evaluate_request(model, loaders, device=self.device)
        if self.halves is not None:
            metrics.update(half_accuracies(model, self.eval_data, self.split(target), self.halves,
                                           batch_size=loaders.test.batch_size, device=self.device))
        return metrics

    def _meta(self, kind: str, seed: int, target=None) -> dict:
        return {"kind": kind, "experiment": self.config.name, "seed": seed, "target": target, "config": self.config.to_dict()}

    def _trained(self, name: str, train_fn: Callable[[], nn.Module], meta: dict,
                 evaluate: Callable[[nn.Module], dict]) -> tuple[nn.Module, dict]:
        """The checkpoint ``name`` (loaded, or trained by ``train_fn`` and saved); in memory without ``out_dir``."""
        if self.ckpt_dir is None:
            return train_fn().eval(), meta
        return load_or_train(os.path.join(self.ckpt_dir, name), self.factory, lambda _: train_fn(), meta=meta,
                             device=self.device, evaluate=evaluate)

    def original(self, seed: int) -> tuple[nn.Module, dict]:
        """The model trained on all of ``D`` with ``seed``, and its sidecar.

        Seeds every generator with ``seed``, builds the config's model and trains it with
        the config's recipe on the training images, shuffled with ``seed``.
        """
        if seed in self.originals:
            return self.originals[seed]
        c = self.config
        opts = loader_options(c, self.device)
        test_loader = make_loader(self.eval_data.test, batch_size=c.data.batch_size, **opts)

        def train_fn() -> nn.Module:
            seed_everything(seed)
            model = self.factory()  # the seeded initialisation
            if c.data.device_batches:
                loader = DeviceBatches(self.train_data.train, batch_size=c.data.batch_size, seed=seed, device=self.device)
            else:
                loader = make_loader(self.train_data.train, batch_size=c.data.batch_size, shuffle=True, seed=seed, **opts)
            return train_model(model, loader, c.train, device=self.device, progress=self.progress)

        model_info = self._trained(
            original_file(c, seed), train_fn, self._meta("original", seed),
            lambda m: {"test_accuracy": evaluate_accuracy(m, test_loader, device=self.device)},
        )
        if self.ckpt_dir is None:
            self.originals[seed] = model_info
        return model_info

    def retrained(self, seed: int, target, progress: bool | None = None) -> tuple[nn.Module, dict]:
        """The ``retrain`` method's model for ``seed`` and ``target``, and its sidecar.

        Seeds every generator with ``seed + 1`` (so the initialisation shares nothing with
        the original's), then runs the ``retrain`` method: a fresh model of the config,
        trained with the config's recipe on ``D_r`` shuffled with ``seed``.
        """
        c = self.config
        loaders = self.loaders(target, seed)
        spec = MethodSpec("retrain")

        def train_fn() -> nn.Module:
            original, _ = self.original(seed)
            seed_everything(seed + 1)
            return run_method("retrain", original, loaders, self.options(spec, seed, progress)).model

        return self._trained(
            f"retrain-{training_id(c)}-{c.scenario.kind}-{file_slug(target)}-seed{seed}.pt", train_fn,
            self._meta("retrain", seed, str(target)),
            lambda m: {
                "acc_retain": evaluate_accuracy(m, loaders.test_retain, device=self.device),
                "acc_forget": evaluate_accuracy(m, loaders.test_forget, device=self.device),
            },
        )

    def unlearn(self, spec: MethodSpec, original: nn.Module, seed: int, target, loaders: SplitLoaders,
                method_seed: int) -> tuple[MethodResult, float]:
        """Run one method row on ``original``; the result and its wall time in seconds.

        The retrained model is trained once per seed and target and kept as a checkpoint;
        its time is the training time recorded in the checkpoint's sidecar. SSD/LFSSD rows
        share their ``Imp_D`` (:meth:`full_importance`); their time includes that pass's.
        """
        if spec.method == "retrain":
            model, info = self.retrained(seed, target)
            return MethodResult(model), info.get("wall_seconds")
        options = self.options(spec, method_seed)
        shared = 0.0
        if spec.dampening:
            options.full_importance, shared = self.full_importance(spec, seed, target, loaders)
        t0 = time.perf_counter()
        result = run_method(spec.method, original, loaders, options)
        return result, time.perf_counter() - t0 + shared


@dataclass
class ForgetRequest:
    """One forget request of an experiment: its data, split, loaders and trained original model.

    Built by :func:`forget_request`. Its models are the ones :func:`run_forget` trains for
    the same config, seed and target.

    Attributes:
        config: the experiment.
        seed: the training seed of ``original``.
        target: the forget target (a class name, or the random draw's name).
        data: the dataset (without augmentation).
        split: which samples are forgotten.
        loaders: every loader of the request, seeded with ``seed``.
        original: the model trained on all of ``D``.
        make_model: builds a fresh, initialised network of the same architecture.
        device: where the models are trained.
    """

    config: ExperimentConfig
    seed: int
    target: str
    data: DataBundle
    split: ForgetSplit
    loaders: SplitLoaders
    original: nn.Module
    make_model: Callable[[], nn.Module]
    device: torch.device
    experiment: object = field(repr=False)  # the runner's experiment that built the request

    @property
    def train_config(self) -> TrainConfig:
        """The training recipe of ``original`` and of :meth:`retrained`."""
        return self.config.train

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``{"acc_retain", "acc_forget", "mia"}`` of ``model`` (see :func:`~lfssd_tutorial.request.evaluate_request`)."""
        return evaluate_request(model, self.loaders)

    def retrained(self, *, progress: bool = False) -> nn.Module:
        """The retrained model: a fresh network trained on ``D_r`` only, with the original's recipe.

        The runner's ``retrain`` row: every generator seeded with ``seed + 1``, then the
        ``retrain`` method. Each call trains a new model, with the same result.
        """
        return self.experiment.retrained(self.seed, self.target, progress)[0]

    def for_target(self, target) -> ForgetRequest:
        """The request of another ``target`` of the same experiment and seed (same original model)."""
        target = str(target)
        return replace(self, target=target, split=self.experiment.split(target), loaders=self.experiment.loaders(target, self.seed))


def forget_request(config: ExperimentConfig, *, seed: int | None = None, target=None, device=None,
                   progress: bool = False, out_dir: str | None = None) -> ForgetRequest:
    """The forget request of ``config`` for one training ``seed`` and ``target``.

    ``seed`` defaults to the config's first training seed, ``target`` to its first target.
    Without ``out_dir`` the original model is trained in memory as :func:`run_forget` trains
    it (no checkpoint is written). With ``out_dir``, the models are the checkpoints
    :func:`run_train` keeps there (trained and written when missing), so a committed run's
    models are reused.
    """
    device = resolve_device(device)
    seed = config.seeds[0] if seed is None else seed
    target = config.scenario.target_list()[0] if target is None else str(target)
    experiment = _Experiment(config, out_dir, device, progress)
    original, _ = experiment.original(seed)
    return ForgetRequest(config=config, seed=seed, target=target, data=experiment.eval_data, split=experiment.split(target),
                         loaders=experiment.loaders(target, seed), original=original, make_model=experiment.factory,
                         device=device, experiment=experiment)


def _dampening_fields(spec: MethodSpec, alpha: float | str, report: DampeningReport) -> dict:
    fields = {
        "alpha": alpha, "lambda": spec.lambda_, "granularity": spec.granularity,
        "selected": int(report.total_selected), "fraction_selected": float(report.fraction_selected),
        "max_ratio": float(report.max_ratio) if math.isfinite(report.max_ratio) else None,
    }
    choice = report.calibration
    if choice is not None:  # alpha "auto": the alpha and lambda chosen, and the calibration's warning
        fields.update({"alpha": choice.alpha, "lambda": choice.lambda_, "alpha_rule": "auto",
                       "calibration_warning": choice.warning, "set_aside": choice.set_aside})
    return fields


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
    methods: Sequence[str] | None = None,
    on_cell: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every missing cell of the grid; return all records of the results file.

    Cells already in ``out_dir/results.jsonl`` are skipped. ``max_cells`` stops after
    that many new cells (the rest are left for a later run); ``methods`` runs only the rows
    whose label matches one of these shell patterns (``"LFSSD*"``, ``"Retrain"``), so cheap
    rows can run first; ``on_cell`` is called with each new record after it is written.
    """
    rows = list(zip(config.methods, config.labels()))
    if methods is not None:
        rows = [(spec, label) for spec, label in rows if any(fnmatch.fnmatchcase(label, p) for p in methods)]
        unmatched = [p for p in methods if not any(fnmatch.fnmatchcase(label, p) for label in config.labels())]
        if unmatched:
            raise ValueError(f"methods {unmatched} match no row of config {config.name!r}; its rows are {config.labels()}")
    device = resolve_device(device)
    os.makedirs(out_dir, exist_ok=True)
    results_path = os.path.join(out_dir, "results.jsonl")
    timings_path = os.path.join(out_dir, "timings.jsonl")
    done = {r["key"] for r in read_results(results_path)}
    experiment: _Experiment | None = None
    new = 0
    for seed in seeds if seeds is not None else config.seeds:
        for target in config.scenario.target_list():
            for spec, label in rows:
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
                    **experiment.evaluate(result.model, target, loaders),
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
    importances are computed once (``Imp_D`` as :func:`run_forget` computes it, so a per-sample
    ``Imp_D`` saved by the forget cells is read, not recomputed); :func:`lfssd_tutorial.sweep.sweep_alpha_lambda`
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
        full_imp, _ = experiment.full_importance(MethodSpec(method, granularity=granularity), seed, target, loaders)
        forget_imp = compute_importance(original, loaders.forget, objective=objective_for(method), granularity=granularity,
                                        device=device, progress=progress)

        def evaluate(model: nn.Module) -> dict[str, float]:
            metrics = {"acc_retain": evaluate_accuracy(model, loaders.test_retain, device=device),
                       "acc_forget": evaluate_accuracy(model, loaders.test_forget, device=device)}
            if experiment.halves is not None:
                metrics.update(half_accuracies(model, experiment.eval_data, experiment.split(target), experiment.halves,
                                               batch_size=loaders.test.batch_size, device=device))
            return metrics

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
