"""What an experiment keeps on disk: checkpoints with their sidecars, and append-only results files.

* A checkpoint is a plain ``state_dict`` file with a JSON sidecar (``<path>.json``: config,
  seed, accuracies, wall time, hardware, peak RSS); :func:`load_or_train` reuses it when present.
* A results file is JSON Lines, one complete record a line (``json.dumps(record,
  sort_keys=True)``). :func:`append_record` adds a line under a :class:`FileLock`, so several
  processes can share a file; :func:`read_results` reads them back.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..utils import atomic_save, atomic_write_text

__all__ = ["file_slug", "hardware_info", "peak_rss_mb", "load_or_train", "FileLock", "append_record", "read_results"]


def file_slug(text) -> str:
    """``text`` made safe for a file name: characters other than letters, digits, ``-_.`` become ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def hardware_info(device: torch.device) -> dict:
    """What ran a job: device, its name, CPU count, torch threads and versions."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if platform.system() == "Darwin" else rss / 1024


def _load_state(factory: Callable[[], nn.Module], path: str, device: torch.device) -> nn.Module:
    model = factory()
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.eval()


def load_or_train(
    path: str | os.PathLike,
    factory: Callable[[], nn.Module],
    train_fn: Callable[[nn.Module], nn.Module],
    *,
    meta: Mapping | None = None,
    evaluate: Callable[[nn.Module], Mapping] | None = None,
    device: torch.device | None = None,
) -> tuple[nn.Module, dict]:
    """Load ``path`` (a plain ``state_dict``) if it exists, else train and save it.

    ``train_fn`` is given a fresh ``factory()`` model and returns the trained model. The
    JSON sidecar ``<path>.json`` records ``meta`` (config, seed, ...), ``evaluate``'s
    accuracies, the wall time, the hardware and the peak RSS. Both files are written
    atomically, the sidecar last: a checkpoint without a sidecar is retrained. Returns
    the model (loaded from the file either way, so a model trained now and one loaded
    later are the same bytes) and the sidecar's contents.
    """
    path = os.fspath(path)
    sidecar = path + ".json"
    device = device or torch.device("cpu")
    if os.path.exists(path) and os.path.exists(sidecar):
        with open(sidecar) as f:
            return _load_state(factory, path, device), json.load(f)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model = factory()
    t0 = time.perf_counter()
    model = train_fn(model)
    seconds = time.perf_counter() - t0
    model.eval()
    atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    info = {
        **(meta or {}),
        **(dict(evaluate(model)) if evaluate else {}),
        "wall_seconds": seconds,
        "hardware": hardware_info(device),
        "peak_rss_mb": peak_rss_mb(),
    }
    atomic_write_text(sidecar, json.dumps(info, indent=2, default=str) + "\n")
    return _load_state(factory, path, device), info


class FileLock:
    """An exclusive advisory lock (``fcntl.flock``) on the file ``path``, as a context manager.

    Where ``fcntl`` is unavailable (not POSIX) the lock does nothing.
    """

    def __init__(self, path: str | os.PathLike):
        self.path, self.fd = os.fspath(path), None

    def __enter__(self) -> FileLock:
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _cut_torn_line(path: str) -> None:
    """Remove an incomplete last line (a write cut short by a crash), so that the next
    record starts a line of its own; complete lines are kept."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        keep = f.read().rfind(b"\n") + 1
        warnings.warn(f"{path}: removed an incomplete last line of {size - keep} bytes before appending", RuntimeWarning, stacklevel=3)
        f.truncate(keep)


def append_record(path: str | os.PathLike, record: Mapping) -> None:
    """Append ``record`` to the JSON Lines file ``path`` as one line (keys sorted).

    Under a lock on ``<path>.lock``: an incomplete last line left by a crash is cut first,
    then the line is written, flushed and synced to disk. Earlier lines are never rewritten.
    """
    path = os.fspath(path)
    line = json.dumps(record, sort_keys=True) + "\n"
    with FileLock(path + ".lock"):
        if os.path.exists(path):
            _cut_torn_line(path)
        with open(path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_results(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON Lines results file (a missing file gives ``[]``).

    An unreadable *last* line is what a crash during a write leaves: it is skipped with a
    warning. An unreadable line before the last is damage: a ``ValueError`` names the file
    and the line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for i, line in numbered:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == numbered[-1][0]:
                warnings.warn(f"{path}: skipped an incomplete last line {i} ({e})", RuntimeWarning, stacklevel=2)
                break
            raise ValueError(f"{path}, line {i}: not a JSON record ({e}); the file is damaged") from None
    return records
