"""unlearn() and the starting-kit adapter unlearning()."""

import copy
import warnings

import pytest
import torch

from lfssd_tutorial import NothingSelectedWarning, compute_importance, unlearn, unlearning

from .conftest import make_batches, make_cnn


@pytest.fixture
def setting():
    model = make_cnn(seed=5)
    full = make_batches(n=40, seed=2)
    forget = full[-1:]  # D contains D_f
    return model, full, forget


def test_copy_leaves_input_untouched(setting):
    model, full, forget = setting
    before = copy.deepcopy(model.state_dict())
    out, report = unlearn(model, forget, full_loader=full, alpha=1.5, lambda_=1.0)
    assert out is not model
    assert report.total_selected > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in out.state_dict().items())


def test_inplace_edits_the_model(setting):
    model, full, forget = setting
    out, report = unlearn(model, forget, full_loader=full, alpha=1.5, inplace=True)
    assert out is model and report.total_changed > 0


@pytest.mark.parametrize("method,objective", [("lfssd", "l2"), ("ssd", "fisher")])
@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_cached_importance_gives_the_same_model(setting, method, objective, granularity):
    model, full, forget = setting
    a, ra = unlearn(model, forget, method=method, full_loader=full, alpha=1.2, granularity=granularity)
    imp = compute_importance(model, full, objective=objective, granularity=granularity)
    b, rb = unlearn(model, forget, method=method, full_importance=imp, alpha=1.2, granularity=granularity)
    assert ra.total_selected == rb.total_selected > 0
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_lfssd_needs_no_labels_but_ssd_does(setting):
    model, full, forget = setting
    bare_forget = [x for x, _ in forget]
    bare_full = [x for x, _ in full]
    _, report = unlearn(model, bare_forget, method="lfssd", full_loader=bare_full, alpha=1.5)
    assert report.total_selected > 0
    with pytest.raises(ValueError, match="needs labels"):
        unlearn(model, bare_forget, method="ssd", full_loader=bare_full, alpha=1.5)


def test_alpha_above_the_ceiling_returns_an_unchanged_model(setting):
    model, full, forget = setting
    with pytest.warns(NothingSelectedWarning):
        out, report = unlearn(model, forget, full_loader=full, alpha=1e6)
    assert report.nothing_selected
    for k, v in out.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_bad_arguments(setting):
    model, full, forget = setting
    with pytest.raises(ValueError, match="unknown method 'sdd'"):
        unlearn(model, forget, method="sdd", full_loader=full)
    with pytest.raises(ValueError, match="unknown granularity"):
        unlearn(model, forget, full_loader=full, granularity="pixel")
    with pytest.raises(ValueError, match="exactly one of full_loader"):
        unlearn(model, forget)
    imp = compute_importance(model, full, objective="l2")
    with pytest.raises(ValueError, match="exactly one of full_loader"):
        unlearn(model, forget, full_loader=full, full_importance=imp)
    with pytest.raises(ValueError, match="alpha"):
        unlearn(model, forget, full_importance=imp, alpha=0)
    with pytest.raises(ValueError, match="lambda_"):
        unlearn(model, forget, full_importance=imp, lambda_=-1)
    del imp["classifier.bias"]
    with pytest.raises(ValueError, match="missing"):
        unlearn(model, forget, full_importance=imp)
    with pytest.raises(ValueError, match="no data"):
        unlearn(model, [], full_loader=full)


def test_starting_kit_contract(setting):
    model, full, forget = setting
    retain = full[:-1]
    expected, _ = unlearn(model, forget, full_loader=retain + forget, alpha=3.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSelectedWarning)
        net = unlearning(model, retain, forget, validation=None)
    assert net is model
    for k, v in net.state_dict().items():
        assert torch.equal(v, expected.state_dict()[k])


def test_warn_false_is_silent_and_the_method_table(setting):
    from lfssd_tutorial.unlearn import DAMPENING_METHODS, objective_for

    model, full, forget = setting
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = unlearn(model, forget, full_loader=full, alpha=1e6, warn=False)
    assert report.nothing_selected
    assert DAMPENING_METHODS == {"lfssd": "l2", "ssd": "fisher", "ssd_true_fisher": "true_fisher"}
    assert [objective_for(m) for m in DAMPENING_METHODS] == ["l2", "fisher", "true_fisher"]
