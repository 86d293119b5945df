"""The Importance type (a dict that records how it was estimated), the refusals of importances of
different kinds, and the safetensors importance file."""

import copy
import json
import os
import pickle
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file
from torch import nn

import lfssd_tutorial as lf
from lfssd_tutorial import Importance, ImportanceInfo, compute_importance, load_importance, save_importance
from lfssd_tutorial.importance_file import HEADER_KEY

from .conftest import make_batches, make_cnn


def trainable_shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------ the record


@pytest.mark.parametrize("objective", ["l2", "fisher"])
@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_compute_importance_records_what_it_is(cnn, objective, granularity):
    batches = make_batches(n=23, batch_size=8)
    empty = (batches[0][0][:0], batches[0][1][:0])  # skipped by the estimators, so not counted
    imp = compute_importance(cnn, [batches[0], empty, *batches[1:]], objective=objective, granularity=granularity)
    assert isinstance(imp, Importance) and isinstance(imp, dict)
    info = imp.info
    assert (info.objective, info.granularity, info.label_samples) == (objective, granularity, None)
    assert info.samples == sum(len(x) for x, _ in batches) == 23
    assert info.batches == len(batches) == 3
    assert info.parameters == trainable_shapes(cnn)
    assert list(imp) == list(info.parameters)


