"""Experiment configs: the schema, its validation, and reading config files.

A config file (YAML or JSON; see ``configs/``) describes one experiment grid::

    name: cifar10-random-resnet18
    data: {dataset: cifar10, root: null, batch_size: 64}
    model: {name: resnet18}
    train: {epochs: 20, lr: 0.1, milestones: [8, 12, 16]}
    scenario: {kind: random, forget_fraction: 0.00165}
    methods: [original, retrain, finetune, bad_teacher, amnesiac, unsir, ssd, lfssd]
    seeds: [0, 1, 2]

Each section is a dataclass. :func:`config_from_dict` builds them field by field: it checks
every value against the field's type hint, then lets the dataclass check its ranges. Every
error is a :class:`ConfigError` whose message starts with the bad field's path
(``data.batch_size``, ``methods[1].method``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ..options import BaselineConfig
from ..training import TrainConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "ScenarioConfig",
    "MethodSpec",
    "ExperimentConfig",
    "DATASETS",
    "MODELS",
    "SCENARIOS",
    "METHOD_NAMES",
    "default_alpha",
    "method_label",
    "config_from_dict",
    "load_config",
]

DATASETS = ("digits", "digits-super", "cifar10", "cifar100", "cifar20", "imagefolder")
MODELS = ("small_cnn", "resnet18", "resnet9", "small_vit", "vit_b_16")
SCENARIOS = ("full_class", "sub_class", "random")
METHOD_NAMES = ("original", "retrain", "retrain_head", "finetune", "bad_teacher", "amnesiac", "unsir", "ssd", "lfssd",
                "ssd_true_fisher")
_DISPLAY = {
    "original": "Original",
    "retrain": "Retrain",
    "retrain_head": "Retrain (head only)",
    "finetune": "Finetune",
    "bad_teacher": "Bad Teacher",
    "amnesiac": "Amnesiac",
    "unsir": "UNSIR",
    "ssd": "SSD",
    "lfssd": "LFSSD",
    "ssd_true_fisher": "SSD-true-Fisher",
}


class ConfigError(ValueError):
    """An invalid experiment config.

    ``field`` is the path of the offending field (``"data.batch_size"``, ``"methods[0].alpha"``);
    the message is ``"<field>: <problem>"``.
    """

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def _require(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ConfigError(field, problem)


# ---------------------------------------------------------------------------- the sections


@dataclass
class DataConfig:
    """Which data, where, and how it is loaded.

    ``dataset`` is one of :data:`DATASETS`. ``root`` is the data folder (not needed for
    the bundled digits; the CLI's ``--data-root`` overrides it). ``train_subset`` /
    ``test_subset`` take a class-stratified subset of that many images (fixed by
    ``subset_seed``) for reduced-scale runs. ``image_size`` defaults to 224 for
    ``vit_b_16`` and 32 otherwise (resized on the fly). ``num_workers`` defaults to
    ``min(8, cpus)`` on CUDA and 0 on CPU. ``in_memory`` (``imagefolder`` only) decodes
    every image once into memory and augments by crop and flip (see
    :func:`~lfssd_tutorial.data.load_image_folder`); ``device_batches`` then cuts and
    augments the training batches of the original and retrained models on the device, from
    one copy of the images there (:class:`~lfssd_tutorial.data.DeviceBatches`; for GPUs).
    ``validation`` splits the test set into
    a validation and a test half (:func:`~lfssd_tutorial.request.validation_test_halves`,
    stratified, fixed by ``subset_seed``): every result then also records Acc(D_r) and
    Acc(D_f) on each half (``val_retain``, ``val_forget``, ``test_retain``, ``test_forget``),
    so that hyperparameters chosen on one half are reported on the other.
    """

    dataset: str = "digits"
    root: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    batch_size: int = 64
    image_size: int | None = None
    num_workers: int | None = None
    in_memory: bool = False
    device_batches: bool = False
    validation: bool = False

    def __post_init__(self) -> None:
        _require(not self.in_memory or self.dataset == "imagefolder", "in_memory",
                 f"only the imagefolder dataset can be decoded into memory, not {self.dataset!r}")
        _require(not self.device_batches or self.in_memory, "device_batches", "needs in_memory: true (images decoded into memory)")
        _require(self.dataset in DATASETS, "dataset", f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            _require(value is None or value >= 1, name, f"must be >= 1 or null, got {value}")


@dataclass
class ModelConfig:
    """``name`` is one of ``MODELS`` (small_cnn, resnet18, resnet9, small_vit, vit_b_16); ``width`` and ``options`` go to the builder."""

    name: str = "resnet18"
    width: int | None = None
    pretrained: bool = True
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.name in MODELS, "name", f"unknown model {self.name!r}; choose one of {', '.join(MODELS)}")
        _require(self.width is None or self.width >= 1, "width", f"must be >= 1, got {self.width}")

    @property
    def family(self) -> str:
        """``"vit"`` for the vision transformers, else ``"resnet"``."""
        return "vit" if "vit" in self.name else "resnet"


@dataclass
class ScenarioConfig:
    """``kind``: ``full_class``, ``sub_class`` or ``random``.

    ``targets`` are class names (full-class) or fine-class names (sub-class), forgotten
    one at a time. Random forgetting draws ``forget_n`` samples, or ``forget_fraction``
    of the training set, with ``split_seed``.
    """

    kind: str = "full_class"
    targets: list = field(default_factory=list)
    forget_n: int | None = None
    forget_fraction: float | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        _require(self.kind in SCENARIOS, "kind", f"unknown scenario {self.kind!r}; choose one of {', '.join(SCENARIOS)}")
        if self.kind == "random":
            _require((self.forget_n is None) != (self.forget_fraction is None), "forget_n",
                     "random forgetting needs exactly one of forget_n or forget_fraction")
            _require(self.forget_fraction is None or 0 < self.forget_fraction < 1, "forget_fraction",
                     f"must be in (0, 1), got {self.forget_fraction}")
            _require(self.forget_n is None or self.forget_n >= 1, "forget_n", f"must be >= 1, got {self.forget_n}")
        else:
            _require(bool(self.targets), "targets", f"{self.kind} forgetting needs at least one target class")

    def target_list(self) -> list:
        """The forget targets, one per request (random forgetting has one, named after its draw)."""
        if self.kind == "random":
            what = f"n{self.forget_n}" if self.forget_n is not None else f"f{self.forget_fraction:g}"
            return [f"random-{what}-s{self.split_seed}"]
        return list(self.targets)


@dataclass
class MethodSpec:
    """One row of a results table: a method and, for SSD/LFSSD, its hyperparameters.

    ``alpha`` ``None`` means the papers' default for the model and scenario
    (:func:`default_alpha`); ``"auto"`` chooses it per request without labels
    (:func:`~lfssd_tutorial.calibrate_alpha`, on ``D_f`` and a sample of ``calibration_sample``
    retained training inputs). With ``"auto"``, ``calibration_lambdas`` lists candidate
    lambdas to choose among as well (``lambda_`` is then unused), ``calibration_growth`` spaces
    the candidate alphas, and ``calibration_forget_sample`` calibrates on that many ``D_f``
    inputs instead of all (chapter 7's CIFAR-10 study: ``[0.5, 1, 2]``, ``1.4142`` and 1,024).
    ``label`` defaults to a readable name. In a config file ``lambda_`` is written ``lambda``.
    """

    method: str
    alpha: float | str | None = None
    lambda_: float = 1.0
    granularity: str = "batch"
    label: str | None = None
    calibration_sample: int = 256
    calibration_lambdas: list[float] | None = None
    calibration_growth: float = 2.0
    calibration_forget_sample: int | None = None
    label_samples: int | None = None

    def __post_init__(self) -> None:
        _require(self.method in METHOD_NAMES, "method", f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        _require(self.granularity in ("batch", "sample"), "granularity", f"must be 'batch' or 'sample', got {self.granularity!r}")
        if isinstance(self.alpha, str):
            _require(self.alpha == "auto", "alpha", f"must be a number or 'auto', got {self.alpha!r}")
        else:
            _require(self.alpha is None or self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        _require(self.calibration_sample >= 1, "calibration_sample", f"must be >= 1, got {self.calibration_sample}")
        _require(self.calibration_growth > 1, "calibration_growth", f"must be > 1, got {self.calibration_growth}")
        _require(self.calibration_forget_sample is None or self.calibration_forget_sample >= 1, "calibration_forget_sample",
                 f"must be >= 1, got {self.calibration_forget_sample}")
        _require(self.calibration_lambdas is None or (bool(self.calibration_lambdas) and min(self.calibration_lambdas) >= 0),
                 "calibration_lambdas", f"must be a non-empty list of lambdas >= 0, got {self.calibration_lambdas}")
        calibrated = self.calibration_lambdas is not None or self.calibration_forget_sample is not None or self.calibration_growth != 2.0
        _require(self.alpha == "auto" or not calibrated, "alpha",
                 "calibration_lambdas, calibration_growth and calibration_forget_sample need alpha: auto")
        _require(self.label_samples is None or (self.method == "ssd_true_fisher" and self.label_samples >= 1), "label_samples",
                 f"only ssd_true_fisher draws labels, and at least one per input; got {self.label_samples!r} for {self.method!r}")
        _require(self.lambda_ >= 0, "lambda", f"must be >= 0, got {self.lambda_}")
        _require(self.dampening or (self.alpha is None and self.granularity == "batch"), "alpha",
                 f"only ssd and lfssd take alpha/lambda/granularity, not {self.method!r}")

    @property
    def dampening(self) -> bool:
        """Whether the method is SSD or LFSSD."""
        return self.method in ("ssd", "lfssd", "ssd_true_fisher")


@dataclass
class ExperimentConfig:
    """A whole experiment grid (see the module docstring for the file format)."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    methods: list[MethodSpec] = field(default_factory=list)
    baselines: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    description: str = ""

    def labels(self) -> list[str]:
        """The row label of every method, in order."""
        return [method_label(m, self) for m in self.methods]

    def alpha_of(self, spec: MethodSpec) -> float | str:
        """The alpha an SSD/LFSSD row runs with: its own (a number or ``"auto"``), else :func:`default_alpha`."""
        if isinstance(spec.alpha, str):
            return spec.alpha
        if spec.alpha is not None:
            return float(spec.alpha)
        return default_alpha(spec.method, self.model.name, self.scenario.kind, self.data.dataset)

    def baseline_config(self) -> BaselineConfig:
        """The baselines' hyperparameters; the retrained model uses the config's training recipe."""
        return BaselineConfig(retrain=self.train, **self.baselines)

    def to_dict(self) -> dict:
        """The config as plain JSON data."""
        return json.loads(json.dumps(asdict(self), default=list))


def default_alpha(method: str, model: str, scenario: str, dataset: str = "") -> float:
    """The selection weighting alpha the papers use, lambda being 1.

    SSD (the authors' code): ResNet-family models 10 in every scenario; ViT 5 full-class,
    25 sub-class, 10 random. LFSSD (as reported): 5 for CIFAR-20 full-class, 10 for other
    full-class data (CIFAR-100's setting), 10 sub-class, 3.5 random. These are *published*
    values: with batch importances alpha can exceed the largest ratio Imp_Df/Imp_D and
    select nothing, which the results record (``selected``, ``max_ratio``).
    """
    if method in ("ssd", "ssd_true_fisher"):  # the papers publish none for the true Fisher: SSD's
        if "vit" in model:
            return {"full_class": 5.0, "sub_class": 25.0, "random": 10.0}[scenario]
        return 10.0
    if method == "lfssd":
        if scenario == "full_class":
            return 5.0 if dataset == "cifar20" else 10.0
        return {"sub_class": 10.0, "random": 3.5}[scenario]
    raise ValueError(f"alpha only applies to ssd and lfssd, not {method!r}")


def method_label(spec: MethodSpec, config: ExperimentConfig | None = None) -> str:
    """A method's row label, e.g. ``"LFSSD-sample (alpha=3.5)"``."""
    if spec.label:
        return spec.label
    name = _DISPLAY[spec.method]
    if not spec.dampening:
        return name
    if spec.granularity == "sample":
        name += "-sample"
    alpha = spec.alpha if config is None or spec.alpha is not None else config.alpha_of(spec)
    extra = "alpha=default" if alpha is None else f"alpha={alpha}" if isinstance(alpha, str) else f"alpha={alpha:g}"
    if spec.alpha == "auto" and spec.calibration_lambdas is not None:
        extra += ", lambda=auto"
    elif spec.lambda_ != 1.0:
        extra += f", lambda={spec.lambda_:g}"
    if spec.label_samples is not None:
        extra += ", sampled labels" if spec.label_samples == 1 else f", {spec.label_samples} sampled labels"
    return f"{name} ({extra})"


# ---------------------------------------------------------------------------- the loader


def _value(value, hint, where: str):
    """``value`` checked against the type hint ``hint`` (ints become floats where a float is
    expected, a sequence becomes a tuple, a list a list); a ConfigError names ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # "X | None", or "float | str | None" (alpha)
        if value is None:
            return None
        options = [a for a in args if a is not type(None)]
        if str in options and isinstance(value, str):
            return value
        return _value(value, next(a for a in options if a is not str), where)
    if hint is bool:
        _require(isinstance(value, bool), where, f"expected true/false, got {value!r}")
        return value
    if hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), where, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), where, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        _require(isinstance(value, str), where, f"expected a string, got {value!r}")
        return value
    if hint is dict or origin is dict:
        _require(isinstance(value, Mapping), where, f"expected a mapping, got {value!r}")
        return dict(value)
    if hint is list or origin in (list, Sequence):
        _require(isinstance(value, (list, tuple)), where, f"expected a list, got {value!r}")
        items = [_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if origin is Sequence else items
    return value


def _section(cls, raw, where: str, *, renamed: Mapping[str, str] | None = None, skip: Sequence[str] = ()):
    """Build the dataclass ``cls`` from the mapping ``raw`` of the section ``where``.

    ``renamed`` maps a file key to its field (``{"lambda": "lambda_"}``); ``skip`` lists
    fields a file may not set. Unknown keys and values of the wrong type are reported by
    key. Range errors come from the dataclass: the package's own config sections raise a
    :class:`ConfigError` naming their field; for other dataclasses (``TrainConfig``,
    ``BaselineConfig``) each given field is tried on its own against the defaults, so an
    error is charged to the field that causes it.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"expected a mapping of fields, got {raw!r}")
    renamed = dict(renamed or {})
    key_of = {f: k for k, f in renamed.items()}
    hints = typing.get_type_hints(cls)
    keys = {key_of.get(f.name, f.name): f.name for f in dataclasses.fields(cls) if f.name not in skip}
    kwargs = {}
    for key, value in raw.items():
        if key not in keys:
            raise ConfigError(f"{where}.{key}", f"unknown field; known fields: {', '.join(sorted(keys))}")
        kwargs[keys[key]] = _value(value, hints[keys[key]], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}.{key_of.get(e.field, e.field)}", e.problem) from None
    except ValueError as e:
        for name, value in kwargs.items():
            try:
                cls(**{name: value})
            except ValueError as alone:
                raise ConfigError(f"{where}.{key_of.get(name, name)}", str(alone)) from None
        raise ConfigError(where, str(e)) from None


def _name(raw: Mapping) -> str:
    name = raw.get("name")
    _require(isinstance(name, str) and bool(name), "name", "every config needs a non-empty string name")
    _require(not any(c in name for c in "/\\ ") and not name.startswith("."), "name",
             f"must be usable as a file name (no slashes or spaces), got {name!r}")
    return name


def _methods(raw) -> list[MethodSpec]:
    _require(isinstance(raw, list) and bool(raw), "methods", "a non-empty list of methods is required")
    specs = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"method": entry}
        if isinstance(entry, Mapping) and "method" not in entry:
            raise ConfigError(f"methods[{i}].method", f"missing; choose one of {', '.join(METHOD_NAMES)}")
        specs.append(_section(MethodSpec, entry, f"methods[{i}]", renamed={"lambda": "lambda_"}))
    return specs


