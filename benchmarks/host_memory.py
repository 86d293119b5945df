#!/usr/bin/env python
"""Peak host memory of an experiment's data pipeline and model steps (default: ViT-B/16 on CIFAR-100).

The authors' ViT code resizes the whole of CIFAR-100 to 224 px in memory before training,
about 30 GB of host RAM. This package keeps the 32 px images and resizes each batch on the
fly while it streams. This script measures what that costs in host RAM:

1. **data**: one full epoch of the config's training loader (resize to the model's input size,
   augmentation, the config's batch size and worker processes), nothing else. Reported: the
   peak resident memory of the main process (``VmHWM``) and of each worker process, their sum
   (an upper bound: forked workers share pages with the main process), and the largest sum of
   the processes' proportional set sizes (``Pss``, shared pages split among the processes that
   share them), sampled every 20 batches: the footprint of the whole pipeline.
2. **model**: ``--steps`` training steps of the config's model (SGD, as ``train``) on batches from
   the same loader, on ``--device``. On a GPU the activations live in GPU memory; on a CPU they
   live in host memory, so a CPU run uses ``--model-batch`` (default 8) to stay practical and
   its number is an upper bound for the host side of a GPU run at that batch size.

Usage (from the repository root)::

    python benchmarks/host_memory.py --data-root DATA_ROOT [--config configs/...yaml]
        [--device cuda] [--steps 3] [--model-batch 64] [--workers N]

``DATA_ROOT`` holds ``cifar-100-python/`` (the torchvision files). The result is printed and
written to ``results/host-memory-<host>.json`` (``<host>`` as in ``bench_importance.py``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lfssd_tutorial.data import make_loader  # noqa: E402
from lfssd_tutorial.experiments import load_config, load_data, model_factory  # noqa: E402

from harness import hardware, host_name, proc_kib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _worker_pids(iterator) -> list[int]:
    workers = getattr(iterator, "_workers", None) or []  # DataLoader internals; empty without workers
    return [w.pid for w in workers if getattr(w, "pid", None)]


def measure_data(loader, max_batches: int | None, log) -> dict:
    """Iterate the loader once (or ``max_batches`` batches); peak RSS of the main process and workers."""
    t0 = time.perf_counter()
    it = iter(loader)
    pids = _worker_pids(it)
    images = batches = pss_peak = 0
    worker_peaks: dict[int, int] = {}
    shape = None
    for x, *_ in it:
        images += x.shape[0]
        batches += 1
        shape = shape or list(x.shape)
        for pid in pids:  # read while the workers are alive
            v = proc_kib("VmHWM", pid)
            if v is not None:
                worker_peaks[pid] = max(worker_peaks.get(pid, 0), v)
        if batches % 20 == 1:  # the whole footprint, shared pages counted once
            sizes = [proc_kib("Pss", pid, "smaps_rollup") for pid in ["self", *pids]]
            if all(v is not None for v in sizes):
                pss_peak = max(pss_peak, sum(sizes))
        if batches % 100 == 0:
            log(f"  data: {images:,} images, main process peak {_mib(proc_kib('VmHWM', 'self'))} MiB")
        if max_batches is not None and batches >= max_batches:
            break
    main_peak = proc_kib("VmHWM", "self")
    del it
    workers = [_mib(v) for v in worker_peaks.values()]
    total = (main_peak or 0) + sum(worker_peaks.values())
    return {
        "images": images,
        "batches": batches,
        "batch_shape": shape,
        "seconds": round(time.perf_counter() - t0, 1),
        "main_peak_MiB": _mib(main_peak),
        "worker_peaks_MiB": workers,
        "main_plus_workers_MiB": _mib(total),
        "pss_sum_max_sampled_MiB": _mib(pss_peak) if pss_peak else None,
    }


def measure_model(config, data, device: torch.device, steps: int, batch_size: int, workers: int, log) -> dict:
    """``steps`` SGD steps of the config's model on ``batch_size`` images; peak host RSS."""
    factory = model_factory(config, data, device)
    try:
        model = factory()
        weights = "pretrained" if config.model.pretrained and config.model.name == "vit_b_16" else "random"
    except Exception as e:  # noqa: BLE001 - pretrained weights cannot be fetched offline
        if config.model.name != "vit_b_16" or not config.model.pretrained:
            raise
        log(f"  model: pretrained weights unavailable ({type(e).__name__}); random initialisation instead")
        from dataclasses import replace

        config = replace(config, model=replace(config.model, pretrained=False))
        model = model_factory(config, data, device)()
        weights = "random (pretrained weights unavailable offline; same memory)"
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=config.train.lr, momentum=config.train.momentum,
                          weight_decay=config.train.weight_decay)
    loader = make_loader(data.train, batch_size=batch_size, shuffle=True, num_workers=workers,
                         pin_memory=device.type == "cuda")
    t0 = time.perf_counter()
    done = 0
    for x, y, *_ in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and config.train.amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        log(f"  model: step {done}/{steps}, loss {loss.item():.3f}, main process peak {_mib(proc_kib('VmHWM', 'self'))} MiB")
        if done >= steps:
            break
    out = {
        "steps": done,
        "batch_size": batch_size,
        "weights": weights,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - t0, 1),
        "main_peak_MiB": _mib(proc_kib("VmHWM", "self")),
    }
    if device.type == "cuda":
        out["gpu_peak_MiB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "paper_cifar100_full_class_vit.yaml"))
    p.add_argument("--data-root", required=True)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, default=None, help="loader worker processes (default: as the experiments: 8 on CUDA, else 2)")
    p.add_argument("--max-batches", type=int, default=None, help="stop the data pass early (default: one full epoch)")
    p.add_argument("--steps", type=int, default=3, help="model training steps (0 skips the model)")
    p.add_argument("--model-batch", type=int, default=None, help="batch size of the model steps (default: the config's on CUDA, 8 on CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--no-integrity-check", action="store_true",
                   help="accept CIFAR files whose checksums differ from the official ones (e.g. synthetic data "
                   "written in the official format, as the tests do)")
    args = p.parse_args(argv)
    if args.no_integrity_check:
        from torchvision.datasets import cifar

        cifar.CIFAR10._check_integrity = lambda self: True
        cifar.check_integrity = lambda *a, **k: True

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = load_config(args.config, data={"root": args.data_root})
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 2)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"{config.name}: {config.data.dataset}, model {config.model.name}, batch {config.data.batch_size}, "
        f"{workers} worker processes, device {device}")
    base = _mib(proc_kib("VmRSS", "self"))
    data = load_data(config, augment=True)
    log(f"  loaded {len(data.train):,} training images; main process RSS {_mib(proc_kib('VmRSS', 'self'))} MiB")
    loader = make_loader(data.train, batch_size=config.data.batch_size, shuffle=True, num_workers=workers,
                         pin_memory=device.type == "cuda")
    result = {
        "config": Path(args.config).name,
        "checksums_verified": not args.no_integrity_check,
        "dataset": config.data.dataset,
        "training_images": len(data.train),
        "model": config.model.name,
        "workers": workers,
        "rss_after_import_MiB": base,
        "data": measure_data(loader, args.max_batches, log),
    }
    d = result["data"]
    log(f"  data: {d['images']:,} images as {d['batch_shape']} batches in {d['seconds']} s; peak RSS main "
        f"{d['main_peak_MiB']} MiB, workers {d['worker_peaks_MiB']} MiB, sum {d['main_plus_workers_MiB']} MiB; "
        f"largest sampled PSS sum {d['pss_sum_max_sampled_MiB']} MiB")
    if args.steps > 0:
        batch = args.model_batch or (config.data.batch_size if device.type == "cuda" else 8)
        result["model_steps"] = measure_model(config, data, device, args.steps, batch, workers, log)
        m = result["model_steps"]
        log(f"  model: {m['steps']} steps at batch {m['batch_size']} in {m['seconds']} s; peak RSS main {m['main_peak_MiB']} MiB")
    result["hardware"] = hardware(device)
    result["date"] = _dt.date.today().isoformat()
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"host-memory-{host_name(device)}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
