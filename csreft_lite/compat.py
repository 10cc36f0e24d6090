"""The core's version shims: where transformers 4.x and 5.x differ for hooks and checkpointing, in one room.
Each says which version needs it and when it can go; the core never asks for a version itself. CI runs transformers
4.45.1, 4.57.6 and 5.x (README, "Tested versions"). The course model's loader keeps its own (models.py), the
AlpacaEval scoring its one (evaluate.py)."""

from __future__ import annotations

from contextlib import nullcontext
from contextvars import ContextVar

import torch
from torch import nn


# ---------------------------------------------------------------- decoder layers and checkpointing


def hidden_of(output) -> torch.Tensor:
    """The hidden states in a decoder layer's output. 4.x layers return a tuple, 5.x a tensor (goes with 4.x)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_hidden(output, hidden: torch.Tensor):
    """The same decoder-layer output with its hidden states replaced (tuple in 4.x, tensor in 5.x)."""
    return (hidden, *output[1:]) if isinstance(output, (tuple, list)) else hidden


def is_checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing is on. 5.x renamed ``is_gradient_checkpointing`` (goes with 4.x)."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


# The hooks of the ReftModel call under way, as a function that returns them as a context manager (None: no call).
UNDER_WAY: ContextVar = ContextVar("csreft_call_under_way", default=None)


def recompute_context() -> tuple:
    """``torch.utils.checkpoint``'s ``context_fn``: a layer recomputed in the backward pass runs under the hooks of the
    call that ran it first, taken when it ran. 4.x checkpoints a layer's ``__call__``, forward hooks included, so its
    backward re-runs them, long after that call took its hooks off; 5.x checkpoints ``forward`` only (goes with 4.x)."""
    hooks = UNDER_WAY.get()
    return nullcontext(), (nullcontext() if hooks is None else hooks())


def set_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Activation (gradient) checkpointing on or off, non-reentrant (so gradients reach interventions whose inputs need
    none) with ``recompute_context``; transformers checkpoints only in training mode. 5.x renamed
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` and warns on the old name (goes with 4.x)."""
    new = hasattr(model, "activation_checkpointing_enable")
    kwargs = {"use_reentrant": False, "context_fn": recompute_context}
    if enabled and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif new:
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()

