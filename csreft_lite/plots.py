"""Matplotlib figures shared by the notebooks, in one style (``use_course_style()``, called once per notebook).

Every helper takes ``ax=None`` (a new figure when absent), labels its axes and title, and returns the figure.
Figures are one panel (``PANEL``) or a full row of two (``panels(2)``), never in between.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

PANEL = (5.5, 3.5)  # inches of one panel; a row of two is twice as wide
DPI = 100  # with retina PNGs, 200 pixels per inch on screen
STYLE = {
    "figure.dpi": DPI,
    "figure.figsize": PANEL,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
}


def use_course_style() -> None:
    """Set the course's figure style: ``STYLE`` for matplotlib, and retina PNGs when running in Jupyter."""
    plt.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to tell the inline backend
        return
    if get_ipython() is not None:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")


def panels(ncols: int = 1, nrows: int = 1, height: float | None = None, **kwargs):
    """``(fig, axes)``: a new figure of ``ncols × nrows`` panels of the course's size (``height`` per row)."""
    size = (PANEL[0] * ncols, (height or PANEL[1]) * nrows)
    return plt.subplots(nrows, ncols, figsize=size, dpi=DPI, **kwargs)


def new_axes(ax=None, size=PANEL):
    """``(fig, ax)``: the given axes and its figure, or a fresh figure of ``size`` inches."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, dpi=DPI)
    return fig, ax


def _percent(share: float) -> str:
    """A share in % with two significant digits (0.0039%, 0.34%), and 100% without decimals."""
    return "100%" if share >= 99.95 else f"{share:.2g}%"


def loss_curve(losses, ax=None, title: str = "Training loss", label: str | None = None,
               ylabel: str = "cross-entropy loss"):
    """One value per optimiser step (one objective per axis: give another ``ylabel`` for another quantity)."""
    fig, ax = new_axes(ax)
    ax.plot(range(1, len(losses) + 1), losses, label=label)
    ax.set(xlabel="optimiser step", ylabel=ylabel, title=title)
    if label:
        ax.legend()
    fig.tight_layout()
    return fig


def accuracy_bars(results, skills=None, ax=None, title: str = "Held-out accuracy per skill", colors=None):
    """Grouped bars with their values written above them: ``results`` maps a method name to
    ``{skill: accuracy}`` (e.g. ``tasks.score``'s dict). A bar at 0% still shows its "0".
    ``colors``: one per method, to match another panel (matplotlib's cycle otherwise)."""
    methods = list(results)
    skills = list(skills) if skills is not None else [s for s in results[methods[0]] if s != "mean"]
    fig, ax = new_axes(ax, size=(2 * PANEL[0], PANEL[1]))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(skills))]
        values = [100 * results[method].get(s, float("nan")) for s in skills]
        bars = ax.bar(xs, values, width, label=method, color=None if colors is None else colors[i])
        for x, v in zip(xs, values):
            if v != v:  # NaN: this method has no score for the skill
                continue
            ax.text(x, v + 1, f"{v:.3g}", ha="center", va="bottom", fontsize=7.5, color=bars.patches[0].get_facecolor())
    ax.set_xticks(range(len(skills)), skills)
    ax.set_ylim(0, 112)
    ax.set(ylabel="accuracy (%)", xlabel="skill (held-out prompts)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def heatmap(matrix, row_labels, col_labels, ax=None, title: str = "", xlabel: str = "", ylabel: str = "",
            vmin: float | None = 0.0, vmax: float | None = 1.0, cmap: str = "viridis", fmt: str = "{:.2f}",
            colorbar: str = ""):
    """A labelled heatmap with its values written in the cells and a colorbar."""
    import numpy as np

    m = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    fig, ax = new_axes(ax)
    image = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    long = max(len(str(c)) for c in col_labels) > 6
    ax.set_xticks(range(m.shape[1]), col_labels, rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(m.shape[0]), row_labels)
    lo, hi = (np.nanmin(m) if vmin is None else vmin), (np.nanmax(m) if vmax is None else vmax)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            dark = (m[i, j] - lo) < 0.6 * (hi - lo)
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(image, ax=ax, label=colorbar, pad=0.03)
    fig.tight_layout(w_pad=3.0)  # room between a colourbar's label and the next panel's axis label
    return fig


# ---------------------------------------------------------------- notebooks 01-02


