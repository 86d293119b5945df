"""select_and_dampen_: the selection and dampening rule on hand-made tensors, invariants, the report, bad input."""

import copy
import warnings

import pytest
import torch
from torch import nn

from lfssd_tutorial import DampeningReport, NothingSelectedWarning, importance_ratios, max_importance_ratio, select_and_dampen_

from .conftest import make_cnn


class Tiny(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.lin = nn.Linear(len(bias), len(bias))
        with torch.no_grad():
            self.lin.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.lin.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def imp(weight, bias):
    return {"lin.weight": torch.as_tensor(weight, dtype=torch.float32), "lin.bias": torch.as_tensor(bias, dtype=torch.float32)}


def test_hand_made_example():
    # theta = 2 everywhere. alpha = 2, lambda = 1.
    model = Tiny([[2.0, 2.0], [2.0, 2.0]], [2.0, 2.0])
    full = imp([[1.0, 1.0], [1.0, 0.0]], [0.5, 0.0])
    forget = imp([[3.0, 2.0], [4.0, 1.0]], [0.5, 0.0])
    # ratios: 3 (sel, beta 1/3), 2 (not > 2), 4 (sel, beta 1/4), inf (Imp_D = 0: sel, beta 0); bias: 1, 0/0 (not sel)
    report = select_and_dampen_(model, full, forget, alpha=2.0, lambda_=1.0)
    torch.testing.assert_close(model.lin.weight.data, torch.tensor([[2 / 3, 2.0], [0.5, 0.0]]))
    assert torch.equal(model.lin.bias.data, torch.tensor([2.0, 2.0]))
    assert report.selected == {"lin.weight": 3, "lin.bias": 0}
    assert report.changed == {"lin.weight": 3, "lin.bias": 0}
    assert report.total_selected == 3 and report.total_numel == 6
    assert report.fraction_selected == pytest.approx(0.5)
    assert report.max_ratio == pytest.approx(4.0)
    assert report.max_ratio_parameter == "lin.weight"
    assert report.unbounded == 1


def test_lambda_above_alpha_clamps_beta_at_one():
    # Selected (ratio 3 > alpha 2) but lambda * Imp_D / Imp_Df = 5 / 3 > 1: beta clamps to 1, weight unchanged.
    model = Tiny([[1.5, -1.5], [1.5, 1.5]], [1.0, 1.0])
    full = imp([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0])
    forget = imp([[3.0, 6.0], [1.0, 1.0]], [1.0, 1.0])
    report = select_and_dampen_(model, full, forget, alpha=2.0, lambda_=5.0)
    # second element: ratio 6 selected, beta = 5/6
    torch.testing.assert_close(model.lin.weight.data, torch.tensor([[1.5, -1.25], [1.5, 1.5]]))
    assert report.selected["lin.weight"] == 2
    assert report.changed["lin.weight"] == 1


def test_zero_lambda_zeroes_selected():
    model = Tiny([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0])
    select_and_dampen_(model, imp([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]), imp([[9.0, 1.0], [1.0, 1.0]], [1.0, 1.0]), alpha=1.0, lambda_=0.0)
    assert torch.equal(model.lin.weight.data, torch.tensor([[0.0, 1.0], [1.0, 1.0]]))


@pytest.mark.parametrize("alpha,lambda_", [(0.5, 1.0), (1.0, 1.0), (2.0, 0.5), (1.0, 3.0), (3.0, 10.0)])
def test_invariants_on_random_importances(alpha, lambda_):
    model = make_cnn(seed=3)
    g = torch.Generator().manual_seed(7)
    full = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    forget = {n: torch.rand(p.shape, generator=g) * 3 for n, p in model.named_parameters()}
    before = copy.deepcopy(model.state_dict())
    report = select_and_dampen_(model, full, forget, alpha=alpha, lambda_=lambda_)
    total = 0
    for name, p in model.named_parameters():
        old = before[name]
        sel = forget[name] > alpha * full[name]
        assert (p.abs() <= old.abs()).all(), name  # no weight grows
        assert torch.equal(p[~sel], old[~sel]), name  # unselected bit-identical
        beta = torch.clamp(lambda_ * full[name] / forget[name], max=1.0)
        torch.testing.assert_close(p[sel], old[sel] * beta[sel])
        assert (torch.sign(p[sel]) * torch.sign(old[sel]) >= 0).all()  # no sign flips
        assert report.selected[name] == int(sel.sum())
        total += int(sel.sum())
    assert report.total_selected == total
    for name, buf in model.named_buffers():  # BatchNorm running stats untouched
        assert torch.equal(buf, before[name]), name
    assert report.max_ratio == pytest.approx(max_importance_ratio(full, forget))
    assert report.max_ratio == pytest.approx(float(importance_ratios(full, forget).max()))


def test_alpha_above_ceiling_selects_nothing_and_warns():
    model = make_cnn(seed=4)
    full = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    forget = {n: torch.full_like(p, 2.0) for n, p in model.named_parameters()}
    forget["classifier.bias"][0] = 3.5
    before = copy.deepcopy(model.state_dict())
    with pytest.warns(NothingSelectedWarning, match=r"alpha=10 selected no weights.*largest importance ratio Imp_Df/Imp_D is 3\.5"):
        report = select_and_dampen_(model, full, forget, alpha=10.0, lambda_=1.0)
    assert report.nothing_selected and report.total_changed == 0
    assert report.max_ratio == pytest.approx(3.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # Just below the ceiling exactly one weight is selected.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = select_and_dampen_(model, full, forget, alpha=3.4, lambda_=1.0)
    assert report.total_selected == 1


def test_report_text_and_dict():
    report = DampeningReport(alpha=2, lambda_=1, selected={"a": 1}, numel={"a": 4}, changed={"a": 1}, max_ratio=3.0, max_ratio_parameter="a")
    assert "selected 1 of 4" in str(report) and "largest ratio" in str(report)
    d = report.to_dict()
    assert d["fraction_selected"] == 0.25 and d["max_ratio"] == 3.0
    assert report.rows()[0]["fraction_selected"] == 0.25


@pytest.mark.parametrize(
    "alpha,lambda_,match",
    [(0.0, 1.0, "alpha"), (-1.0, 1.0, "alpha"), (1.0, -0.1, "lambda_"), (float("nan"), 1.0, "finite"), (1.0, float("inf"), "finite"), ("10", 1.0, "number")],
)
def test_bad_hyperparameters(alpha, lambda_, match):
    model = make_cnn()
    full = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=match):
        select_and_dampen_(model, full, full, alpha=alpha, lambda_=lambda_)


def test_mismatched_importances():
    model = make_cnn()
    full = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    forget = dict(full)
    del forget["classifier.weight"]
    with pytest.raises(ValueError, match=r"forget_importance \(Imp_Df\) is missing"):
        select_and_dampen_(model, full, forget, alpha=1.0, lambda_=1.0)
    bad = dict(full)
    bad["classifier.weight"] = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"full_importance \(Imp_D\).*shape"):
        select_and_dampen_(model, bad, full, alpha=1.0, lambda_=1.0)
    nan = dict(full)
    nan["classifier.bias"] = torch.full_like(full["classifier.bias"], float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        select_and_dampen_(model, full, nan, alpha=1.0, lambda_=1.0)
    # Both dicts are checked together; the error still names the dict and the entry.
    with pytest.raises(ValueError, match=r"forget_importance \(Imp_Df\)\['classifier.bias'\] contains NaN or inf"):
        select_and_dampen_(model, full, nan, alpha=1.0, lambda_=1.0)
    negative = dict(full)
    negative["features.0.weight"] = -torch.ones_like(full["features.0.weight"])
    with pytest.raises(ValueError, match=r"full_importance \(Imp_D\)\['features.0.weight'\] has negative values"):
        select_and_dampen_(model, negative, full, alpha=1.0, lambda_=1.0)


def _naive_select_and_dampen(params, full, forget, alpha, lambda_):
    """The selection and dampening rule in plain tensor form, without any optimisation."""
    out, selected, changed = {}, {}, {}
    for name, p in params.items():
        f, g = full[name].float(), forget[name].float()
        sel = g > alpha * f
        beta = torch.clamp(lambda_ * f / g, max=1.0).to(p.dtype)
        new = torch.where(sel, p * beta, p)
        out[name], selected[name], changed[name] = new, int(sel.sum()), int((new != p).sum())
    return out, selected, changed


class Mixed(nn.Module):
    """Parameters of several shapes and dtypes, one of them non-contiguous, one empty, one scalar."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.big = nn.Parameter(torch.randn(64, 300, generator=g))
        self.transposed = nn.Parameter(torch.randn(40, 30, generator=g).t())
        self.wide = nn.Parameter(torch.randn(500, generator=g, dtype=torch.float64))
        self.scalar = nn.Parameter(torch.randn((), generator=g))
        self.bias = nn.Parameter(torch.randn(7, generator=g))
        self.empty = nn.Parameter(torch.zeros(0, 3))
        self.frozen = nn.Parameter(torch.randn(10, generator=g), requires_grad=False)


@pytest.mark.parametrize("alpha,lambda_,spike", [(2.0, 1.0, 0.002), (2.0, 0.7, 0.05), (0.5, 1.0, 0.0), (1.0, 3.0, 0.3)])
def test_dampening_equals_naive_bit_for_bit(alpha, lambda_, spike):
    """Non-contiguous and float64 parameters, 0/0 and x/0, and a subnormal Imp_D whose ratio
    overflows float32: exactly the naive weights, counts and ratios."""
    model = Mixed()
    assert not model.transposed.is_contiguous()
    g = torch.Generator().manual_seed(5)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    full = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    full["transposed"] = torch.rand(40, 30, generator=g).t()  # importances laid out like the parameter
    forget = {}
    for n, p in params.items():
        f = full[n] * torch.rand(p.shape, generator=g)
        f[torch.rand(p.shape, generator=g) < spike] *= 50.0  # a few specialised weights
        forget[n] = f
    full["big"].view(-1)[:7] = 0.0  # Imp_D = 0: unbounded where Imp_Df > 0
    forget["big"].view(-1)[:3] = 0.0  # ... and 0/0 where both are zero
    full["wide"][:2] = 1e-45  # a subnormal Imp_D: Imp_Df / Imp_D overflows float32 (unbounded) ...
    forget["wide"][:2] = torch.tensor([1.0, 1e-45])  # ... where Imp_Df = 1, a ratio of 1 where Imp_Df = Imp_D
    before = {n: p.detach().clone() for n, p in params.items()}
    expected, selected, changed = _naive_select_and_dampen(before, full, forget, alpha, lambda_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSelectedWarning)
        report = select_and_dampen_(model, full, forget, alpha=alpha, lambda_=lambda_)
    for n, p in params.items():
        assert p.dtype == before[n].dtype and p.shape == before[n].shape
        assert torch.equal(p.detach(), expected[n]), n
    assert report.selected == selected and report.changed == changed
    assert report.unbounded == 5
    assert report.max_ratio == max_importance_ratio(full, forget)
    tops = {}
    for n in params:
        ratio = (forget[n] / full[n]).flatten()
        if torch.isfinite(ratio).any():
            tops[n] = float(ratio[torch.isfinite(ratio)].max())
    assert report.max_ratio == max(tops.values())
    assert report.max_ratio_parameter == next(n for n in tops if tops[n] == report.max_ratio)
    assert torch.equal(model.frozen, Mixed().frozen)


def test_selection_just_above_alpha_is_not_skipped():
    """A ratio that rounds below alpha in float32 can still be selected (Imp_Df > alpha * Imp_D):
    the selection is that comparison, not the quotient."""
    alpha = 0.7
    full = torch.tensor([1.3957868814468384, 1.0, 1.0, 1.0])
    forget = torch.tensor([0.9770508408546448, 0.1, 0.1, 0.1])
    assert bool(forget[0] > alpha * full[0]) and float(forget[0] / full[0]) < alpha  # the case in point
    model = nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    report = select_and_dampen_(model, {"weight": full.view(1, 4)}, {"weight": forget.view(1, 4)}, alpha=alpha, lambda_=0.5)
    assert report.selected == {"weight": 1} and report.changed == {"weight": 1}
    assert report.max_ratio < alpha
    expected = before.clone()
    expected[0, 0] = before[0, 0] * (0.5 * full[0] / forget[0])
    assert torch.equal(model.weight.detach(), expected)


def test_importances_are_checked_before_any_weight_changes():
    model = make_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    forget = {n: 5 * torch.ones_like(p) for n, p in model.named_parameters()}  # everything selected
    for name, bad, match in [
        ("classifier.weight", float("inf"), r"forget_importance \(Imp_Df\)\['classifier.weight'\] contains NaN or inf"),
        ("features.4.bias", -1.0, r"forget_importance \(Imp_Df\)\['features.4.bias'\] has negative"),
    ]:
        broken = dict(forget)
        broken[name] = forget[name].clone()
        broken[name].view(-1)[-1] = bad
        with pytest.raises(ValueError, match=match):
            select_and_dampen_(model, full, broken, alpha=1.0, lambda_=1.0)
    # float64 values beyond float32's range are finite, but not in the float32 computation.
    huge = {n: v.double() for n, v in full.items()}
    huge["classifier.bias"][0] = 1e300
    with pytest.raises(ValueError, match=r"full_importance \(Imp_D\)\['classifier.bias'\] has values that overflow float32"):
        select_and_dampen_(model, huge, forget, alpha=1.0, lambda_=1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_nothing_selected_warning_points_at_the_caller():
    from lfssd_tutorial import unlearn

    model = make_cnn(seed=4)
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        select_and_dampen_(model, ones, ones, alpha=10.0, lambda_=1.0)
        unlearn(model, [torch.randn(4, 1, 8, 8)], method="lfssd", full_importance=ones, alpha=1e6)
    assert [w.category for w in caught] == [NothingSelectedWarning] * 2
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]
