"""Guards on the chapter notebooks in book/ (their outputs are checked by nbval).

nbval (configured in pyproject.toml) re-runs every notebook and compares the fresh
outputs with the stored ones. It cannot notice a cell that was never executed or a
chapter that is missing from the table of contents; these tests do, together with the
book's conventions: a Colab badge first, an install cell pinned to the book's release,
the setup cell, and Summary and Exercises at the end.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
REPOSITORY = "lfssd-tutorial/lfssd-tutorial"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def toc_files() -> list[str]:
    """Every document of _toc.yml, in reading order (root first), without extension."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [str(Path(f).with_suffix("")) if Path(f).suffix else f for f in files]


def text_outputs(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(source({"source": out.get("text", "")}))
        for key, value in out.get("data", {}).items():
            if key.startswith("text/") or key == "application/json":
                parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def test_there_are_notebooks():
    assert NOTEBOOKS, "book/ holds no chapter notebooks"


def test_toc_entries_exist_and_all_chapters_are_listed():
    entries = toc_files()
    assert len(entries) == len(set(entries)), f"_toc.yml lists a file twice: {entries}"
    for entry in entries:
        candidates = [ROOT / f"{entry}{ext}" for ext in (".ipynb", ".md")]
        assert any(p.exists() for p in candidates), f"_toc.yml lists {entry}, which does not exist"
    listed = set(entries)
    for path in sorted(BOOK.glob("*.ipynb")) + sorted(BOOK.glob("*.md")):
        rel = str(path.relative_to(ROOT).with_suffix(""))
        assert rel in listed, f"{rel} is not listed in _toc.yml"


def test_toc_order_matches_chapter_numbers():
    """Chapters are numbered by their titles ("# 3. ..."): the toc must list them in that order."""
    numbers = []
    for entry in toc_files():
        m = re.match(r"(\d+)_", Path(entry).name)
        assert m, f"{entry}: chapter files are named NN_title"
        numbers.append(int(m.group(1)))
    assert numbers == sorted(numbers), f"_toc.yml lists chapters out of order: {numbers}"


def test_pytest_runs_nbval_on_the_book():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ini = config["tool"]["pytest"]["ini_options"]
    assert "book" in ini["testpaths"] and "tests" in ini["testpaths"]
    assert "--nbval" in ini["addopts"].split()
    assert "--nbval-sanitize-with book/sanitize.cfg" in ini["addopts"]


def test_sanitize_file_is_valid():
    from nbval.plugin import get_sanitize_patterns

    text = (BOOK / "sanitize.cfg").read_text(encoding="utf-8")
    patterns = get_sanitize_patterns(text)
    sections = re.findall(r"^\[[^\]]+\]$", text, re.M)
    assert patterns and len(patterns) == len(sections), (
        f"nbval reads {len(patterns)} rules from {len(sections)} sections: each section needs "
        "a 'regex: ' line directly followed by a 'replace: ' line"
    )
    rules = [(re.compile(regex), replacement) for regex, replacement in patterns]

    def sanitize(text):
        for regex, replacement in rules:
            text = regex.sub(replacement, text)
        return text

    # The rules must hide what varies and keep rounded results intact.
    assert sanitize("took 12.3 s") == sanitize("took 4.56 s")
    assert sanitize("<Figure at 0x7f3a2b1c0d90>") == sanitize("<Figure at 0x7f00deadbeef>")
    assert sanitize("torch 2.4.1") == sanitize("torch 2.14.1+cpu")
    assert sanitize(" 40%|####      | 4/10 [00:01<00:02]") == sanitize(" 90%|######### | 9/10 [00:03<00:00]")
    assert sanitize("/tmp/ipykernel_123/456.py:7: UserWarning") == sanitize("/tmp/ipykernel_9/1.py:3: UserWarning")
    assert sanitize("Acc(D_r) 99.5%") != sanitize("Acc(D_r) 98.5%")
    assert sanitize("max ratio 7.27") != sanitize("max ratio 7.28")
    assert sanitize("selected 1,234 of 14,458 weights") != sanitize("selected 1,235 of 14,458 weights")
    assert sanitize("max abs difference 6.2e-09") == sanitize("max abs difference 4.1e-08")
    assert sanitize("max abs difference 6.2e-05") != sanitize("max abs difference 4.1e-05")
    assert sanitize("0.4x the time of the Imp_D pass") == sanitize("1.3x the time of the Imp_D pass")
    assert sanitize("speed-up 1.3x over the loop") != sanitize("speed-up 1.4x over the loop")


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request) -> tuple[Path, dict]:
    return request.param, load(request.param)


