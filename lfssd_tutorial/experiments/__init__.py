"""Paper-scale experiments: configs, a resumable runner, checkpoints, reports and sweeps.

An experiment is described by a small config file (YAML or JSON; see ``configs/`` and
:mod:`~lfssd_tutorial.experiments.config` for the format).
:func:`load_config` validates it and raises :class:`ConfigError` naming the bad field.
:func:`run_forget` runs every *cell* (scenario x forget target x method x seed) and
appends each result to ``results.jsonl`` the moment it finishes; a restarted run skips
the cells already there. Every method cell is seeded from its own key, so a cell gives the same
numbers whether it runs first, last, or after a restart. Wall times go to a separate
``timings.jsonl`` so that the results file itself is reproducible byte for byte.

Trained models (the original per seed, the retrained model per seed and target) are
plain ``state_dict`` files with a JSON sidecar (config, seed, accuracy, wall time,
hardware, peak RSS) and are reused when present (load-or-train). :func:`forget_request`
builds one (seed, target) of a config in memory, with the same models, as a :class:`ForgetRequest`.

The modules, one job each:

* :mod:`~lfssd_tutorial.experiments.config` — the config schema, its validation, config files;
* :mod:`~lfssd_tutorial.experiments.build` — the data, splits, loaders and models a config builds;
* :mod:`~lfssd_tutorial.experiments.store` — checkpoints and append-only results files;
* :mod:`~lfssd_tutorial.experiments.runner` — training, one request, the grid of cells, the alpha x lambda sweep;
* :mod:`~lfssd_tutorial.experiments.report` — tables, CSV and plots of a results file;
* :mod:`~lfssd_tutorial.experiments.imp_d` — ``Imp_D`` of a trained model, in one process or many (``torchrun``).
"""

from . import build, config, imp_d, report, runner, store
from .build import *  # noqa: F403
from .config import *  # noqa: F403
from .imp_d import *  # noqa: F403
from .report import *  # noqa: F403
from .runner import *  # noqa: F403
from .store import *  # noqa: F403

__all__ = config.__all__ + build.__all__ + store.__all__ + runner.__all__ + report.__all__ + imp_d.__all__
