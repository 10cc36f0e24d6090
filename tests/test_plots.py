"""The course's figures: one style, every helper returns a labelled figure, and the readings the notebooks rely on
are drawn (value labels on every bar, one shared scale for the parameter counts, the side view of the plane)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from csreft_lite import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_course_style_sets_the_same_figure_size_and_resolution_everywhere():
    plots.use_course_style()  # outside Jupyter: only matplotlib's settings
    assert tuple(plt.rcParams["figure.figsize"]) == plots.PANEL and plt.rcParams["figure.dpi"] == plots.DPI
    fig, axes = plots.panels(2)
    assert tuple(fig.get_size_inches()) == (2 * plots.PANEL[0], plots.PANEL[1]) and len(axes) == 2


def test_accuracy_bars_label_every_bar_even_at_zero():
    results = {"untrained": {"a": 0.0, "b": 0.0}, "trained": {"a": 0.975, "b": 1.0}}
    fig = plots.accuracy_bars(results, ["a", "b"], colors=["tab:grey", "tab:blue"])
    assert sorted(_texts(fig)) == ["0", "0", "100", "97.5"]
    assert fig.axes[0].get_ylabel() and fig.axes[0].get_title()


def test_parameter_dots_share_one_scale_and_write_readable_shares():
    models = {"small": (1000, {"edit": 10, "everything": 1000}), "big": (10**9, {"edit": 4 * 10**4, "everything": 10**9})}
    fig = plots.parameter_dots(models)
    left, right = fig.axes[0].get_xlim()
    assert all(ax.get_xlim() == (left, right) for ax in fig.axes) and left < 10 and right > 10**9
    labels = " ".join(_texts(fig))
    assert "(1%)" in labels and "(100%)" in labels and "(0.004%)" in labels and "100.0000%" not in labels
    # On a log axis a bar's length depends on where the axis starts: dots at the counts, no bars.
    assert all(not ax.patches for ax in fig.axes)
    assert sorted(x for ax in fig.axes for line in ax.get_lines() for x in line.get_xdata()) == [10, 1000, 4 * 10**4, 10**9]


def test_subspace_picture_has_a_side_view_where_the_edit_keeps_its_height():
    R = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    h = torch.tensor([0.5, -0.5, 1.0])
    edited = h + R.T @ (torch.tensor([1.0, 0.5]) - R @ h)
    fig = plots.subspace_picture(R, h, edited)
    side = fig.axes[1]
    assert "distance from the plane" in side.get_ylabel()
    (dotted,) = [line for line in side.get_lines() if line.get_color() == "tab:red"]
    heights = dotted.get_ydata()
    assert heights[0] == pytest.approx(1.0) and heights[1] == pytest.approx(1.0)  # parallel to the plane


def test_the_side_view_draws_every_vector_at_its_true_length_and_height():
    R = torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3]])
    R = torch.linalg.qr(R.T)[0].T  # orthonormal rows
    h = torch.tensor([0.6, -0.8, 1.2])
    edited = h + R.T @ (torch.tensor([1.0, 0.5]) - R @ h)
    normal = torch.linalg.cross(R[0], R[1])
    fig = plots.subspace_picture(R, h, edited)
    side = fig.axes[1]
    tips = [a.xy for a in side.texts if a.arrow_patch is not None]
    drawn = sorted(round(float(torch.tensor(tip).norm()), 3) for tip in tips)
    true = sorted(round(float(v.norm()), 3) for v in (h, R.T @ R @ h, edited))
    assert drawn == true  # the projection RᵀR h included: 0.669, not its component along one direction
    assert sorted(round(float(y), 3) for _, y in tips) == sorted(round(float(v @ normal), 3) for v in (h, R.T @ R @ h, edited))
    assert {f"{n:.2f}" for n in true} <= set(_texts(fig))  # each length written at its tip
    assert side.get_aspect() == 1.0  # as long across as up


def test_the_3d_picture_keeps_its_legend_below_the_box_and_few_ticks():
    R = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    fig = plots.subspace_picture(R, torch.tensor([0.5, -0.5, 1.0]))
    box = fig.axes[0]
    fig.canvas.draw()
    legend = box.get_legend().get_window_extent()
    assert legend.y1 <= box.get_window_extent().y0 + 1  # under the 3-D box, not over it
    assert len(box.get_xticks()) <= 3


@pytest.mark.parametrize("draw", [
    lambda: plots.loss_curve([3.0, 2.0, 1.0], ylabel="balance term"),
    lambda: plots.heatmap(torch.eye(2), ["a", "b"], ["x", "y"], title="t", colorbar="c"),
    lambda: plots.layer_lines(range(3), {"one": [1, 2, 3], "two": [3, 2, 1]}, ylabel="y", logy=True),
    lambda: plots.forgetting_curves({"m": [(0, 3.0), (4, 1.0), (8, 2.0)]}, switch=4),
    lambda: plots.token_norms({"p": (["<s>", "a", "b"], [800.0, 70.0, 90.0], (1, 3))}),
])
def test_every_helper_returns_a_labelled_figure(draw):
    fig = draw()
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    fig.canvas.draw()  # tick labels get their text when drawn; a label or a tick with text names the axis
    assert ax.get_xlabel() or any(t.get_text() for t in ax.get_xticklabels())
    assert ax.get_ylabel() or any(t.get_text() for t in ax.get_yticklabels())