def test_every_code_cell_was_executed_in_order(notebook):
    path, nb = notebook
    counts = [c.get("execution_count") for c in code_cells(nb)]
    missing = [i for i, n in enumerate(counts) if n is None]
    assert not missing, f"{path.name}: code cells {missing} have no execution_count (not executed)"
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..n: execute the notebook top to bottom in one run"
    )


def test_every_code_cell_has_stored_output(notebook):
    path, nb = notebook
    cells = code_cells(nb)
    # The install cell prints nothing when the package is present, and the setup cell
    # prints nothing by design; every other cell must show what it did.
    empty = [i for i, c in enumerate(cells) if i >= 2 and not c.get("outputs")]
    assert not empty, f"{path.name}: code cells {empty} (counting code cells from 0) have no stored output"
    errors = [i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not errors, f"{path.name}: code cells {errors} stored an error"


def test_outputs_hold_nothing_machine_specific(notebook):
    path, nb = notebook
    pattern = re.compile(r"(/work/|/home/|/Users/|/tmp/|C:\\\\Users|site-packages)")
    for i, cell in enumerate(code_cells(nb)):
        for text in (source(cell), text_outputs(cell)):
            m = pattern.search(text)
            assert not m, f"{path.name}: code cell {i} contains a machine-specific path ({m.group(0)!r})"


def test_chapter_layout(notebook):
    path, nb = notebook
    cells = nb["cells"]
    number = int(path.name.split("_")[0])
    first = source(cells[0])
    badge = (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{REPOSITORY}/blob/main/book/{path.name})"
    )
    assert cells[0]["cell_type"] == "markdown" and first.startswith(badge), f"{path.name}: the first cell must start with the Colab badge {badge}"
    assert re.search(rf"^# {number}\. \S", first, re.M), f"{path.name}: the first cell must hold the title '# {number}. ...'"

    code = code_cells(nb)
    install, setup = source(code[0]), source(code[1])
    assert "import lfssd_tutorial" in install and "except ImportError" in install, f"{path.name}: the first code cell must install the package when it is missing"
    assert re.search(r'%pip install -q "lfssd-tutorial @ git\+https://github\.com/' + re.escape(REPOSITORY) + r'@v\d+\.\d+\.\d+"', install), (
        f"{path.name}: the install cell must pin the book's release tag"
    )
    assert "setup_notebook(" in setup and "device" in setup, f"{path.name}: the second code cell must call setup_notebook"
    assert nb["cells"].index(code[0]) < nb["cells"].index(code[1]) <= 3

    headings = [source(c).splitlines()[0].strip() for c in cells if c["cell_type"] == "markdown" and source(c).strip()]
    assert "## Summary" in headings, f"{path.name}: no '## Summary' section"
    assert "## Exercises" in headings, f"{path.name}: no '## Exercises' section"
    assert headings.index("## Summary") < headings.index("## Exercises"), f"{path.name}: Summary must come before Exercises"
    last_markdown = [source(c) for c in cells if c["cell_type"] == "markdown"][-1]
    assert last_markdown.lstrip().startswith("## Exercises"), f"{path.name}: the chapter must end with its Exercises"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"


def test_notebooks_do_not_redefine_the_package(notebook):
    """Chapters import the package; a `def` of one of its public names would fork it."""
    import importlib
    import pkgutil

    import lfssd_tutorial

    public = set(lfssd_tutorial.__all__)
    for info in pkgutil.iter_modules(lfssd_tutorial.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lfssd_tutorial.{info.name}")
        public |= set(getattr(module, "__all__", []))
    path, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        for name in re.findall(r"^\s*(?:def|class)\s+(\w+)", source(cell), re.M):
            assert name not in public, f"{path.name}: code cell {i} redefines lfssd_tutorial's {name}"


def test_widget_state_is_saved(notebook):
    """A notebook that displays widgets must store their state, or the HTML page shows nothing."""
    path, nb = notebook
    views = set()
    for cell in code_cells(nb):
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view:
                views.add(view["model_id"])
    if not views:
        return
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    missing = sorted(views - set(state))
    assert not missing, f"{path.name}: widget views {missing[:3]} have no saved state; execute with widget state stored"