def config_from_dict(raw: Mapping) -> ExperimentConfig:
    """Validate a config mapping; raise :class:`ConfigError` naming the bad field."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config", f"expected a mapping at the top level, got {type(raw).__name__}")
    known = [f.name for f in dataclasses.fields(ExperimentConfig)]
    for key in raw:
        _require(key in known, key, f"unknown field; known fields: {', '.join(sorted(known))}")
    name = _name(raw)
    data = _section(DataConfig, raw.get("data"), "data")
    model = _section(ModelConfig, raw.get("model"), "model")
    train = _section(TrainConfig, raw.get("train"), "train")
    scenario = _section(ScenarioConfig, raw.get("scenario"), "scenario")
    methods = _methods(raw.get("methods"))
    baselines = raw.get("baselines") or {}
    _section(BaselineConfig, baselines, "baselines", skip=("retrain",))  # the checks; the config keeps the mapping
    seeds = _value(raw.get("seeds", [0, 1, 2]), list[int], "seeds")
    _require(bool(seeds) and len(set(seeds)) == len(seeds), "seeds", f"need a non-empty list of distinct integers, got {seeds!r}")
    description = _value(raw.get("description", ""), str, "description")
    _require(scenario.kind != "sub_class" or data.dataset in ("cifar20", "digits-super"), "scenario.kind",
             f"sub_class forgetting needs fine labels (cifar20 or digits-super), not {data.dataset!r}")
    config = ExperimentConfig(name=name, data=data, model=model, train=train, scenario=scenario, methods=methods,
                              baselines=dict(baselines), seeds=seeds, description=description)
    labels = config.labels()
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    _require(not dupes, "methods", f"duplicate row labels {dupes}; give each a distinct 'label'")
    return config


def load_config(path: str | os.PathLike, **overrides) -> ExperimentConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file and validate it.

    ``overrides`` replace top-level sections' fields, e.g. ``data={"root": "/data"}``
    (``None`` leaves a section as it is).
    """
    path = os.fspath(path)
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError("config", f"{path} is not valid YAML: {e}") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("config", f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold a mapping at the top level")
    for section, values in overrides.items():
        if values is None:
            continue
        raw[section] = {**(raw.get(section) or {}), **values} if isinstance(values, Mapping) else values
    return config_from_dict(raw)
