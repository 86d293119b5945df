"""``Imp_D`` of a config's trained model over its whole training set, in one process or many.

:func:`run_importance` is the command line's ``importance``: it loads the original model
of one training seed (the checkpoint :func:`~lfssd_tutorial.experiments.run_train` writes),
reads the training set in dataset order (no augmentation) in batches of ``data.batch_size``
and saves ``Imp_D`` with :func:`~lfssd_tutorial.save_importance`. Under ``torchrun`` each
process takes every ``W``-th of those batches (:class:`~lfssd_tutorial.distributed.BatchShards`)
and :func:`~lfssd_tutorial.compute_importance` adds the processes' sums, so the file is the
one a single process would write; only rank 0 writes it. On a machine with 8 GPUs::

    torchrun --nproc-per-node=8 -m lfssd_tutorial importance --config CONFIG --data-root DATA \\
        --seeds 0 --method lfssd --granularity sample --file imp_d.safetensors

(the NCCL backend is the default on GPUs; ``--backend gloo`` runs on CPUs).

At sample granularity the file equals the one :func:`~lfssd_tutorial.experiments.run_forget`
computes for itself (the mean over the training set). At batch granularity it is the mean over
the dataset-order batches, which differ from a forget cell's ``D_r``-then-``D_f`` batches.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..distributed import BatchShards, init_from_env, process_rank, world_size
from ..importance_file import save_importance
from ..importance import compute_importance
from ..unlearn import objective_for
from .build import load_data, loader_options, model_factory, uses_channels_last
from .config import ExperimentConfig
from .runner import original_checkpoint

__all__ = ["run_importance"]


def run_importance(
    config: ExperimentConfig,
    *,
    path: str,
    out_dir: str,
    seed: int | None = None,
    method: str = "lfssd",
    granularity: str = "sample",
    label_samples: int | None = None,
    checkpoint: str | None = None,
    device=None,
    backend: str | None = None,
    progress: bool = False,
) -> dict:
    """Compute ``Imp_D`` of the original model of ``seed`` and save it to ``path`` (rank 0 only).

    Starts the process group from ``torchrun``'s environment when ``WORLD_SIZE`` > 1
    (:func:`~lfssd_tutorial.distributed.init_from_env`; ``backend`` defaults to NCCL on GPUs,
    gloo otherwise) and ends it before returning.

    Args:
        config: the experiment.
        path: the importance file to write.
        out_dir: the experiment's output folder, where ``checkpoint`` is looked for by default.
        seed: the training seed (default: the config's first).
        method: ``"lfssd"``, ``"ssd"`` or ``"ssd_true_fisher"`` (its importance objective).
        granularity: ``"sample"`` or ``"batch"``.
        label_samples: ``"ssd_true_fisher"``'s label draws (``None``: exact).
        checkpoint: the model's ``state_dict`` file; by default :func:`~lfssd_tutorial.experiments.runner.original_checkpoint`.
        device: by default the process's GPU (``LOCAL_RANK``) when CUDA is present, else the CPU.
        backend: the process group's backend, when one is started here.
        progress: show a progress bar (rank 0).

    Returns:
        ``{"path", "seed", "method", "granularity", "processes", "rank", "samples", "seconds"}``
        (``samples``: this process's share).

    Raises:
        FileNotFoundError: no checkpoint (train the model first).
    """
    seed = config.seeds[0] if seed is None else seed
    checkpoint = checkpoint or original_checkpoint(config, out_dir, seed)
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"no trained model at {checkpoint}: run `python -m lfssd_tutorial train --config ...` first, "
                                "or pass --checkpoint")
    started = init_from_env(backend)
    try:
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(device)
        data = load_data(config, augment=False)
        model = model_factory(config, data, device)()
        model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
        model.eval()
        shards = BatchShards(len(data.train), config.data.batch_size)
        loader = DataLoader(data.train, batch_sampler=shards, **loader_options(config, device))
        objective = objective_for(method)
        draws = {"label_samples": label_samples, "seed": seed} if objective == "true_fisher" else {}
        t0 = time.perf_counter()
        importance = compute_importance(model, loader, objective=objective, granularity=granularity, device=device,
                                        progress=progress and process_rank() == 0,
                                        channels_last=uses_channels_last(config, device), **draws)
        seconds = time.perf_counter() - t0
        info = {"path": path, "seed": seed, "method": method, "granularity": granularity, "processes": world_size(),
                "rank": process_rank(), "samples": sum(len(b) for b in shards), "seconds": seconds}
        if process_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            save_importance(importance, path, metadata={"method": method, "granularity": granularity, "seed": seed,
                                                        "seconds": seconds, "processes": world_size()})
        if world_size() > 1:
            dist.barrier()  # the file is written when every process returns
        return info
    finally:
        if started:
            dist.destroy_process_group()
