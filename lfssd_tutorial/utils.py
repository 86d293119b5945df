"""Small helpers shared by the package: devices, autocast, progress bars and atomic writes."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["resolve_device", "autocast", "progress", "atomic_write_text", "atomic_save"]


def resolve_device(device: str | torch.device | None = None, model: nn.Module | None = None) -> torch.device:
    """The device to compute on.

    An explicit ``device`` wins; otherwise the device of ``model``'s first parameter (when a
    model with parameters is given); otherwise CUDA when available, else the CPU.
    """
    if device is not None:
        return torch.device(device)
    if model is not None:
        for p in model.parameters():
            return p.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context running the enclosed forward pass under :func:`torch.autocast` to ``dtype``
    on ``device``; ``dtype=None`` runs in full precision (a no-op context)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def progress(iterable: Iterable, enabled: bool, desc: str, total: int | None = None) -> Iterable:
    """``iterable`` wrapped in a tqdm progress bar when ``enabled`` (else unchanged).

    The bar's length is ``total``, or ``len(iterable)`` when it has one.
    """
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _temporary_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and :func:`os.replace`: readers see
    the old file or the whole new one, never a partial write."""
    path = os.fspath(path)
    tmp = _temporary_name(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """:func:`torch.save` ``obj`` to ``path`` atomically (a temporary file, then :func:`os.replace`)."""
    path = os.fspath(path)
    tmp = _temporary_name(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
