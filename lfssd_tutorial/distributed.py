"""Imp_D across many processes: the sums of :func:`~lfssd_tutorial.compute_importance` added over ranks.

``Imp_D`` is one epoch of forward and backward passes over ``D``. Under an initialised
:mod:`torch.distributed` process group, each process (rank) runs ``compute_importance``
on its own share of ``D``; before dividing, ``compute_importance`` calls
:func:`all_reduce_sums`, which adds every rank's per-parameter sums and its count (of
batches at batch granularity, of samples at sample granularity), so that every rank
returns what one process would return over all ranks' data.

:class:`BatchShards` deals the batches of ``D`` to the ranks: rank ``r`` of ``W`` gets
batches ``r, r + W, r + 2W, ...`` of the one-process batching, so the ranks together see
exactly the batches one process would (nothing padded or repeated, shards of uneven size
where the batches do not divide evenly), and the result is the one-process result at
both granularities, up to the order of float additions.

:func:`init_from_env` starts the process group from the environment ``torchrun`` sets.
On GPUs, one process per GPU with the NCCL backend::

    torchrun --nproc-per-node=8 -m lfssd_tutorial importance --config CONFIG --file imp_d.safetensors --backend nccl
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["process_rank", "world_size", "all_reduce_sums", "init_from_env", "BatchShards"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def process_rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """The number of processes in the default process group (1 without one)."""
    return dist.get_world_size() if _active() else 1


def all_reduce_sums(sums: Sequence[torch.Tensor], count: int) -> int:
    """Add ``sums`` (in place) and ``count`` over every rank of the default process group;
    return the total count. Without a group of more than one process, nothing changes.

    Every rank must call it (it is a collective); the tensors must live on a device of the
    group's backend (CPU for gloo, the rank's GPU for NCCL).
    """
    if world_size() == 1:
        return count
    device = sums[0].device if sums else torch.device("cpu")
    total = torch.tensor([float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    for tensor in sums:
        dist.all_reduce(tensor)
    return int(total.item())


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE`` > 1; return
    whether a group of more than one process is active.

    ``backend`` defaults to ``"nccl"`` when CUDA is available, else ``"gloo"``. With NCCL
    each process takes the GPU ``LOCAL_RANK`` (:func:`torch.cuda.set_device`).
    """
    if _active():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


class BatchShards(Sampler[list[int]]):
    """A batch sampler dealing the batches of a dataset of ``length`` samples, in order,
    to the ranks: rank ``rank`` of ``world`` gets batches ``rank, rank + world, ...``.

    The batches are those of one process reading the dataset in order with
    ``batch_size`` (the last one smaller when the size does not divide the length); no
    sample is padded or repeated, so a rank may get one batch fewer than another, or none.
    Use it as a ``DataLoader``'s ``batch_sampler``.
    """

    def __init__(self, length: int, batch_size: int, *, rank: int | None = None, world: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.length, self.batch_size = int(length), int(batch_size)
        self.rank = process_rank() if rank is None else int(rank)
        self.world = world_size() if world is None else int(world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world={self.world}), got {self.rank}")

    def __iter__(self) -> Iterator[list[int]]:
        starts = range(self.rank * self.batch_size, self.length, self.world * self.batch_size)
        for start in starts:
            yield list(range(start, min(start + self.batch_size, self.length)))

    def __len__(self) -> int:
        batches = -(-self.length // self.batch_size)
        return max(0, -(-(batches - self.rank) // self.world))