def layer_lines(xs, series: dict, ax=None, title: str = "", xlabel: str = "layer", ylabel: str = "",
                zero_line: bool = False, logy: bool = False):
    """One line with markers per entry of ``series`` (label -> values over ``xs``), e.g. a quantity per layer."""
    fig, ax = new_axes(ax)
    for label, ys in series.items():
        ax.plot(list(xs), [float(y) for y in ys], marker="o", markersize=4, label=label)
    if zero_line:
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def subspace_picture(R, h, edited=None, ax=None, side_ax=None, title: str = "An edit confined to a plane"):
    """The plane spanned by the two orthonormal rows of ``R`` (``[2, 3]``), a vector ``h``, its projection
    ``RᵀR h`` onto the plane, and optionally the edited vector; in 3-D (``ax``) and seen edge-on (``side_ax``).

    The side view sees the plane edge-on, as the horizontal line: each vector is turned about the plane's normal
    into the page, so it keeps its true length (written at its tip) and its true height above the plane, and an
    edit that moves ``h`` parallel to the plane keeps its height. With ``ax=None`` both panels are drawn side by side.
    """
    import numpy as np

    R, h = np.asarray(R, dtype=float), np.asarray(h, dtype=float)
    edited = None if edited is None else np.asarray(edited, dtype=float)
    if ax is None:
        fig = plt.figure(figsize=(2 * PANEL[0], 4.2), dpi=DPI)
        ax, side_ax = fig.add_subplot(1, 2, 1, projection="3d"), fig.add_subplot(1, 2, 2)
    fig = ax.figure
    s = np.linspace(-1.5, 1.5, 2)
    a, b = np.meshgrid(s, s)
    plane = a[..., None] * R[0] + b[..., None] * R[1]
    ax.plot_surface(plane[..., 0], plane[..., 1], plane[..., 2], alpha=0.18, color="tab:blue")
    proj = R.T @ (R @ h)
    arrows = [(h, "tab:grey", "h"), (proj, "tab:blue", "projection RᵀR h")]
    if edited is not None:
        arrows.append((edited, "tab:red", "edited Φ(h)"))
    for vec, color, label in arrows:
        ax.quiver(0, 0, 0, *vec, color=color, linewidth=2, arrow_length_ratio=0.15, label=label)
    ax.plot(*zip(h, proj), color="grey", linestyle=":", linewidth=1)  # h minus its projection: normal to the plane
    if edited is not None:
        ax.plot(*zip(h, edited), color="tab:red", linestyle=":", linewidth=1)
    lim = 1.2 * max(1.0, np.abs(np.stack([v for v, _, _ in arrows])).max())
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_zlim(-lim, lim)
    ticks = [-1, 0, 1]  # few ticks: at matplotlib's default the x₁ labels run together
    ax.set_xticks(ticks), ax.set_yticks(ticks), ax.set_zticks(ticks)
    ax.tick_params(labelsize=8)
    ax.set_xlabel("x₁"), ax.set_ylabel("x₂"), ax.set_zlabel("x₃")
    ax.view_init(elev=30, azim=215)  # h, its projection and Φ(h) all seen nearly at full length (the default looked down h)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(arrows), frameon=False)
    if side_ax is not None:
        _side_view(side_ax, R, arrows, h, edited)
    fig.tight_layout()
    return fig


def _side_view(ax, R, arrows, h, edited):
    """The 3-D picture with the plane seen edge-on. A vector v is drawn at (‖RᵀR v‖, n·v): the length of its part in
    the plane and its height above it (n the plane's unit normal). That turns v about n into the page, which keeps
    its length and height true; only the direction within the plane is lost."""
    import numpy as np

    normal = np.cross(R[0], R[1])
    normal /= np.linalg.norm(normal)

    def point(v):
        return np.linalg.norm(R.T @ (R @ v)), v @ normal

    ax.axhline(0.0, color="tab:blue", alpha=0.4, linewidth=4, label="the plane, seen edge-on")
    for vec, color, _ in arrows:
        x, y = point(vec)
        ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=color, lw=2, shrinkA=0, shrinkB=0))
        ax.annotate(f"{np.linalg.norm(vec):.2f}", (x, y), xytext=(4, -13 if y < 1e-6 else 2), textcoords="offset points",
                    color=color, fontsize=8.5)
    ax.plot([point(h)[0]] * 2, [point(h)[1], 0], color="grey", linestyle=":", linewidth=1)  # h minus its projection
    if edited is not None:
        ax.axhline(point(h)[1], color="tab:red", linestyle=":", linewidth=1)  # Φ(h) stays at the height of h
    xs, ys = zip(*(point(v) for v, _, _ in arrows))
    ax.set_xlim(-0.15, 1.25 * max(max(xs), 0.5)), ax.set_ylim(min(-0.3, 1.25 * min(ys)), max(0.3, 1.25 * max(ys)))
    ax.set_aspect("equal")  # one unit is as long across as up: the drawn lengths are the true ones
    ax.set(xlabel="length of each arrow's part in the plane", ylabel="distance from the plane",
           title="Side view: true lengths and heights")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)


