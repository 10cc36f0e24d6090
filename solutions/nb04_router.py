"""Reference answers for notebook 04 (the router). Try the exercises first."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gated_edit(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """CS-ReFT's edit ``h + Σᵢ gᵢ · Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h)`` for n hidden states.

    h: ``[n, d]``; R, W: ``[k, r, d]``; b: ``[k, r]``; g: ``[n, k]`` (one gate per example and subspace).
    """
    z = torch.einsum("nd,krd->nkr", h, W - R) + b  # [n, k, r]: Wᵢh + bᵢ − Rᵢh
    return h + torch.einsum("nkr,krd->nd", z * g.unsqueeze(-1), R)  # [n, d]


def router_gates(h: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Gates ``[batch, k]`` from the hidden states ``h`` (``[batch, n, d]``) at the edited positions.

    1. summary: the mean of ``h`` over the positions where ``mask`` (``[batch, n]``, bool) is True;
    2. layer norm without learned scale or shift (``F.layer_norm(x, (d,))``);
    3. a linear map (``weight`` ``[k, d]``, ``bias`` ``[k]``), then a sigmoid.
    """
    m = mask.to(h.dtype).unsqueeze(-1)  # [batch, n, 1]
    summary = (h * m).sum(1) / m.sum(1).clamp(min=1)  # [batch, d]
    x = F.layer_norm(summary, (h.shape[-1],))
    return torch.sigmoid(x @ weight.T + bias)


def sparsity_penalty(gates: torch.Tensor, lam: float) -> torch.Tensor:
    """``λ · Ω(g)`` with Ω the mean over examples of Σᵢ gᵢ (an L1 penalty; gates are ≥ 0).

    gates: ``[batch, k]``. Returns a scalar tensor.
    """
    return lam * gates.sum(-1).mean()
