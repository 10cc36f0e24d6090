"""Controls for what CS-ReFT's orthogonal subspaces buy: the same gated edit without mutual orthogonality (``SeparateBases``)
or with the subspaces forced to coincide (``SharedBasis``).

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


class SharedBasis(CSReFT):
    """k gated edits in one shared subspace, each with its own ``Wᵢ`` and ``bᵢ``: overlap forced to its maximum.

    Random rank-4 bases in 576 dimensions barely overlap (``SeparateBases``), so the control for orthogonality is the
    opposite extreme: every ``Rᵢ`` is subspace 0's basis, and every skill writes the same coordinates. The basis belongs
    to subspace 0 (frozen with it); the other ``R_raw_i`` are kept only so that the layout is ``CSReFT``'s, never trained.
    """

    def __init__(self, d_model: int, rank: int = 4, n_subspaces: int = 2):
        super().__init__(d_model, rank, n_subspaces)
        for i in range(1, n_subspaces):
            self._share_basis(i)

    def _share_basis(self, i: int) -> None:
        """Subspace i uses subspace 0's basis: its own raw basis stops training, its ``W`` starts there (edit zero)."""
        R_raw, W, _ = self.subspace(i)
        R_raw.requires_grad_(False)
        with torch.no_grad():
            W.copy_(self.R[i])

    def add_subspace(self) -> int:
        k = super().add_subspace()
        self._share_basis(k)
        return k

    @property
    def R(self) -> torch.Tensor:
        """Subspace 0's orthonormal basis for every subspace, ``[k, rank, d]``."""
        return orthonormal_rows(self._stacked(0)[0]).expand(self.n_subspaces, -1, -1)
