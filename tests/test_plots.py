"""The ratio histogram of lfssd_tutorial.plots: its log panel and its linear zoom near the ceiling."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lfssd_tutorial.plots import BOOK_WIDTH, plot_ratio_histogram


@pytest.fixture
def ratios():
    """Many small ratios and a few close to a ceiling of 7.33, the largest 7.27."""
    rng = np.random.default_rng(0)
    return np.concatenate([rng.lognormal(-1.0, 1.0, 2000).clip(max=6.0), [6.9, 7.1, 7.27]])


def _line_positions(ax):
    return [line.get_xdata()[0] for line in ax.get_lines()]


def test_default_figure_has_a_log_panel_and_a_zoom_within_the_book_width(ratios):
    ax, zoom_ax = plot_ratio_histogram(ratios, alphas=(7,), bound=7.33)
    width, _ = ax.figure.get_size_inches()
    assert zoom_ax is not None and zoom_ax.figure is ax.figure
    assert width <= BOOK_WIDTH
    assert ax.get_xscale() == "log" and zoom_ax.get_xscale() == "linear"
    plt.close(ax.figure)


def test_zoom_separates_the_largest_ratio_from_a_close_bound(ratios):
    ax, zoom_ax = plot_ratio_histogram(ratios, alphas=(7,), published_alpha=10, bound=7.33)
    low, high = zoom_ax.get_xlim()
    # The default range runs from 0.9 x the smaller to 1.02 x the larger of the two.
    assert low == pytest.approx(0.9 * 7.27) and high == pytest.approx(1.02 * 7.33)
    # 7.27 and 7.33 are at least 3% of the zoom's width apart (on the log panel, 0.4%).
    assert (7.33 - 7.27) / (high - low) > 0.03
    positions = _line_positions(zoom_ax)
    assert any(x == pytest.approx(7.27) for x in positions)  # the largest ratio
    assert any(x == pytest.approx(7.33) for x in positions)  # the bound
    assert any(x == pytest.approx(7.0) for x in positions)  # alpha = 7 lies inside the range
    assert not any(x == pytest.approx(10.0) for x in positions)  # the published alpha lies outside
    # The zoom counts only the ratios inside its range.
    assert sum(p.get_height() for p in zoom_ax.patches) == np.sum((ratios >= low) & (ratios <= high))
    plt.close(ax.figure)


def test_legend_counts_the_selected_weights(ratios):
    ax, _ = plot_ratio_histogram(ratios, alphas=(7,), published_alpha=10, bound=7.33)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"$\\alpha$ = 7: {int(np.sum(ratios > 7)):,} selected" in labels
    assert "published $\\alpha$ = 10: 0 selected" in labels
    assert "largest ratio = 7.27" in labels
    plt.close(ax.figure)


def test_given_axes_alone_draw_no_zoom_and_an_explicit_zoom_range_is_used(ratios):
    fig, (a, b) = plt.subplots(1, 2)
    ax, zoom_ax = plot_ratio_histogram(ratios, ax=a)
    assert ax is a and zoom_ax is None
    ax, zoom_ax = plot_ratio_histogram(ratios, ax=a, zoom_ax=b, zoom=(5.0, 8.0))
    assert zoom_ax is b and b.get_xlim() == (5.0, 8.0)
    plt.close(fig)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no positive ratio"):
        plot_ratio_histogram(np.zeros(5))
    with pytest.raises(ValueError, match="increasing"):
        plot_ratio_histogram(np.array([1.0, 2.0]), zoom=(3.0, 3.0))
    plt.close("all")


def test_every_method_has_its_own_colour():
    from lfssd_tutorial.methods import METHODS
    from lfssd_tutorial.plots import METHOD_COLOURS

    assert set(METHOD_COLOURS) == set(METHODS)
    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS)


def test_bars_take_the_given_colour_and_marked_alphas_avoid_method_colours(ratios):
    from matplotlib.colors import to_rgba

    from lfssd_tutorial.plots import METHOD_COLOURS

    ax, zoom_ax = plot_ratio_histogram(ratios, alphas=(1, 3, 7), colour=METHOD_COLOURS["lfssd"])
    for axes in (ax, zoom_ax):
        assert {p.get_facecolor() for p in axes.patches} == {to_rgba(METHOD_COLOURS["lfssd"])}
    method_colours = {to_rgba(c) for c in METHOD_COLOURS.values()}
    dashed = [line.get_color() for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3 and not {to_rgba(c) for c in dashed} & method_colours
    plt.close(ax.figure)


def test_selection_per_layer_takes_one_colour_per_report():
    import torch
    from torch import nn

    from lfssd_tutorial.dampening import select_and_dampen_
    from lfssd_tutorial.plots import plot_selection_per_layer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    full = {n: torch.rand_like(p) + 0.1 for n, p in model.named_parameters()}
    forget = {n: torch.rand_like(p) * 3 for n, p in model.named_parameters()}
    reports = {f"alpha = {a}": select_and_dampen_(model, full, forget, alpha=a, lambda_=1.0, warn=False) for a in (1, 2)}
    ax = plot_selection_per_layer(reports, colours=["tab:blue", "lightsteelblue"])
    faces = {p.get_facecolor() for p in ax.patches}
    assert faces == {matplotlib.colors.to_rgba("tab:blue"), matplotlib.colors.to_rgba("lightsteelblue")}
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="one colour per report"):
        plot_selection_per_layer(reports, colours=["tab:blue"])
