"""Controls for what CS-ReFT's orthogonal subspaces buy: the same gated edit without mutual orthogonality.

``SeparateBases(d, rank, k)`` is ``CSReFT``'s edit, ``h + Σᵢ gᵢ Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h)``, with the same parameters,
but each basis ``Rᵢ`` is orthonormalised on its own (``Rᵢ Rᵢᵀ = I``), not against the others, and starts at its own
random draw: k separate LoReFT edits whose subspaces may overlap (two random ones by about √(r/d)). Training one
subspace therefore never reaches another's parameters (in ``CSReFT`` it does, through the shared QR). Gating and
exact freezing are ``CSReFT``'s own (``freeze_subspaces``, ``force_gates``, gates carried by training records).
Bench and notebook 03 use it to separate what orthogonality buys from what separate parameters, gates and freezing buy.
"""

from __future__ import annotations

import torch
from torch import nn

from .interventions import CSReFT, orthonormal_rows


class SeparateBases(CSReFT):
    """k gated LoReFT edits with independent bases: ``CSReFT`` without the orthogonality between subspaces."""

    def __init__(self, d_model: int, rank: int = 4, n_subspaces: int = 2):
        super().__init__(d_model, rank, n_subspaces)
        with torch.no_grad():
            for i in range(n_subspaces):  # each basis its own random draw, not a block of one orthonormal stack
                R_raw, W, _ = self.subspace(i)
                R_raw.copy_(nn.init.orthogonal_(torch.empty(rank, d_model)))
                W.copy_(orthonormal_rows(R_raw))  # W starts at R: the edit starts at zero

    @property
    def R(self) -> torch.Tensor:
        """The k bases, ``[k, rank, d]``: rows orthonormal within a basis, not across bases."""
        return torch.stack([orthonormal_rows(raw) for raw in self._stacked(0)])