def _count_on_shard(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shard = make_batches(n=23, batch_size=4)[rank::2]  # rank 0: 3 batches, 12 samples; rank 1: 3 batches, 11
        for granularity in ("batch", "sample"):
            info = compute_importance(make_cnn(), shard, objective="l2", granularity=granularity).info
            with open(os.path.join(out, f"{granularity}-rank{rank}.json"), "w") as f:
                json.dump([info.samples, info.batches], f)
    finally:
        dist.destroy_process_group()


def test_the_counts_cover_every_process_of_a_group(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_count_on_shard, args=(port, str(tmp_path)), nprocs=2, join=True)
    for granularity in ("batch", "sample"):
        for rank in range(2):
            counts = json.loads((tmp_path / f"{granularity}-rank{rank}.json").read_text())
            assert counts == [23, len(make_batches(n=23, batch_size=4))] == [23, 6]


def test_true_fisher_records_its_label_samples(cnn, batches):
    assert compute_importance(cnn, batches, objective="true_fisher", label_samples=2).info.label_samples == 2
    assert compute_importance(cnn, batches[:1], objective="true_fisher").info.label_samples is None


def test_the_record_leaves_out_frozen_parameters(batches):
    model = make_cnn()
    model.classifier.bias.requires_grad_(False)
    imp = compute_importance(model, batches, objective="l2")
    assert "classifier.bias" not in imp.info.parameters and set(imp) == set(imp.info.parameters)


def test_it_behaves_as_a_dict(cnn, batches):
    imp = compute_importance(cnn, batches, objective="l2")
    plain = {n: v.clone() for n, v in imp.items()}
    assert len(imp) == len(plain) == len(trainable_shapes(cnn))
    assert torch.equal(imp["classifier.weight"], plain["classifier.weight"])
    assert [n for n, _ in imp.items()] == list(plain)
    assert imp == plain and plain == imp and not imp != plain
    assert dict(imp) == imp and type(dict(imp)) is dict
    other = dict(plain)
    other["classifier.bias"] = other["classifier.bias"] + 1
    assert imp != other and not imp == other
    assert imp != {n: v for n, v in plain.items() if n != "classifier.bias"}
    assert imp != compute_importance(cnn, batches, objective="fisher")  # same shapes, another record
    same = compute_importance(cnn, batches, objective="l2")
    assert imp == same
    for clone in (copy.deepcopy(imp), pickle.loads(pickle.dumps(imp))):
        assert isinstance(clone, Importance) and clone.info == imp.info and clone == imp
    assert "objective='l2'" in repr(imp) and "23 samples in 3 batches" in repr(imp)


def test_an_importance_must_match_its_recorded_parameters():
    info = ImportanceInfo("l2", "batch", parameters={"w": (2, 3)})
    Importance({"w": torch.zeros(2, 3)}, info)
    with pytest.raises(ValueError, match=r"'w' has shape \(3, 2\)"):
        Importance({"w": torch.zeros(3, 2)}, info)
    with pytest.raises(ValueError, match="missing"):
        Importance({"v": torch.zeros(2, 3)}, info)
    with pytest.raises(TypeError, match="ImportanceInfo"):
        Importance({"w": torch.zeros(2, 3)}, {"objective": "l2"})
    with pytest.raises(ValueError, match="samples"):
        ImportanceInfo("l2", "batch", samples=-1)


# --------------------------------------------------------------- the refusals


@pytest.fixture
def setting():
    model = make_cnn(seed=5)
    full = make_batches(n=40, seed=2)
    return model, full, full[-1:]


@pytest.mark.parametrize("change", [{"objective": "fisher"}, {"granularity": "sample"}])
def test_select_and_dampen_refuses_mixed_kinds(setting, change):
    model, full, forget = setting
    options = {"objective": "l2", "granularity": "batch", **change}
    imp_d = compute_importance(model, full, objective="l2")
    imp_df = compute_importance(model, forget, **options)
    field, value = next(iter(change.items()))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=f"full_importance \\(Imp_D\\) has {field} '.*' but forget_importance "
                                         f"\\(Imp_Df\\) has {field} '{value}'"):
        lf.select_and_dampen_(model, imp_d, imp_df, alpha=1.0, lambda_=1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_calibrate_alpha_refuses_mixed_kinds():
    model = nn.Linear(3, 3, bias=False)
    full = Importance({"weight": torch.ones(3, 3)}, ImportanceInfo("l2", "sample"))
    forget = Importance({"weight": torch.full((3, 3), 2.0)}, ImportanceInfo("l2", "batch"))
    x = torch.eye(3)
    with pytest.raises(ValueError, match="granularity 'sample' but forget_importance .* granularity 'batch'"):
        lf.calibrate_alpha(model, full, forget, [x], [x])


@pytest.mark.parametrize("method,given,needed", [("ssd", "l2", "fisher"), ("lfssd", "fisher", "l2"),
                                                 ("ssd_true_fisher", "l2", "true_fisher")])
def test_unlearn_refuses_an_imp_d_of_another_objective(setting, method, given, needed):
    model, full, forget = setting
    imp_d = compute_importance(model, full, objective=given)
    with pytest.raises(ValueError, match=f"has objective '{given}', but method='{method}' needs objective '{needed}'"):
        lf.unlearn(model, forget, method=method, full_importance=imp_d, alpha=1.0)


def test_unlearn_refuses_an_imp_d_of_another_granularity(setting):
    model, full, forget = setting
    imp_d = compute_importance(model, full, objective="l2", granularity="sample")
    with pytest.raises(ValueError, match="has granularity 'sample', but granularity 'batch' was asked for"):
        lf.unlearn(model, forget, method="lfssd", full_importance=imp_d, alpha=1.0)
    _, report = lf.unlearn(model, forget, method="lfssd", full_importance=imp_d, granularity="sample", alpha=1.0)
    assert report.total_selected > 0


def test_plain_dicts_are_still_accepted(setting):
    model, full, forget = setting
    imp_d = compute_importance(model, full, objective="l2")
    imp_df = compute_importance(model, forget, objective="l2")
    expected, report = lf.unlearn(model, forget, method="lfssd", full_importance=imp_d, alpha=1.5)
    assert report.total_selected > 0
    plain, plain_report = lf.unlearn(model, forget, method="lfssd", full_importance=dict(imp_d), alpha=1.5)
    assert plain_report.total_selected == report.total_selected
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in expected.state_dict().items())
    # a plain dict next to a recorded importance: nothing to compare, as before
    edited = copy.deepcopy(model)
    assert lf.select_and_dampen_(edited, dict(imp_d), imp_df, alpha=1.5, lambda_=1.0).total_selected == report.total_selected
    # and a plain dict of another objective is taken on trust, as before
    lf.unlearn(model, forget, method="ssd", full_importance=dict(imp_d), alpha=1.5, warn=False)


# ------------------------------------------------------------------- the file


