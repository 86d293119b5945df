"""Set-up shared by every chapter of the book.

Each chapter starts with::

    from lfssd_tutorial.notebook import setup_notebook
    device = setup_notebook(seed=0, threads=2)

which makes the chapter's stored outputs reproducible: every random number generator
is seeded, torch uses a fixed number of CPU threads (floating-point sums are then
accumulated in the same order on every run), and figures have fixed defaults. It
prints nothing that depends on the machine, so the stored outputs are the same on a
laptop, in CI and on Colab.
"""

from __future__ import annotations

import torch

from .training import default_device, seed_everything

__all__ = ["FIGURE_DEFAULTS", "setup_notebook"]

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
    return default_device()
