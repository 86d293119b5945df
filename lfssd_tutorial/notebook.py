"""Set-up shared by every chapter of the book, and the execution of the chapters.

Each chapter starts with::

    from lfssd_tutorial.notebook import setup_notebook
    device = setup_notebook(seed=0, threads=2)

which makes the chapter's stored outputs reproducible: every random number generator
is seeded, torch uses a fixed number of CPU threads (floating-point sums are then
accumulated in the same order on every run), and figures have fixed defaults. It
prints nothing that depends on the machine.

Bit-identical outputs need more than seeds: the same torch version and the same kind
of CPU (different processors run different vectorised kernels, whose roundings differ,
and training amplifies the difference). :func:`execute_notebooks` therefore records
:func:`execution_platform` in each notebook's metadata, and the test suite compares the
stored outputs exactly where the platform matches; elsewhere it executes every cell
and fails on any error, without comparing the numbers.
"""

from __future__ import annotations

import hashlib
import os
import platform
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import torch

from .training import seed_everything
from .utils import resolve_device

__all__ = ["FIGURE_DEFAULTS", "setup_notebook", "execution_platform", "execute_notebooks", "PLATFORM_KEY", "RELEASE_URL",
           "checkout_root", "committed_file"]

#: Where :func:`execute_notebooks` records the platform in a notebook's metadata.
PLATFORM_KEY = "lfssd_tutorial_platform"

#: Matplotlib defaults for the book's figures (inline PNGs).
FIGURE_DEFAULTS: dict[str, object] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.figsize": (6.4, 3.6),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
}


#: The book's release: :func:`committed_file` fetches files from it outside a checkout.
RELEASE_URL = "https://raw.githubusercontent.com/lfssd-tutorial/lfssd-tutorial/v0.1.0/"


def checkout_root() -> Path | None:
    """The root of the book's repository when the chapter runs in a checkout of it (with the
    working directory at the root or in ``book/``), else ``None`` (e.g. on Colab)."""
    return next((p for p in (Path(".."), Path(".")) if (p / "_toc.yml").is_file() and (p / "lfssd_tutorial").is_dir()), None)


def committed_file(relpath: str) -> Path:
    """A file committed to the book's repository (a run's results, a config), by its path from the root.

    In a checkout, the checkout's file. Elsewhere, the release's file, downloaded once into
    ``lfssd-tutorial-files/`` in the working directory. A file that is in neither raises
    ``FileNotFoundError``.
    """
    root = checkout_root()
    if root is not None:
        path = root / relpath
        if not path.exists():
            raise FileNotFoundError(f"{relpath} is not in this checkout of the book")
        return path
    local = Path("lfssd-tutorial-files") / relpath
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            urllib.request.urlretrieve(RELEASE_URL + relpath, local)
        except urllib.error.HTTPError as e:
            raise FileNotFoundError(f"{relpath} is not in the book's release ({e})") from None
    return local


def _configure_matplotlib() -> None:
    """Apply :data:`FIGURE_DEFAULTS` and select PNG output when running inside IPython."""
    try:
        import matplotlib
    except ImportError:  # matplotlib is a dependency; stay usable without it anyway
        return
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is not None:
        # The inline backend shows figures as PNG images stored in the notebook.
        shell.run_line_magic("matplotlib", "inline")
        try:
            from matplotlib_inline.backend_inline import set_matplotlib_formats
        except ImportError:
            pass
        else:
            set_matplotlib_formats("png")
    matplotlib.rcParams.update(FIGURE_DEFAULTS)


def setup_notebook(seed: int = 0, threads: int | None = 2) -> torch.device:
    """Seed everything, fix torch's thread count, style figures and return the device.

    Args:
        seed: seed for Python's ``random``, NumPy and torch (CPU and CUDA).
        threads: number of CPU threads torch may use (``torch.set_num_threads``). The
            book's stored outputs were produced with 2; with another count, sums may be
            accumulated in a different order and the last digits of results can change.
            ``None`` keeps torch's default.

    Returns:
        ``torch.device("cuda")`` when a GPU is available, else ``torch.device("cpu")``.
        Chapters print nothing about it: their outputs must not depend on the machine.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        torch.set_num_threads(threads)
    seed_everything(seed)
    _configure_matplotlib()
    return resolve_device()


def _cpu_description() -> str:
    """The CPU's model name and a digest of its instruction-set flags (Linux), else the
    processor string Python reports."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:12]
    return f"{fields.get('model name', platform.machine())}, cache {fields.get('cache size', '?')}, flags {flags}"


def execution_platform() -> str:
    """What decides whether a chapter's outputs are reproduced bit for bit, besides the seeds
    and the thread count that :func:`setup_notebook` fixes: the CPU (model, cache size,
    instruction-set flags) and torch (version and the vectorised kernels it chose).

    Two machines with the same string give the same stored outputs; two with different
    strings may differ in the last digits of anything that was trained.
    """
    version = torch.__version__.split("+")[0]
    return f"{_cpu_description()}; torch {version} ({torch.backends.cpu.get_cpu_capability()})"


def execute_notebooks(paths: Iterable[str | os.PathLike], *, timeout: int = 1800) -> None:
    """Execute each notebook in place, top to bottom in one kernel, from its own folder.

    Widget state is stored (the book shows the widgets), and the platform of the run
    (:func:`execution_platform`, read inside the kernel after the last cell) is recorded in
    the notebook's metadata under :data:`PLATFORM_KEY`. Needs ``nbclient`` (installed with
    the ``book`` extra).
    """
    import nbformat
    from nbclient import NotebookClient

    for path in paths:
        path = os.path.abspath(os.fspath(path))
        nb = nbformat.read(path, as_version=4)
        probe = nbformat.v4.new_code_cell("import lfssd_tutorial.notebook\nprint(lfssd_tutorial.notebook.execution_platform())")
        nb.cells.append(probe)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        nb.cells.remove(probe)
        nb.metadata[PLATFORM_KEY] = "".join(out.get("text", "") for out in probe.outputs).strip()
        nbformat.write(nb, path)
