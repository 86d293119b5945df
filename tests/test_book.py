"""The strict HTML build of the book, and what the built pages contain.

Builds with ``jupyter-book build . -W -n --keep-going`` (warnings are errors, broken
references included) into a temporary folder, then opens the HTML: every page of the
table of contents exists, carries its title, shows every figure stored in its notebook,
embeds the saved widget state of notebooks with widgets, and offers the Colab launch
button. Takes one to three minutes; deselect with ``-m "not book"``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_notebooks import REPOSITORY, WIDGET_STATE, WIDGET_VIEW, ROOT, source, toc_files

pytestmark = pytest.mark.book

import bs4  # noqa: E402  (installed with jupyter-book's theme)


def jupyter_book() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "jupyter_book.cli.main"]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    cmd = [*jupyter_book(), "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    assert proc.returncode == 0 and not warnings, (
        f"the strict book build failed (exit {proc.returncode}):\n" + "\n".join(warnings or log.splitlines()[-40:])
    )
    html = out / "_build" / "html"
    assert html.is_dir(), f"no HTML in {html}"
    return html


def page(html: Path, entry: str):
    path = html / f"{entry}.html"
    assert path.exists(), f"{entry}: no page {path.name} in the built book"
    return path, bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def notebook_of(entry: str) -> dict | None:
    path = ROOT / f"{entry}.ipynb"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def stored_images(nb: dict) -> int:
    return sum(
        1
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
        if any(k in out.get("data", {}) for k in ("image/png", "image/jpeg", "image/svg+xml"))
    )


@pytest.mark.parametrize("entry", toc_files())
def test_page_exists_with_its_title(build, entry):
    _, soup = page(build, entry)
    h1 = soup.find("h1")
    assert h1 is not None, f"{entry}: the page has no title"
    number = int(Path(entry).name.split("_")[0])
    assert h1.get_text(" ", strip=True).startswith(f"{number}."), f"{entry}: title {h1.get_text()!r} lacks its number"
    body = soup.find("article") or soup
    assert len(body.get_text(" ", strip=True)) > 500, f"{entry}: the page is nearly empty"


@pytest.mark.parametrize("entry", [e for e in toc_files() if notebook_of(e) is not None])
def test_notebook_page_shows_every_figure(build, entry):
    path, soup = page(build, entry)
    expected = stored_images(notebook_of(entry))
    images = []
    for img in (soup.find("article") or soup).find_all("img"):
        src = img.get("src", "")
        if src.startswith("data:image/"):
            images.append(src)
        elif "_images/" in src:
            file = (path.parent / src).resolve()
            assert file.exists() and file.stat().st_size > 1000, f"{entry}: figure {src} is missing or empty"
            images.append(src)
    assert len(images) >= expected, f"{entry}: {expected} figures stored in the notebook, {len(images)} on the page"


@pytest.mark.parametrize("entry", [e for e in toc_files() if notebook_of(e) is not None])
def test_notebook_page_has_colab_launch_button(build, entry):
    path, _ = page(build, entry)
    url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/{entry}.ipynb"
    assert url in path.read_text(encoding="utf-8"), f"{entry}: no Colab launch link {url}"


@pytest.mark.parametrize("entry", [e for e in toc_files() if notebook_of(e) is not None])
def test_widget_state_is_embedded(build, entry):
    nb = notebook_of(entry)
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    views = {
        out["data"][WIDGET_VIEW]["model_id"]
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
        if WIDGET_VIEW in out.get("data", {})
    }
    if not state and not views:
        pytest.skip(f"{entry} has no widgets")
    _, soup = page(build, entry)
    scripts = soup.find_all("script", attrs={"type": WIDGET_STATE})
    assert scripts, f"{entry}: the page does not embed the saved widget state"
    embedded = json.loads(scripts[0].string)["state"]
    assert views <= set(embedded), f"{entry}: widget views {sorted(views - set(embedded))[:3]} have no embedded state"
    placed = {json.loads(tag.string)["model_id"] for tag in soup.find_all("script", attrs={"type": WIDGET_VIEW})}
    assert views <= placed, f"{entry}: widget views {sorted(views - placed)[:3]} are not placed on the page"


def test_bibliography_is_rendered(build):
    entries = [e for e in toc_files() if e.endswith("api_reference")]
    assert entries, "the API reference chapter is missing from the toc"
    _, soup = page(build, entries[0])
    text = soup.get_text(" ", strip=True).lower()
    for needle in ("Loss-free machine unlearning", "selective synaptic dampening", "Memory aware synapses", "arXiv:2402.19308"):
        assert needle.lower() in text, f"the bibliography lacks {needle!r}"


def test_citations_resolve(build):
    """Every chapter that cites links its citations to the bibliography."""
    link = re.compile(r'<a class="reference internal" href="(11_api_reference\.html)?#id\d+"')
    for entry in toc_files():
        path, _ = page(build, entry)
        nb = notebook_of(entry)
        if nb is not None:
            raw = "".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
        else:
            raw = (ROOT / f"{entry}.md").read_text(encoding="utf-8")
        if "{cite}" in raw:
            assert link.search(path.read_text(encoding="utf-8")), f"{entry}: citations are not linked to the bibliography"


def test_api_reference_documents_the_public_api(build):
    import lfssd_tutorial

    _, soup = page(build, "book/11_api_reference")
    documented = {tag.get("id") for tag in soup.find_all(["dt"]) if tag.get("id")}
    for name in lfssd_tutorial.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(lfssd_tutorial, name)
        canonical = f"{obj.__module__}.{obj.__qualname__}"
        assert canonical in documented, f"the API reference does not document {name} ({canonical})"
