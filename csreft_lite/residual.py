"""Reading and steering the residual stream by hand, with no ``ReftModel`` (notebook 01): ``record`` keeps the hidden
states after chosen layers, ``add_vector`` adds a steering vector there, through ``hooks.hook_layers`` as ``ReftModel``."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .architecture import decoder_layers, hidden_size
from .hooks import hook_layers
from .validate import check_layers


@contextmanager
def edit_layers(model: nn.Module, edits: dict[int, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """``hook_layers`` while inside the block."""
    handles = hook_layers(model, edits)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream after each chosen layer: ``with record(model, [3, 9]) as states: model(**batch)``
    leaves ``states[3]``, ``[batch, seq, d]``."""
    states: dict[int, torch.Tensor] = {}

    def keep(h: torch.Tensor, layer: int) -> torch.Tensor:
        states[layer] = h.detach()
        return h

    with edit_layers(model, {layer: partial(keep, layer=layer) for layer in check_layers(len(decoder_layers(model)), list(layers))}):
        yield states


@contextmanager
def add_vector(model: nn.Module, layer: int, vector: torch.Tensor, scale: float = 1.0,
               positions: slice | None = None) -> Iterator[None]:
    """Add ``scale * vector`` to the residual stream after ``layer`` (a steering vector), at every position
    (generated tokens included) or at the slice ``positions`` of the sequence."""
    d = hidden_size(model)
    if vector.shape != (d,):
        raise ValueError(f"The steering vector must have shape ({d},) for this model, got {tuple(vector.shape)}.")

    def steer(h: torch.Tensor) -> torch.Tensor:
        added = (scale * vector).to(device=h.device, dtype=h.dtype)
        if positions is None:
            return h + added
        h = h.clone()
        h[:, positions] += added
        return h

    with edit_layers(model, {layer: steer}):
        yield
