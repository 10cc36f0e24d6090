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

    def extra_repr(self) -> str:
        return f"rank {self.rank}"


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

    def extra_repr(self) -> str:
        return f"rank {self.rank}"


class CSReFT(nn.Module):
    """Compositional Subspace ReFT: k LoReFT-style edits, each scaled by its gate.

    ``Φ(h) = h + Σᵢ gᵢ · Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h)``, with gates ``g`` (``[batch, k]``, one vector per example,
    shared by its positions) from outside: inside a ``ReftModel`` its one ``Router`` gates every layer,
    as in the paper (ρ = Router(x)); on tensors, pass ``gates=`` yourself.

    Where the paper is silent: the stacked ``[k·r, d]`` basis is orthonormalised as a whole, so the
    subspaces are also mutually orthogonal (``Rᵢ Rⱼᵀ = 0``) and no skill's edit writes into another's.
    Each subspace owns its parameters (``R_raw_i``, ``W_i``, ``b_i``), so one can be frozen exactly.
    """

    def __init__(self, d_model: int, rank: int = 4, n_subspaces: int = 4, frozen: "tuple[int, ...] | list[int]" = ()):
        super().__init__()
        check_sizes("CSReFT", n_subspaces, d_model=d_model, rank=rank)
        self.d_model, self.rank, self.n_subspaces = d_model, rank, n_subspaces
        raw = torch.empty(n_subspaces * rank, d_model)
        nn.init.orthogonal_(raw)
        W = orthonormal_rows(raw).view(n_subspaces, rank, d_model)  # W starts at R: every edit starts at zero
        for i in range(n_subspaces):
            self.register_parameter(f"R_raw_{i}", nn.Parameter(raw[i * rank:(i + 1) * rank].clone()))
            self.register_parameter(f"W_{i}", nn.Parameter(W[i].clone()))
            self.register_parameter(f"b_{i}", nn.Parameter(torch.zeros(rank)))
        self.frozen: tuple[int, ...] = ()
        self.freeze_subspaces(*frozen)

    def subspace(self, i: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """Subspace ``i``'s own parameters ``(R_raw_i [r, d], W_i [r, d], b_i [r])``."""
        return getattr(self, f"R_raw_{i}"), getattr(self, f"W_{i}"), getattr(self, f"b_{i}")

    def freeze_subspaces(self, *indices: int) -> None:
        """Stop training these subspaces (e.g. a skill learned earlier), exactly, while the others go on learning.

        Their ``R``, ``W`` and ``b`` stay bit for bit whatever the optimiser does (weight decay, earlier moments): they
        stop requiring gradients and enter every pass detached. As the bases are orthonormalised together (QR turns each
        row against those before it), frozen bases go first, their rows replaced by the basis they already span (nothing
        moves now). A checkpoint keeps the frozen indices (``frozen``).
        """
        for i in indices:
            if not isinstance(i, int) or not 0 <= i < self.n_subspaces:
                raise ValueError(f"This CSReFT has subspaces 0 to {self.n_subspaces - 1}; cannot freeze {i!r}.")
        frozen = tuple(sorted(set(self.frozen) | set(indices)))
        if self._order(frozen) != self._order(self.frozen):
            with torch.no_grad():
                R = self.R
                for i in frozen:
                    self.subspace(i)[0].copy_(R[i])
        self.frozen = frozen
        for i in frozen:
            for p in self.subspace(i):
                p.requires_grad_(False)
                p.grad = None

    def add_subspace(self) -> int:
        """Grow by one subspace for a new skill, every earlier one frozen (``freeze_subspaces``); returns its index.

        Its basis is a fresh random draw, orthonormalised after the frozen ones (``R``: they go first), so it is orthogonal
        to them and they do not move; its ``W`` starts at its basis, so the new edit starts at exactly zero.
        """
        k = self.n_subspaces
        check_sizes(type(self).__name__, k + 1, d_model=self.d_model, rank=self.rank)
        self.freeze_subspaces(*range(k))
        like = self.subspace(0)[0]
        raw = nn.init.orthogonal_(torch.empty(self.rank, self.d_model)).to(like.device)
        self.register_parameter(f"R_raw_{k}", nn.Parameter(raw))
        self.register_parameter(f"W_{k}", nn.Parameter(torch.zeros_like(raw)))
        self.register_parameter(f"b_{k}", nn.Parameter(torch.zeros(self.rank, device=like.device)))
        self.n_subspaces = k + 1
        with torch.no_grad():
            self.subspace(k)[1].copy_(self.R[k])
        return k

    def _order(self, frozen: tuple[int, ...]) -> list[int]:
        """The order in which the bases are orthonormalised: frozen ones first, each group by index."""
        return list(frozen) + [i for i in range(self.n_subspaces) if i not in frozen]

    def _stacked(self, n: int) -> torch.Tensor:
        """Parameter ``n`` (0: R_raw, 1: W, 2: b) of every subspace, stacked; frozen ones detached."""
        parts = [self.subspace(i)[n] for i in range(self.n_subspaces)]
        return torch.stack([p.detach() if i in self.frozen else p for i, p in enumerate(parts)])

    @property
    def R(self) -> torch.Tensor:
        """The k orthonormal bases, ``[k, rank, d]``; all k·rank rows are orthonormal."""
        order = self._order(self.frozen)
        raw = self._stacked(0)[order].reshape(-1, self.d_model)
        R = orthonormal_rows(raw).view(self.n_subspaces, self.rank, self.d_model)
        return R[torch.tensor(order).argsort()] if order != sorted(order) else R

    @property
    def W(self) -> torch.Tensor:
        """The k ``W`` matrices, ``[k, rank, d]`` (a stacked copy: change ``subspace(i)`` to change one)."""
        return self._stacked(1)

    @property
    def b(self) -> torch.Tensor:
        """The k offsets, ``[k, rank]`` (a stacked copy)."""
        return self._stacked(2)

    def forward(self, h: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        """``h``: ``[batch, n, d]``, or ``[n, d]`` with one example per row; ``gates``: ``[batch, k]`` or ``[k]`` for all."""
        check_input(h, self.d_model, "CSReFT")
        if gates is None:
            raise ValueError("CSReFT needs gates, one per example and subspace ([batch, k]): inside a ReftModel its Router "
                             "gives them (or reft.force_gates(...)); on tensors, call cs(h, gates=g).")
        R, W, b = self.R, self.W, self.b  # [k, r, d], [k, r, d], [k, r]
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

    def extra_repr(self) -> str:
        frozen = f" ({', '.join(map(str, self.frozen))} frozen)" if self.frozen else ""
        return f"rank {self.rank}, {self.n_subspaces} subspaces{frozen}"
