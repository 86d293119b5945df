"""The main job on the bundled data: LFSSD really forgets and the published alpha=10 is shown to select nothing."""

import json

import pytest

from lfssd_tutorial.__main__ import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    return out, {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}


def test_demo_writes_json_and_csv(demo):
    out, rows = demo
    assert (out / "results.csv").read_text().startswith("method,acc_retain,acc_forget,mia,seconds")
    assert {"Original", "Retrain (from scratch)"} <= rows.keys()


def test_lfssd_forgets_like_retraining(demo):
    _, rows = demo
    original, retrain, lfssd = rows["Original"], rows["Retrain (from scratch)"], rows["LFSSD (alpha=6)"]
    assert original["acc_forget"] > 90
    assert abs(lfssd["acc_forget"] - retrain["acc_forget"]) <= 5
    assert abs(lfssd["acc_retain"] - original["acc_retain"]) <= 3


def test_published_alpha_selects_nothing_in_the_demo(demo):
    _, rows = demo
    for name in ("SSD (alpha=10, published)", "LFSSD (alpha=10, published)"):
        row = rows[name]
        assert row["selected"] == 0 and row["max_ratio"] < 10
        assert row["acc_forget"] == rows["Original"]["acc_forget"]


def test_cli_usage_errors(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["demo", "--forget-class", "12"])
