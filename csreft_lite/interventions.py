"""Interventions: small modules that edit hidden states ``h [..., d]``; they know tensors, not models.

- ``LoReFT``  (Wu et al., 2024):  Φ(h) = h + Rᵀ(W h + b − R h),  R Rᵀ = I.
- ``DiReFT``  (its ablation):     Φ(h) = h + W₂ᵀ(W₁ h + b).
- ``CSReFT``  (Zhou, 2025):       Φ(h) = h + Σᵢ gᵢ · Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h), gates g from a ``routing.Router``.

``ReftModel`` decides where they act and hands each the hidden states it edits, ``[batch, n_positions, d]``.
Parameters stay float32 under a bf16/fp16 model: the edit is computed in float32 and cast back, which keeps
the orthonormal basis accurate and training stable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .validate import check_input, check_sizes


def orthonormal_rows(raw: torch.Tensor) -> torch.Tensor:
    """Map any full-rank ``[r, d]`` matrix (r ≤ d) to one with orthonormal rows.

    The Q factor of a reduced QR decomposition of ``rawᵀ``, signs fixed so that the map is smooth.
    Why QR rather than ``torch.nn.utils.parametrizations.orthogonal``: QR is scale-invariant
    (``Q(c·A) = Q(A)`` for c > 0), so AdamW's weight decay, which shrinks the raw parameter, cannot
    collapse ``R``; it costs O(d r²); it works for any r ≤ d. Float32 (QR has no bf16 kernel).
    """
    q, r = torch.linalg.qr(raw.float().T)  # q: [d, r], r: [r, r]
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs).T  # [r, d], R Rᵀ = I


class LoReFT(nn.Module):
    """Low-rank Linear Subspace ReFT: ``Φ(h) = h + Rᵀ(W h + b − R h)``.

    ``Rᵀ R`` projects onto the r-dimensional subspace spanned by the orthonormal rows of ``R``: the
    edit replaces the coordinates ``R h`` by the learned ``W h + b`` and leaves the rest of ``h``
    alone. ``W`` starts at ``R`` and ``b`` at 0, so the edit starts at exactly zero and training starts
    from the frozen model's behaviour (pyreft starts from a random ``W``).
    """

    def __init__(self, d_model: int, rank: int = 4):
        super().__init__()
        check_sizes("LoReFT", d_model=d_model, rank=rank)
        self.d_model, self.rank = d_model, rank
        raw = torch.empty(rank, d_model)
        nn.init.orthogonal_(raw)
        self.R_raw = nn.Parameter(raw)  # R = orthonormal_rows(R_raw)
        self.W = nn.Parameter(orthonormal_rows(raw).clone())  # [rank, d]
        self.b = nn.Parameter(torch.zeros(rank))

    @property
    def R(self) -> torch.Tensor:
        """The current orthonormal basis, ``[rank, d]``."""
        return orthonormal_rows(self.R_raw)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_input(h, self.d_model, "LoReFT")
        R = self.R
        x = h.to(R.dtype)
        delta = (x @ self.W.T + self.b - x @ R.T) @ R  # [..., rank] -> [..., d]
        return (x + delta).to(h.dtype)

    def config(self) -> dict:
        return {"d_model": self.d_model, "rank": self.rank}


class DiReFT(nn.Module):
    """Direct ReFT, the ablation without orthogonality or subtraction: ``h + W₂ᵀ(W₁ h + b)``.

    ``W₂`` starts at zero (as LoRA's B), so the edit starts at exactly zero.
    """

    def __init__(self, d_model: int, rank: int = 4):
        super().__init__()
        check_sizes("DiReFT", d_model=d_model, rank=rank)
        self.d_model, self.rank = d_model, rank
        self.W1 = nn.Parameter(torch.empty(rank, d_model))
        nn.init.kaiming_uniform_(self.W1, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(rank))
        self.W2 = nn.Parameter(torch.zeros(rank, d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_input(h, self.d_model, "DiReFT")
        x = h.to(self.W1.dtype)
        return (x + (x @ self.W1.T + self.b) @ self.W2).to(h.dtype)

    def config(self) -> dict:
        return {"d_model": self.d_model, "rank": self.rank}


class CSReFT(nn.Module):
    """Compositional Subspace ReFT: k LoReFT-style edits, each scaled by its gate.

    ``Φ(h) = h + Σᵢ gᵢ · Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h)``, with gates ``g`` (``[batch, k]``, one vector per example,
    shared by its positions) from outside: inside a ``ReftModel`` its one ``Router`` gates every layer,
    as in the paper (ρ = Router(x)); on tensors, pass ``gates=`` yourself.

    Where the paper is silent: the stacked ``[k·r, d]`` basis is orthonormalised as a whole, so the
    subspaces are also mutually orthogonal (``Rᵢ Rⱼᵀ = 0``) and no skill's edit writes into another's.
    """

    def __init__(self, d_model: int, rank: int = 4, n_subspaces: int = 4):
        super().__init__()
        check_sizes("CSReFT", n_subspaces, d_model=d_model, rank=rank)
        self.d_model, self.rank, self.n_subspaces = d_model, rank, n_subspaces
        raw = torch.empty(n_subspaces * rank, d_model)
        nn.init.orthogonal_(raw)
        self.R_raw = nn.Parameter(raw)  # all k bases stacked, orthonormalised together
        self.W = nn.Parameter(orthonormal_rows(raw).clone().view(n_subspaces, rank, d_model))
        self.b = nn.Parameter(torch.zeros(n_subspaces, rank))
        self.register_buffer("frozen", torch.zeros(n_subspaces, dtype=torch.bool), persistent=False)

    def freeze_subspaces(self, *indices: int) -> None:
        """Stop training these subspaces (e.g. a skill learned earlier) while the others go on learning.

        Gates alone do not protect a subspace: the bases are orthonormalised together, so training
        subspace j also moves the raw rows of every subspace before it. Frozen subspaces enter the
        computation detached, so no gradient reaches their ``R``, ``W`` or ``b``.
        """
        for i in indices:
            if not 0 <= i < self.n_subspaces:
                raise ValueError(f"This CSReFT has subspaces 0 to {self.n_subspaces - 1}; cannot freeze {i}.")
            self.frozen[i] = True

    def _trainable_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``R_raw, W, b`` with the rows of frozen subspaces detached."""
        if not bool(self.frozen.any()):
            return self.R_raw, self.W, self.b
        rows = self.frozen.repeat_interleave(self.rank)[:, None]  # [k·r, 1]
        keep = self.frozen[:, None]  # [k, 1]
        return (torch.where(rows, self.R_raw.detach(), self.R_raw),
                torch.where(keep[..., None], self.W.detach(), self.W),
                torch.where(keep, self.b.detach(), self.b))

    @property
    def R(self) -> torch.Tensor:
        """The k orthonormal bases, ``[k, rank, d]``; all k·rank rows are orthonormal."""
        return orthonormal_rows(self._trainable_view()[0]).view(self.n_subspaces, self.rank, self.d_model)

    def forward(self, h: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        """``h``: ``[batch, n, d]``, or ``[n, d]`` with one example per row; ``gates``: ``[batch, k]`` or ``[k]`` for all."""
        check_input(h, self.d_model, "CSReFT")
        if gates is None:
            raise ValueError("CSReFT needs gates, one per example and subspace ([batch, k]): inside a ReftModel its Router "
                             "gives them (or reft.force_gates(...)); on tensors, call cs(h, gates=g).")
        R_raw, W, b = self._trainable_view()
        R = orthonormal_rows(R_raw).view(self.n_subspaces, self.rank, self.d_model)  # [k, r, d]
        x = h.to(R.dtype)
        n = x.shape[0]
        g = gates.to(device=x.device, dtype=R.dtype).reshape(-1, gates.shape[-1])  # [n or 1, k]
        if g.shape[1] != self.n_subspaces or g.shape[0] not in (1, n):
            raise ValueError(f"CSReFT has {self.n_subspaces} subspaces and got {n} examples, but gates of shape "
                             f"{tuple(gates.shape)}; pass [{n}, {self.n_subspaces}] (or [{self.n_subspaces}] for all).")
        g = g.expand(n, -1)
        z = torch.einsum("...d,krd->...kr", x, W - R) + b  # [..., k, r]: Wᵢh + bᵢ − Rᵢh
        scale = g[:, :, None] if x.dim() == 2 else g[:, None, :, None]  # [n, k, 1] or [batch, 1, k, 1]
        delta = torch.einsum("...kr,krd->...d", z * scale, R)
        return (x + delta).to(h.dtype)

    def config(self) -> dict:
        return {"d_model": self.d_model, "rank": self.rank, "n_subspaces": self.n_subspaces}
