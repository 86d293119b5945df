"""The experiments' storage: append-only results files that survive a crash mid-write, and config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfssd_tutorial.experiments import ConfigError, append_record, config_from_dict, load_config, read_results

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_records_are_appended_one_line_each_and_earlier_lines_are_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"key": "a", "b": 1, "a": 2.5})
    first = path.read_bytes()
    append_record(path, {"key": "b", "x": None})
    assert path.read_bytes().startswith(first)  # nothing before the new line is rewritten
    assert path.read_text().splitlines() == [json.dumps({"key": "a", "b": 1, "a": 2.5}, sort_keys=True),
                                             json.dumps({"key": "b", "x": None}, sort_keys=True)]
    assert read_results(path) == [{"key": "a", "b": 1, "a": 2.5}, {"key": "b", "x": None}]
    assert read_results(tmp_path / "missing.jsonl") == []


def test_a_torn_last_line_is_skipped_on_reading_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"key": "a"})
    append_record(path, {"key": "b"})
    with open(path, "a") as f:
        f.write('{"key": "c", "acc_re')  # a crash in the middle of writing the third record
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        assert [r["key"] for r in read_results(path)] == ["a", "b"]
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        append_record(path, {"key": "c"})
    assert [r["key"] for r in read_results(path)] == ["a", "b", "c"]
    assert path.read_text().endswith('{"key": "c"}\n')


def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a"}\n{"key": \n{"key": "c"}\n')
    with pytest.raises(ValueError, match=r"results\.jsonl, line 2"):
        read_results(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_committed_config_loads(path):
    config = load_config(path)
    assert config.name and config.methods and config.labels()


def test_bad_values_of_other_modules_dataclasses_are_charged_to_their_field():
    base = {"name": "ok", "scenario": {"kind": "full_class", "targets": ["1"]}, "methods": ["original"]}
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, "train": {"epochs": 3, "lr": 0.0}})
    assert err.value.field == "train.lr" and str(err.value).startswith("train.lr: ")
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, "baselines": {"bad_teacher_retain_fraction": 2.0, "finetune_epochs": 1}})
    assert err.value.field == "baselines.bad_teacher_retain_fraction"
    config = config_from_dict({**base, "train": {"milestones": [2, 4]}})
    assert config.train.milestones == (2, 4)


def test_calibration_settings_need_alpha_auto_and_name_the_row():
    base = {"name": "ok", "scenario": {"kind": "full_class", "targets": ["1"]}}
    auto = {"method": "lfssd", "alpha": "auto", "calibration_lambdas": [0.5, 1, 2], "calibration_growth": 1.5,
            "calibration_forget_sample": 100}
    config = config_from_dict({**base, "methods": [auto]})
    spec = config.methods[0]
    assert (spec.calibration_lambdas, spec.calibration_growth, spec.calibration_forget_sample) == ([0.5, 1.0, 2.0], 1.5, 100)
    assert config.labels() == ["LFSSD (alpha=auto, lambda=auto)"]
    for bad, field in [({"alpha": 3}, "alpha"), ({"calibration_growth": 1.0}, "calibration_growth"),
                       ({"calibration_forget_sample": 0}, "calibration_forget_sample"),
                       ({"calibration_lambdas": []}, "calibration_lambdas"),
                       ({"calibration_lambdas": [1, -1]}, "calibration_lambdas")]:
        with pytest.raises(ConfigError) as err:
            config_from_dict({**base, "methods": [{**auto, **bad}]})
        assert err.value.field == f"methods[0].{field}", bad
