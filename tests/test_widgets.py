"""The alpha x lambda sweep (lfssd_tutorial.sweep), its heatmap (plots) and the ipywidgets explorer (widgets)."""

import copy
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from lfssd_tutorial import compute_importance, select_and_dampen_
from lfssd_tutorial.metrics import accuracy_evaluator
from lfssd_tutorial.plots import plot_sweep_heatmaps
from lfssd_tutorial.sweep import SweepResult, dampen_copy, sweep_alpha_lambda
from lfssd_tutorial.widgets import alpha_lambda_explorer

from .conftest import make_batches, make_cnn


@pytest.fixture
def setup():
    model = make_cnn()
    full = make_batches(n=40, seed=1)
    forget = [(x[y == 0], y[y == 0]) for x, y in full]
    forget = [(x, y) for x, y in forget if len(y)]
    full_imp = compute_importance(model, full, objective="l2")
    forget_imp = compute_importance(model, forget, objective="l2")
    evaluate = accuracy_evaluator({"all": full, "forget": forget})
    return model, full_imp, forget_imp, evaluate


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_accuracy_evaluator(setup):
    model, _, _, evaluate = setup
    values = evaluate(model)
    assert set(values) == {"all", "forget"}
    assert all(0.0 <= v <= 100.0 for v in values.values())
    with pytest.raises(ValueError):
        accuracy_evaluator({})


def test_dampen_copy_leaves_original_untouched(setup):
    model, full_imp, forget_imp, _ = setup
    before = _state(model)
    edited, report = dampen_copy(model, full_imp, forget_imp, alpha=1.0, lambda_=1.0)
    assert report.total_selected > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    reference = copy.deepcopy(model)
    select_and_dampen_(reference, full_imp, forget_imp, alpha=1.0, lambda_=1.0)
    for k, v in edited.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k])


def test_sweep_shape_and_ceiling(setup):
    model, full_imp, forget_imp, evaluate = setup
    before = _state(model)
    alphas, lambdas = [0.5, 1.0, 2.0, 1000.0], [0.0, 1.0, 3.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alpha = 1000 selects nothing: recorded, not warned about
        sweep = sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=alphas, lambdas=lambdas, label="LFSSD")
    assert isinstance(sweep, SweepResult)
    assert sweep.shape == (3, 4)
    assert set(sweep.metrics) == {"all", "forget"}
    for grid in sweep.metrics.values():
        assert grid.shape == (3, 4)
        assert np.isfinite(grid).all()
    assert sweep.selected.shape == (3, 4)
    assert sweep.label == "LFSSD"
    assert 1.0 < sweep.max_ratio < 1000.0
    # alpha above the largest ratio selects nothing: the original accuracies, evaluated afresh.
    original = evaluate(model)
    assert (sweep.selected[:, -1] == 0).all()
    for k, grid in sweep.metrics.items():
        assert np.all(grid[:, -1] == original[k])
        assert sweep.original[k] == original[k]
    # a lower alpha selects at least as many weights
    assert (np.diff(sweep.selected, axis=1) <= 0).all()
    assert sweep.selected[0, 0] > 0
    # lambda = 0 zeroes the selected weights; a model with zeroed weights is not the original
    zeroed, _ = dampen_copy(model, full_imp, forget_imp, alpha=0.5, lambda_=0.0)
    assert sweep.metrics["all"][0, 0] == evaluate(zeroed)["all"]
    assert len(sweep.rows()) == 12
    assert {"alpha", "lambda", "selected", "all", "forget"} <= set(sweep.rows()[0])
    # the model itself is never modified
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_sweep_skip_and_on_point(setup):
    model, full_imp, forget_imp, evaluate = setup
    alphas, lambdas = [0.5, 1.0, 1000.0], [0.0, 1.0]
    full = sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=alphas, lambdas=lambdas)
    seen = []
    part = sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=alphas, lambdas=lambdas, skip={(1.0, 0.0)},
                              on_point=lambda a, lam, values, report: seen.append((a, lam, dict(values), report.total_selected)))
    # alpha by alpha, every lambda for each; the skipped point is neither evaluated nor reported
    assert [(a, lam) for a, lam, _, _ in seen] == [(0.5, 0.0), (0.5, 1.0), (1.0, 1.0), (1000.0, 0.0), (1000.0, 1.0)]
    for a, lam, values, selected in seen:
        i, j = lambdas.index(lam), alphas.index(a)
        assert selected == full.selected[i, j] == part.selected[i, j]
        assert values == {k: grid[i, j] for k, grid in full.metrics.items()}
    assert part.selected[0, 1] == -1 and all(np.isnan(grid[0, 1]) for grid in part.metrics.values())
    assert part.max_ratio == full.max_ratio
    everything = {(a, lam) for a in alphas for lam in lambdas}
    none = sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=alphas, lambdas=lambdas, skip=everything)
    assert (none.selected == -1).all() and none.max_ratio == pytest.approx(full.max_ratio)


