"""Controls for what CS-ReFT's orthogonal subspaces buy: the same gated edit without mutual orthogonality.

``SeparateBases(d, rank, k)`` is ``CSReFT``'s edit with the same parameters, but each basis ``Rᵢ`` is orthonormalised
on its own, not against the others: k separate LoReFT edits whose subspaces may overlap (two random ones by about
√(r/d)), so training one never reaches another's parameters (in ``CSReFT`` it does, through the shared QR). Gates and
exact freezing are ``CSReFT``'s. Bench and notebook 03 use it to tell what orthogonality buys from what the rest buys.
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
