"""nbval on the chapters: exact output comparison where the outputs were produced.

A chapter's stored outputs are reproduced bit for bit only on the platform that produced
them (see :func:`lfssd_tutorial.notebook.execution_platform`): another kind of CPU runs
other vectorised kernels, and training turns their different roundings into different
digits. On the recorded platform every cell's output is compared with the stored one; on
any other platform every cell is still executed and any error fails the test, but the
outputs are not compared, and the run says so.
"""

from __future__ import annotations

from lfssd_tutorial.notebook import PLATFORM_KEY, execution_platform

_not_compared: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    here = execution_platform()
    for item in items:
        notebook = getattr(item.parent, "nb", None)
        if notebook is None or not hasattr(item, "options"):
            continue  # not an nbval cell
        recorded = notebook.metadata.get(PLATFORM_KEY)
        if recorded != here:
            item.options["check"] = False
            _not_compared[item.parent.name] = recorded or "not recorded"


def pytest_terminal_summary(terminalreporter):
    if not _not_compared:
        return
    here = execution_platform()
    terminalreporter.section("notebook outputs not compared")
    terminalreporter.write_line(f"this platform: {here}")
    for name, recorded in sorted(_not_compared.items()):
        terminalreporter.write_line(f"{name}: outputs produced on {recorded}; cells executed, outputs not compared")