def test_round_trip_keeps_values_record_and_metadata(tmp_path, cnn, batches):
    imp = compute_importance(cnn, batches, objective="fisher", granularity="sample")
    path = tmp_path / "imp.safetensors"
    save_importance(imp, path, metadata={"data": "digits", "seed": 3, "seconds": 1.5, "exact": True})
    loaded, meta = load_importance(path, cnn, with_metadata=True)
    assert meta == {"data": "digits", "seed": 3, "seconds": 1.5, "exact": True}
    assert isinstance(loaded, Importance) and loaded.info == imp.info
    assert list(loaded) == list(imp)  # the model's order, not the file's
    assert loaded == imp
    assert load_importance(path) == imp
    assert not list(tmp_path.glob("*.tmp-*"))
    header = json.loads(_header(path)["__metadata__"][HEADER_KEY])
    assert (header["format"], header["version"], header["info"]["objective"]) == ("lfssd-importance", 2, "fisher")


def test_a_plain_dict_may_state_its_kind_in_its_metadata(tmp_path, cnn, batches):
    plain = dict(compute_importance(cnn, batches, objective="l2"))
    path = tmp_path / "imp.safetensors"
    save_importance(plain, path)
    loaded = load_importance(path)
    assert type(loaded) is dict and loaded.keys() == plain.keys()
    save_importance(plain, path, metadata={"objective": "l2", "granularity": "batch"})
    loaded = load_importance(path)
    assert isinstance(loaded, Importance)
    assert (loaded.info.objective, loaded.info.granularity, loaded.info.samples) == ("l2", "batch", None)
    with pytest.raises(ValueError, match="unknown objective 'mse'"):
        save_importance(plain, path, metadata={"objective": "mse", "granularity": "batch"})


def test_save_refuses_contradictions_and_edited_importances(tmp_path, cnn, batches):
    imp = compute_importance(cnn, batches, objective="l2")
    path = tmp_path / "imp.safetensors"
    with pytest.raises(ValueError, match="metadata\\['objective'\\] is 'fisher', but the importance has objective 'l2'"):
        save_importance(imp, path, metadata={"objective": "fisher", "granularity": "batch"})
    save_importance(imp, path, metadata={"objective": "l2", "granularity": "batch"})
    del imp["classifier.bias"]
    with pytest.raises(ValueError, match="edited after it was estimated"):
        save_importance(imp, path)
    with pytest.raises(TypeError, match="metadata\\['x'\\]"):
        save_importance(dict(imp), path, metadata={"x": [1]})


def test_load_checks_the_model(tmp_path, cnn, batches):
    imp = compute_importance(cnn, batches, objective="l2")
    path = tmp_path / "imp.safetensors"
    save_importance(imp, path)
    with pytest.raises(ValueError, match=f"importance loaded from {path}.*shape"):
        load_importance(path, make_cnn(width=6))
    plain = dict(imp)
    del plain["classifier.bias"]
    save_importance(plain, path)
    with pytest.raises(ValueError, match=f"importance loaded from {path} is missing 1 parameter"):
        load_importance(path, cnn)


