"""The main job: forget one class of the bundled digits data with SSD and LFSSD.

The demo is the book's digits request (:func:`lfssd_tutorial.digits.digits_config`) run by
the experiments' runner (:func:`lfssd_tutorial.experiments.run_forget`), so its models are
the chapters' models: it trains the small CNN, retrains it
from scratch without the forget class (the gold standard), runs SSD and LFSSD at
working settings and at the published ``alpha = 10``, and returns Acc(D_r), Acc(D_f),
MIA and wall time for each, writing the same table as JSON and CSV.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace

import torch

from .digits import DIGITS_TRAIN_CONFIG, digits_config
from .experiments import ExperimentConfig, read_results, run_forget
from .training import TrainConfig

__all__ = ["DemoConfig", "run_demo", "format_table"]

#: The columns of ``results.csv``.
COLUMNS = ["method", "acc_retain", "acc_forget", "mia", "seconds", "alpha", "lambda", "selected", "max_ratio"]


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults are what ``make demo`` runs."""

    forget_class: int = 8
    seed: int = 0
    width: int = 16
    batch_size: int = 64
    train: TrainConfig = field(default_factory=lambda: replace(DIGITS_TRAIN_CONFIG))
    # (row label, method, alpha, lambda)
    methods: tuple[tuple[str, str, float, float], ...] = (
        ("SSD (alpha=7)", "ssd", 7.0, 1.0),
        ("LFSSD (alpha=6)", "lfssd", 6.0, 1.0),
        ("SSD (alpha=10, published)", "ssd", 10.0, 1.0),
        ("LFSSD (alpha=10, published)", "lfssd", 10.0, 1.0),
    )
    threads: int | None = 2

    def experiment(self) -> ExperimentConfig:
        """The demo as an experiment config: full-class forgetting of ``forget_class`` on the
        digits, one training seed, the rows Original, Retrain (from scratch) and ``methods``."""
        dampening = [{"method": m, "alpha": a, "lambda": lam, "label": label} for label, m, a, lam in self.methods]
        return digits_config(self.forget_class, width=self.width, batch_size=self.batch_size, train_config=self.train,
                             methods=["original", {"method": "retrain", "label": "Retrain (from scratch)"}, *dampening],
                             seeds=[self.seed], name="demo")


def _row(record: dict, seconds: float) -> dict:
    row = {"method": record["label"], "acc_retain": record["acc_retain"], "acc_forget": record["acc_forget"],
           "mia": record["mia"], "seconds": seconds}
    if "selected" in record:
        row.update({k: record[k] for k in ("alpha", "lambda", "selected", "max_ratio")})
    return row


def run_demo(config: DemoConfig | None = None, *, out_dir: str | os.PathLike | None = "runs/demo", progress: bool = True) -> list[dict]:
    """Run the demo and return its rows; write ``results.json`` and ``results.csv`` to ``out_dir``.

    Every run trains afresh, on the CPU: the runner works in a temporary folder.
    """
    config = config or DemoConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    with tempfile.TemporaryDirectory() as work:
        records = run_forget(config.experiment(), out_dir=work, device="cpu", progress=progress)
        seconds = {t["key"]: t["seconds"] for t in read_results(os.path.join(work, "timings.jsonl"))}
    rows = [_row(r, seconds[r["key"]]) for r in records]
    meta = {
        "data": records[0]["dataset"],
        "forget_class": records[0]["target"],
        "n_train": records[0]["n_retain"] + records[0]["n_forget"],
        "n_forget": records[0]["n_forget"],
        "config": asdict(config),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in COLUMNS})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of demo rows."""
    header = f"{'method':<30} {'Acc(D_r)':>9} {'Acc(D_f)':>9} {'MIA':>7} {'selected':>9} {'max ratio':>10} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        sel = f"{r['selected']:,}" if "selected" in r else "-"
        ratio = f"{r['max_ratio']:.2f}" if r.get("max_ratio") is not None else "-"
        lines.append(
            f"{r['method']:<30} {r['acc_retain']:>9.2f} {r['acc_forget']:>9.2f} {r['mia']:>7.2f} {sel:>9} {ratio:>10} {r['seconds']:>8.2f}"
        )
    return "\n".join(lines)
