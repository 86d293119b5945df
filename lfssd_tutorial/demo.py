"""The main job: forget one class of the bundled digits data with SSD and LFSSD.

Trains the small CNN, retrains it from scratch without the forget class (the gold
standard), runs SSD and LFSSD at working settings and at the published ``alpha = 10``,
and prints Acc(D_r), Acc(D_f), MIA and wall time for each, writing the same table as
JSON and CSV.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import ConcatDataset

from .dampening import NothingSelectedWarning, select_and_dampen_
from .data import full_class_split, load_digits, make_loader
from .importance import compute_importance
from .metrics import entropy_mia, evaluate_accuracy
from .models import SmallCNN
from .training import TrainConfig, seed_everything, train_model
from .unlearn import objective_for

__all__ = ["DemoConfig", "run_demo", "format_table"]


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults are what ``make demo`` runs."""

    forget_class: int = 8
    seed: int = 0
    width: int = 16
    batch_size: int = 64
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, lr=0.05, milestones=(15, 25)))
    # (row label, method, alpha, lambda)
    methods: tuple[tuple[str, str, float, float], ...] = (
        ("SSD (alpha=7)", "ssd", 7.0, 1.0),
        ("LFSSD (alpha=6)", "lfssd", 6.0, 1.0),
        ("SSD (alpha=10, published)", "ssd", 10.0, 1.0),
        ("LFSSD (alpha=10, published)", "lfssd", 10.0, 1.0),
    )
    threads: int | None = 2


def _evaluate(model, loaders) -> dict[str, float]:
    return {
        "acc_retain": evaluate_accuracy(model, loaders["test_retain"]),
        "acc_forget": evaluate_accuracy(model, loaders["test_forget"]),
        "mia": entropy_mia(model, loaders["retain"], loaders["forget"], loaders["test"]),
    }


def run_demo(config: DemoConfig | None = None, *, out_dir: str | os.PathLike | None = "runs/demo", progress: bool = True) -> list[dict]:
    """Run the demo and return its rows; write ``results.json`` and ``results.csv`` to ``out_dir``."""
    config = config or DemoConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device("cpu")
    data = load_digits()
    split = full_class_split(data, config.forget_class)
    bs = config.batch_size
    loaders = {
        "retain": make_loader(split.retain_set(data), batch_size=bs),
        "forget": make_loader(split.forget_set(data), batch_size=bs),
        "test": make_loader(data.test, batch_size=bs),
        "test_retain": make_loader(split.test_retain_set(data), batch_size=bs),
        "test_forget": make_loader(split.test_forget_set(data), batch_size=bs),
        # D as the reference code builds it: retain samples, then forget samples, unshuffled.
        "full": make_loader(ConcatDataset([split.retain_set(data), split.forget_set(data)]), batch_size=bs),
    }
    rows: list[dict] = []

    def model_factory():
        return SmallCNN(in_channels=1, num_classes=data.num_classes, width=config.width)

    seed_everything(config.seed)
    original = model_factory()
    t0 = time.perf_counter()
    train_model(original, make_loader(data.train, batch_size=bs, shuffle=True, seed=config.seed), config.train, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    rows.append({"method": "Original", **_evaluate(original, loaders), "seconds": seconds})

    seed_everything(config.seed + 1)
    retrained = model_factory()
    t0 = time.perf_counter()
    train_model(retrained, make_loader(split.retain_set(data), batch_size=bs, shuffle=True, seed=config.seed), config.train, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    rows.append({"method": "Retrain (from scratch)", **_evaluate(retrained, loaders), "seconds": seconds})

    for label, method, alpha, lambda_ in config.methods:
        model = model_factory()
        model.load_state_dict(original.state_dict())
        objective = objective_for(method)
        t0 = time.perf_counter()
        full_imp = compute_importance(model, loaders["full"], objective=objective)
        forget_imp = compute_importance(model, loaders["forget"], objective=objective)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingSelectedWarning)
            report = select_and_dampen_(model, full_imp, forget_imp, alpha=alpha, lambda_=lambda_)
        seconds = time.perf_counter() - t0
        rows.append({
            "method": label,
            **_evaluate(model, loaders),
            "seconds": seconds,
            "alpha": alpha,
            "lambda": lambda_,
            "selected": report.total_selected,
            "max_ratio": report.max_ratio,
        })

    meta = {
        "data": data.name,
        "forget_class": data.classes[config.forget_class],
        "n_train": len(data.train),
        "n_forget": len(split.forget),
        "config": asdict(config),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        columns = ["method", "acc_retain", "acc_forget", "mia", "seconds", "alpha", "lambda", "selected", "max_ratio"]
        with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in columns})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of demo rows."""
    header = f"{'method':<30} {'Acc(D_r)':>9} {'Acc(D_f)':>9} {'MIA':>7} {'selected':>9} {'max ratio':>10} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        sel = f"{r['selected']:,}" if "selected" in r else "-"
        ratio = f"{r['max_ratio']:.2f}" if "max_ratio" in r else "-"
        lines.append(
            f"{r['method']:<30} {r['acc_retain']:>9.2f} {r['acc_forget']:>9.2f} {r['mia']:>7.2f} {sel:>9} {ratio:>10} {r['seconds']:>8.2f}"
        )
    return "\n".join(lines)