def _header(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


def _our_header(values, **changes):
    header = {"format": "lfssd-importance", "version": 2, "info": None, "metadata": {},
              "parameters": [[n, list(v.shape)] for n, v in values.items()], **changes}
    return {HEADER_KEY: json.dumps(header)}


def _corrupt_files(folder, imp):
    """(path, what the error says) for files that are not valid importance files."""
    values = {n: v.contiguous() for n, v in imp.items()}
    good = folder / "good.safetensors"
    save_importance(imp, good)
    raw = good.read_bytes()
    cases = []

    def write(name, data, match):
        path = folder / name
        path.write_bytes(data)
        cases.append((path, match))

    write("text.safetensors", b"just some text, not tensors\n" * 20, "not a readable safetensors importance file")
    write("truncated.safetensors", raw[: len(raw) - 40], "not a readable safetensors importance file")
    write("header-cut.safetensors", raw[:50], "not a readable safetensors importance file")
    write("empty.safetensors", b"", "not a readable safetensors importance file")
    save_file(values, folder / "foreign.safetensors")
    cases.append((folder / "foreign.safetensors", "without the importance header"))
    save_file(values, folder / "other-meta.safetensors", metadata={"format": "pt"})
    cases.append((folder / "other-meta.safetensors", "without the importance header"))
    save_file(values, folder / "bad-json.safetensors", metadata={HEADER_KEY: "{not json"})
    cases.append((folder / "bad-json.safetensors", "not valid JSON"))
    save_file(values, folder / "newer.safetensors", metadata=_our_header(values, version=3))
    cases.append((folder / "newer.safetensors", "version 3"))
    fewer = dict(values)
    fewer.pop("classifier.bias")
    save_file(fewer, folder / "missing-tensor.safetensors", metadata=_our_header(values))
    cases.append((folder / "missing-tensor.safetensors", r"do not match the file's header: 1 parameter\(s\) missing"))
    reshaped = {**values, "classifier.bias": torch.zeros(2)}
    save_file(reshaped, folder / "wrong-shape.safetensors", metadata=_our_header(values))
    cases.append((folder / "wrong-shape.safetensors", r"'classifier.bias' has shape \(2,\)"))
    negative = {**values, "classifier.bias": -torch.ones_like(values["classifier.bias"])}
    save_file(negative, folder / "negative.safetensors", metadata=_our_header(negative))
    cases.append((folder / "negative.safetensors", "negative values"))
    save_file(values, folder / "bad-record.safetensors",
              metadata=_our_header(values, info={"objective": "mse", "granularity": "batch"}))
    cases.append((folder / "bad-record.safetensors", "not a valid importance record"))
    torch.save({"a": torch.zeros(1)}, folder / "torch-dict.pt")
    cases.append((folder / "torch-dict.pt", "a torch file but not an importance file"))
    torch.save({"format": "lfssd-importance", "version": 1, "importance": {"w": torch.zeros(1)}, "x": nn.Linear(1, 1)},
               folder / "torch-pickle.pt")
    cases.append((folder / "torch-pickle.pt", "nor a readable importance file of the older torch format"))
    old = folder / "old-format.pt"
    torch.save({"format": "lfssd-importance", "version": 1, "metadata": {}, "importance": dict(values)}, old)
    write("old-truncated.pt", old.read_bytes()[:200], "nor a readable importance file of the older torch format")
    return cases


def test_corrupt_truncated_and_foreign_files_name_the_file_and_the_problem(tmp_path, cnn, batches):
    imp = compute_importance(cnn, batches, objective="l2")
    for path, match in _corrupt_files(tmp_path, imp):
        with pytest.raises(ValueError, match=match) as caught:
            load_importance(path)
        assert str(path) in str(caught.value), path
        assert "weights_only=False" not in str(caught.value)
    with pytest.raises(FileNotFoundError):
        load_importance(tmp_path / "absent.safetensors")


def _save_version_1(importance, path, metadata):
    """The file that save_importance wrote before the safetensors format."""
    payload = {"format": "lfssd-importance", "version": 1, "metadata": dict(metadata),
               "importance": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in importance.items()}}
    torch.save(payload, path)


def test_files_of_the_older_torch_format_still_load(tmp_path, cnn, batches):
    imp = compute_importance(cnn, batches, objective="l2", granularity="sample")
    stated, bare = tmp_path / "stated.pt", tmp_path / "bare.pt"
    _save_version_1(imp, stated, {"objective": "l2", "granularity": "sample", "seconds": 2.0})
    _save_version_1(imp, bare, {"seconds": 2.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, meta = load_importance(stated, cnn, with_metadata=True)
        plain = load_importance(bare, cnn)
    assert meta == {"objective": "l2", "granularity": "sample", "seconds": 2.0}
    assert isinstance(loaded, Importance) and (loaded.info.objective, loaded.info.granularity) == ("l2", "sample")
    assert loaded.info.samples is None and loaded.info.parameters == trainable_shapes(cnn)
    assert type(plain) is dict and plain == imp and loaded == dict(imp)
    # saving what it loads converts it
    converted = tmp_path / "converted.safetensors"
    save_importance(loaded, converted, metadata=meta)
    assert load_importance(converted) == loaded
    with pytest.raises(ValueError, match=f"{bare}.*shape"):
        load_importance(bare, make_cnn(width=6))
