"""Stored outputs are compared exactly on the platform that produced them, and only there."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lfssd_tutorial.notebook import PLATFORM_KEY, execution_platform

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_execution_platform_names_cpu_and_torch():
    text = execution_platform()
    assert "torch " in text and "flags " in text
    assert text == execution_platform()  # stable within a process


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_records_its_platform(path):
    recorded = json.loads(path.read_text(encoding="utf-8"))["metadata"].get(PLATFORM_KEY)
    assert recorded and "torch " in recorded, f"{path.name}: execute it with lfssd_tutorial.notebook.execute_notebooks"


def _notebook(platform: str, stored_output: str) -> dict:
    return {
        "cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "source": "print(6 * 7)",
                   "outputs": [{"output_type": "stream", "name": "stdout", "text": stored_output}]}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     PLATFORM_KEY: platform},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _nbval(tmp_path, nb: dict) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "book" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "chapter.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env", "chapter.ipynb"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def test_outputs_are_compared_on_the_recorded_platform(tmp_path):
    wrong = _nbval(tmp_path, _notebook(execution_platform(), "41\n"))
    assert wrong.returncode == 1, wrong.stdout[-2000:]
    right = _nbval(tmp_path, _notebook(execution_platform(), "42\n"))
    assert right.returncode == 0, right.stdout[-2000:]


def test_other_platforms_execute_without_comparing(tmp_path):
    result = _nbval(tmp_path, _notebook("another CPU; torch 0.0", "41\n"))
    assert result.returncode == 0, result.stdout[-2000:]
    assert "outputs not compared" in result.stdout
    failing = _notebook("another CPU; torch 0.0", "42\n")
    failing["cells"][0]["source"] = "raise RuntimeError('boom')"
    broken = _nbval(tmp_path, failing)
    assert broken.returncode == 1, broken.stdout[-2000:]


def test_committed_files_come_from_the_checkout_or_the_release(tmp_path, monkeypatch):
    import lfssd_tutorial.notebook as notebook

    root = Path(__file__).resolve().parents[1]
    for where in (root, root / "book"):
        monkeypatch.chdir(where)
        path = notebook.committed_file("configs/digits_full_class.yaml")
        assert path.resolve() == root / "configs" / "digits_full_class.yaml"
        with pytest.raises(FileNotFoundError, match="not in this checkout"):
            notebook.committed_file("results/no-such-file.jsonl")
    monkeypatch.chdir(tmp_path)  # no checkout: one download from the release, then the local copy
    fetched = []

    def download(url, path):
        fetched.append(url)
        Path(path).write_text("{}\n")

    monkeypatch.setattr(notebook.urllib.request, "urlretrieve", download)
    for _ in range(2):
        assert notebook.committed_file("results/run/results.jsonl").read_text() == "{}\n"
    assert fetched == [notebook.RELEASE_URL + "results/run/results.jsonl"]

    def missing(url, path):
        raise notebook.urllib.error.HTTPError(url, 404, "Not Found", None, None)

    monkeypatch.setattr(notebook.urllib.request, "urlretrieve", missing)
    with pytest.raises(FileNotFoundError, match="not in the book's release"):
        notebook.committed_file("results/run/unfinished.jsonl")
