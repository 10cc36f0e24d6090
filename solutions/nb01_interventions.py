"""Reference answers for notebook 01, hidden-state interventions.

Try the exercises in the notebook first: ``checks.check_record_hidden(record_hidden)`` and
friends compare your function with these and say what differs.
"""

from __future__ import annotations

import torch
from torch import nn

from csreft_lite.hooks import hidden_of
from csreft_lite.models import decoder_layers


def record_hidden(model: nn.Module, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``input_ids`` and return the residual stream after decoder layer ``layer``,
    ``[batch, seq, d]``, read with a forward hook that is removed afterwards."""
    store = {}

    def hook(module, args, output):
        store["h"] = hidden_of(output).detach()  # tuple in transformers 4.x, tensor in 5

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        handle.remove()  # a forgotten hook keeps firing on every later call
    return store["h"]


def steer(h: torch.Tensor, vector: torch.Tensor, scale: float, positions: slice | None = None) -> torch.Tensor:
    """``h [batch, seq, d]`` with ``scale * vector`` added at ``positions`` (every position when None).

    Returns a new tensor; ``h`` itself is left unchanged."""
    if positions is None:
        return h + scale * vector
    out = h.clone()
    out[:, positions] += scale * vector
    return out


def difference_of_means(states_a: torch.Tensor, states_b: torch.Tensor) -> torch.Tensor:
    """The steering vector from ``states_a [n_a, d]`` towards which ``states_b [n_b, d]`` point away:
    mean of A minus mean of B, ``[d]``."""
    return states_a.mean(dim=0) - states_b.mean(dim=0)


def logit_lens(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[..., vocab]`` the model would give if its residual stream stopped at ``h`` (``[..., d]``):
    the model's final norm, then its output layer, exactly what follows the last decoder layer."""
    return model.lm_head(model.model.norm(h))
