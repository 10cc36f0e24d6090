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