def test_sweep_rejects_bad_grids(setup):
    model, full_imp, forget_imp, evaluate = setup
    with pytest.raises(ValueError):
        sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=[])
    with pytest.raises(ValueError):
        sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=[0.0, 1.0])
    with pytest.raises(ValueError):
        sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=[1.0], lambdas=[-1.0])
    with pytest.raises(ValueError):
        sweep_alpha_lambda(model, {k: v for k, v in list(full_imp.items())[1:]}, forget_imp, evaluate, alphas=[1.0])


def test_plot_sweep_heatmaps_marks_the_ceiling(setup):
    model, full_imp, forget_imp, evaluate = setup
    sweeps = [
        sweep_alpha_lambda(model, full_imp, forget_imp, evaluate, alphas=[0.5, 1.0, 2.0, 1000.0], lambdas=[1.0, 2.0], label=name)
        for name in ("A", "B")
    ]
    fig = plot_sweep_heatmaps(sweeps, metrics=["all", "forget"])
    heatmaps = [ax for ax in fig.axes if ax.get_title()]
    assert len(heatmaps) == 4
    assert heatmaps[0].get_title() == f"A: all (max ratio {sweeps[0].max_ratio:.2f})"
    # the dashed ceiling line sits between the columns of the alphas around max_ratio
    lines = [line for line in heatmaps[0].get_lines() if line.get_linestyle() == "--"]
    assert len(lines) == 1
    x = lines[0].get_xdata()[0]
    position = np.searchsorted(sweeps[0].alphas, sweeps[0].max_ratio)
    assert position - 1 <= x <= position
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_explorer_builds_without_a_display_and_updates(setup):
    pytest.importorskip("ipywidgets")
    model, full_imp, forget_imp, evaluate = setup
    before = _state(model)
    explorer = alpha_lambda_explorer(model, full_imp, forget_imp, evaluate, alpha=1000.0, lambda_=1.0,
                                     alpha_range=(0.5, 1000.0), title="demo")
    original = evaluate(model)
    assert explorer.result["nothing_selected"]
    assert explorer.result["all"] == original["all"]
    assert "nothing selected" in explorer.summary.value
    first = explorer.summary.value

    explorer.alpha_slider.value = 0.5  # fires the observer, as a user dragging the slider would
    assert explorer.result["alpha"] == 0.5
    assert explorer.result["selected"] > 0
    assert explorer.summary.value != first
    zeroed, report = dampen_copy(model, full_imp, forget_imp, alpha=0.5, lambda_=1.0)
    assert explorer.result["selected"] == report.total_selected
    assert explorer.result["all"] == evaluate(zeroed)["all"]

    explorer.lambda_slider.value = 0.0
    assert explorer.result["lambda"] == 0.0
    edited, _ = dampen_copy(model, full_imp, forget_imp, alpha=0.5, lambda_=0.0)
    assert explorer.result["forget"] == evaluate(edited)["forget"]

    # each change starts from the original weights, not from the previous edit
    explorer.alpha_slider.value = 1000.0
    assert explorer.result["all"] == original["all"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_explorer_rejects_out_of_range_start(setup):
    pytest.importorskip("ipywidgets")
    model, full_imp, forget_imp, evaluate = setup
    with pytest.raises(ValueError):
        alpha_lambda_explorer(model, full_imp, forget_imp, evaluate, alpha=50.0, alpha_range=(0.5, 12.0))


def test_sweep_result_from_records_puts_cli_records_on_their_grid():
    from lfssd_tutorial.sweep import SweepResult

    records = [
        {"alpha": a, "lambda": lam, "selected": int(10 * a + lam), "max_ratio": 7.5,
         "acc_retain": 90 + a + lam, "acc_forget": a * lam}
        for a in (2.0, 6.0, 10.0) for lam in (0.5, 1.0) if (a, lam) != (10.0, 1.0)
    ]
    sweep = SweepResult.from_records(records, label="LFSSD")
    assert sweep.shape == (2, 3) and list(sweep.alphas) == [2, 6, 10] and list(sweep.lambdas) == [0.5, 1]
    assert sweep.max_ratio == 7.5 and sweep.label == "LFSSD"
    rows = {(r["alpha"], r["lambda"]): r for r in sweep.rows()}
    for rec in records:
        row = rows[rec["alpha"], rec["lambda"]]
        assert row["Acc(D_r)"] == rec["acc_retain"] and row["Acc(D_f)"] == rec["acc_forget"] and row["selected"] == rec["selected"]
    assert rows[10.0, 1.0]["selected"] == -1 and np.isnan(rows[10.0, 1.0]["Acc(D_r)"])
    with pytest.raises(ValueError, match="no sweep records"):
        SweepResult.from_records([])
