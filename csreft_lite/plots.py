"""Matplotlib figures shared by the notebooks.

Every helper takes ``ax=None`` (draws a new small figure when absent), labels its axes and
title, and returns the figure, so notebooks stay short and pictures look alike.
"""

from __future__ import annotations

import matplotlib.pyplot as plt


def new_axes(ax=None, size=(5.5, 3.5)):
    """``(fig, ax)``: the given axes and its figure, or a fresh small figure."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, dpi=100)
    return fig, ax


def loss_curve(losses, ax=None, title: str = "Training loss", label: str | None = None):
    """Loss per optimiser step."""
    fig, ax = new_axes(ax)
    ax.plot(range(1, len(losses) + 1), losses, label=label)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    if label:
        ax.legend()
    fig.tight_layout()
    return fig


def accuracy_bars(results, skills=None, ax=None, title: str = "Held-out accuracy per skill"):
    """Grouped bars: ``results`` maps a method name to ``{skill: accuracy}`` (e.g. ``skill_accuracy``'s dict)."""
    methods = list(results)
    skills = list(skills) if skills is not None else [s for s in results[methods[0]] if s != "mean"]
    fig, ax = new_axes(ax, size=(max(7.0, 1.8 * len(skills) + 2.0), 4.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(skills))]
        ax.bar(xs, [100 * results[method].get(s, float("nan")) for s in skills], width, label=method)
    ax.set_xticks(range(len(skills)))
    ax.set_xticklabels(skills)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("skill (held-out prompts)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.tight_layout()
    return fig


def heatmap(matrix, row_labels, col_labels, ax=None, title: str = "", xlabel: str = "", ylabel: str = "",
            vmin: float | None = 0.0, vmax: float | None = 1.0, cmap: str = "viridis", fmt: str = "{:.2f}",
            colorbar: str = ""):
    """A labelled heatmap with its values written in the cells and a colorbar."""
    import numpy as np

    m = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    fig, ax = new_axes(ax, size=(1.0 * m.shape[1] + 2.8, 0.6 * m.shape[0] + 1.8))
    image = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(m.shape[1]))
    ax.set_xticklabels(col_labels, rotation=30 if max(len(str(c)) for c in col_labels) > 6 else 0, ha="right" if max(len(str(c)) for c in col_labels) > 6 else "center")
    ax.set_yticks(range(m.shape[0]))
    ax.set_yticklabels(row_labels)
    lo, hi = (np.nanmin(m) if vmin is None else vmin), (np.nanmax(m) if vmax is None else vmax)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            dark = (m[i, j] - lo) < 0.6 * (hi - lo)
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar)
    fig.tight_layout()
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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def subspace_picture(R, h, edited=None, ax=None, title: str = "An edit confined to a plane"):
    """3-D picture: the plane spanned by the two orthonormal rows of ``R`` (``[2, 3]``), a vector ``h``,
    its projection ``RᵀR h`` onto the plane, and optionally the edited vector."""
    import numpy as np

    R, h = np.asarray(R, dtype=float), np.asarray(h, dtype=float)
    if ax is None:
        fig = plt.figure(figsize=(5.5, 4.5), dpi=100)
        ax = fig.add_subplot(projection="3d")
    fig = ax.figure
    s = np.linspace(-1.5, 1.5, 2)
    a, b = np.meshgrid(s, s)
    plane = a[..., None] * R[0] + b[..., None] * R[1]
    ax.plot_surface(plane[..., 0], plane[..., 1], plane[..., 2], alpha=0.18, color="tab:blue")
    proj = R.T @ (R @ h)
    arrows = [(h, "tab:grey", "h"), (proj, "tab:blue", "projection RᵀR h")]
    if edited is not None:
        arrows.append((np.asarray(edited, dtype=float), "tab:red", "edited Φ(h)"))
    for vec, color, label in arrows:
        ax.quiver(0, 0, 0, *vec, color=color, linewidth=2, arrow_length_ratio=0.08, label=label)
    ax.plot(*zip(h, proj), color="grey", linestyle=":", linewidth=1)  # h minus its projection: normal to the plane
    if edited is not None:
        ax.plot(*zip(h, edited), color="tab:red", linestyle=":", linewidth=1)
    lim = 1.2 * max(1.0, np.abs(np.stack([v for v, _, _ in arrows])).max())
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_zlim(-lim, lim)
    ax.set_xlabel("x₁"), ax.set_ylabel("x₂"), ax.set_zlabel("x₃")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig


def parameter_bars(counts: dict, ax=None, title: str = "Trainable parameters", total: int | None = None):
    """Horizontal bars on a log scale: method -> trainable parameter count (with % of ``total`` if given)."""
    names = list(counts)
    fig, ax = new_axes(ax, size=(6.5, 0.55 * len(names) + 1.4))
    values = [counts[n] for n in names]
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for i, v in enumerate(values):
        note = f"{v:,}" + (f"  ({100 * v / total:.4f}%)" if total else "")
        ax.text(v, i, " " + note, va="center", fontsize=9)
    ax.set_xlim(min(values) / 3, max(values) * 300)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def forgetting_curves(curves: dict, switch: int, ax=None, title: str = "Does learning B erase A?",
                      ylabel: str = "held-out loss on skill A", phases: tuple[str, str] = ("learn A", "learn B")):
    """One skill's held-out loss as training goes, for several models; a dashed line where training switches skills.

    ``curves``: ``{name: (steps, values)}``; ``switch``: the optimiser step where the second skill's training starts.
    """
    fig, ax = new_axes(ax, size=(6.5, 3.5))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.axvline(switch, color="grey", linestyle="--", linewidth=1)
    top = ax.get_ylim()[1]
    ax.text(switch / 2, top, phases[0], ha="center", va="top", fontsize=9, color="grey")
    ax.text(switch * 1.5, top, phases[1], ha="center", va="top", fontsize=9, color="grey")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def token_norms(prompts: dict, title: str = "Hidden-state norm at each prompt token"):
    """One small panel per prompt: ``‖h‖`` at each of its tokens on a log scale, its instruction's tokens shaded.

    ``prompts``: ``{name: (tokens, norms, (start, end))}``. Returns the figure.
    """
    fig, axes = plt.subplots(len(prompts), 1, figsize=(8, 1.9 * len(prompts)), dpi=100, sharey=True, squeeze=False)
    for ax, (name, (tokens, norms, span)) in zip(axes[:, 0], prompts.items()):
        ax.plot(range(len(norms)), norms, marker="o", markersize=3)
        ax.axvspan(span[0] - 0.5, span[1] - 0.5, color="tab:green", alpha=0.12, label="instruction tokens")
        ax.set_yscale("log")
        ax.set_xticks(range(len(tokens)), [t.replace("\n", "\\n") for t in tokens], fontsize=7, rotation=40, ha="right")
        ax.set_ylabel("‖h‖")
        ax.set_title(name, fontsize=9, loc="left")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