def parameter_dots(models: dict, title: str = "Trainable parameters"):
    """One dot per method on one shared log scale, one panel per model: ``models`` maps a model name to
    ``(total parameters, {method: trainable parameters})``; each dot is labelled with its count and share.
    Dots, not bars: on a log axis a bar's length depends on where the axis starts, so it would mean nothing."""
    import numpy as np

    rows = [len(counts) for _, counts in models.values()]
    fig, axes = plt.subplots(len(models), 1, figsize=(2 * PANEL[0], 0.45 * sum(rows) + 1.3 * len(models)), dpi=DPI,
                             sharex=True, height_ratios=rows, squeeze=False)
    values = [v for _, counts in models.values() for v in counts.values()]
    lo, hi = min(values) / 2, max(values) * 3
    span = np.log10(hi) - np.log10(lo)
    for ax, (name, (total, counts)) in zip(axes[:, 0], models.items()):
        names = list(counts)
        ax.plot([counts[n] for n in names], range(len(names)), "o", color="tab:blue", markersize=7)
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.5)  # the first method on top
        for i, n in enumerate(names):
            note = f"{counts[n]:,}  ({_percent(100 * counts[n] / total)})"
            left = (np.log10(counts[n]) - np.log10(lo)) / span > 0.6  # near the right edge: the label goes left
            ax.annotate(note, (counts[n], i), xytext=(-8 if left else 8, 0), textcoords="offset points", va="center",
                        ha="right" if left else "left", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{name}: {total:,} parameters", fontsize=10, loc="left")
    axes[-1, 0].set_xscale("log")
    axes[-1, 0].set_xlim(lo, hi)
    axes[-1, 0].set_xlabel("trainable parameters (log scale)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- notebooks 03-04


def forgetting_curves(curves: dict, switch: int, ax=None, title: str = "Does learning B erase A?",
                      ylabel: str = "held-out loss on skill A", phases: tuple[str, str] = ("learn A", "learn B")):
    """One skill's held-out loss as training goes, for several models; a dashed line where training switches skills.

    ``curves``: ``{name: [(step, value), ...]}``; ``switch``: the optimiser step where the second skill's training starts.
    """
    fig, ax = new_axes(ax, size=(2 * PANEL[0], PANEL[1]))
    for name, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.axvline(switch, color="grey", linestyle="--", linewidth=1)
    box = dict(facecolor="white", edgecolor="none", pad=1.5)  # no gridline runs through the phase's name
    for x, phase in ((switch / 2, phases[0]), (switch * 1.5, phases[1])):
        ax.text(x, 0.97, phase, ha="center", va="top", fontsize=9, color="grey", bbox=box, transform=ax.get_xaxis_transform())
    ax.set(xlabel="optimiser step", ylabel=ylabel, title=title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def token_norms(prompts: dict, title: str = "Hidden-state norm at each prompt token"):
    """One panel per prompt: ``‖h‖`` at each of its tokens on a log scale, its instruction's tokens shaded.

    ``prompts``: ``{name: (tokens, norms, (start, end))}``. Returns the figure.
    """
    from matplotlib.ticker import LogLocator, NullLocator, StrMethodFormatter

    fig, axes = plt.subplots(len(prompts), 1, figsize=(2 * PANEL[0], 2.3 * len(prompts) + 0.4), dpi=DPI,
                             sharey=True, squeeze=False)
    for ax, (name, (tokens, norms, span)) in zip(axes[:, 0], prompts.items()):
        ax.plot(range(len(norms)), norms, marker="o", markersize=4)
        ax.axvspan(span[0] - 0.5, span[1] - 0.5, color="tab:green", alpha=0.12, label="instruction tokens")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))  # 10, 30, 100, 300, 1000: plain numbers
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=8.5, rotation=45, ha="right")
        ax.set_xlim(-0.6, len(tokens) - 0.4)
        ax.set_ylabel("‖h‖")
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
    every = [n for _, norms, _ in prompts.values() for n in norms]
    axes[0, 0].set_ylim(min(every) / 1.5, max(every) * 1.5)  # room for the next tick above the longest token
    axes[0, 0].legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
