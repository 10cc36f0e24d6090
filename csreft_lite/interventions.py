"""Interventions: small modules that edit hidden states ``h`` of shape ``[..., d]``.

They know tensors, not models: ``ReftModel`` decides where (layers, positions) they act.
Every intervention takes ``h`` (``[batch, n_positions, d]`` when called by ``ReftModel``)
and an optional boolean ``mask`` (``[batch, n_positions]``, False on padding) and returns
an edited tensor of the same shape and dtype. Parameters stay in float32 even when the
model runs in bf16/fp16: the edit is computed in float32 and cast back, which keeps the
orthonormal basis accurate and training stable.

- ``LoReFT``  (Wu et al., 2024):  Φ(h) = h + Rᵀ(W h + b − R h),  R R ᵀ = I.
- ``DiReFT``  (its ablation):     Φ(h) = h + W₂ᵀ(W₁ h + b).
- ``CSReFT``  (Zhou, 2025):       Φ(h) = h + Σᵢ gᵢ(x) · Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h),
  with k subspaces that are orthonormal *and* mutually orthogonal, and gates gᵢ ∈ [0, 1]
  from a small ``Router``.
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def orthonormal_rows(raw: torch.Tensor) -> torch.Tensor:
    """Map any full-rank ``[r, d]`` matrix (r ≤ d) to one with orthonormal rows.

    We use the Q factor of a reduced QR decomposition of ``rawᵀ``, with signs fixed so
    that the map is smooth. Why QR rather than ``torch.nn.utils.parametrizations.orthogonal``:
    QR is scale-invariant (``Q(c·A) = Q(A)`` for c > 0), so AdamW's weight decay, which
    shrinks the raw parameter, cannot collapse or distort ``R``; it costs O(d r²), cheap for
    r ≪ d; and it works for any r ≤ d. It runs in float32 (QR has no bf16 kernel).
    """
    q, r = torch.linalg.qr(raw.float().T)  # q: [d, r], r: [r, r]
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs).T  # [r, d], R Rᵀ = I


def _check_dims(d_model: int, rank: int, n: int = 1) -> None:
    if d_model < 1 or rank < 1:
        raise ValueError(f"d_model and rank must be positive, got d_model={d_model}, rank={rank}.")
    if n * rank > d_model:
        raise ValueError(
            f"{n} subspace(s) of rank {rank} need {n * rank} orthonormal directions, but the hidden size is "
            f"only {d_model}. Use a smaller rank or fewer subspaces."
        )


def _check_input(h: torch.Tensor, d_model: int, name: str) -> None:
    if h.shape[-1] != d_model:
        raise ValueError(
            f"{name} was built for hidden size {d_model} but got a tensor of shape {tuple(h.shape)} "
            f"(last dimension {h.shape[-1]}). Build it with d_model={h.shape[-1]}, or attach it to a model "
            f"with hidden size {d_model}."
        )


class LoReFT(nn.Module):
    """Low-rank Linear Subspace ReFT: ``Φ(h) = h + Rᵀ(W h + b − R h)``.

    The rows of ``R`` (``[rank, d]``) are orthonormal, so ``Rᵀ R`` is the projection onto an
    r-dimensional subspace: the edit replaces the coordinates ``R h`` of ``h`` in that
    subspace by the learned ``W h + b`` and leaves the orthogonal complement untouched.
    We initialise ``W = R`` and ``b = 0``, so the edit starts at exactly zero and training
    starts from the frozen model's behaviour (pyreft starts from a random ``W``; identity
    at the start makes loss curves and "before" generations easy to read).
    """

    def __init__(self, d_model: int, rank: int = 4):
        super().__init__()
        _check_dims(d_model, rank)
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

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(h, self.d_model, "LoReFT")
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
        _check_dims(d_model, rank)
        self.d_model, self.rank = d_model, rank
        self.W1 = nn.Parameter(torch.empty(rank, d_model))
        nn.init.kaiming_uniform_(self.W1, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(rank))
        self.W2 = nn.Parameter(torch.zeros(rank, d_model))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(h, self.d_model, "DiReFT")
        x = h.to(self.W1.dtype)
        return (x + (x @ self.W1.T + self.b) @ self.W2).to(h.dtype)

    def config(self) -> dict:
        return {"d_model": self.d_model, "rank": self.rank}


class Router(nn.Module):
    """Gates ``g ∈ [0, 1]^k`` from a summary vector of the prompt, ``[batch, d] -> [batch, k]``.

    ``hidden=None`` is a single linear map ``d → k`` (d·k + k parameters: 2.3K on the course
    model, 16K on Llama-2-7B), which keeps CS-ReFT inside the paper's parameter budget.
    ``hidden=d // 2`` is the paper's MLP ``d → d/2 → k`` (ReLU, then sigmoid): 8.4M parameters
    on Llama-2-7B, 13× the paper's whole claimed budget, so it is an option, not the default.
    """

    def __init__(self, d_model: int, n_subspaces: int, hidden: int | None = None):
        super().__init__()
        self.d_model, self.n_subspaces, self.hidden = d_model, n_subspaces, hidden
        if hidden is None:
            self.net = nn.Linear(d_model, n_subspaces)
        else:
            self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, n_subspaces))
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        # Residual-stream norms differ by orders of magnitude across layers and models;
        # normalising the summary lets one learning rate fit every layer.
        return torch.sigmoid(self.net(self.norm(summary)))


GATINGS = ("soft", "topk", "hard")


class CSReFT(nn.Module):
    """Compositional Subspace ReFT: k LoReFT-style edits gated by a router.

    ``Φ(h) = h + Σᵢ gᵢ · Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h)``.

    Choices where the paper is silent, and why:
    - Subspaces are mutually orthogonal (``Rᵢ Rⱼᵀ = 0``): the stacked ``[k·r, d]`` basis is
      made orthonormal as a whole, so no skill's edit can write into another's subspace.
      (The paper only requires orthonormal rows within each ``Rᵢ``.)
    - The router reads the mean hidden state over the intervened prompt positions of the
      same layer (the paper suggests "e.g. the first token's hidden state", but with a chat
      template the first tokens are identical for every prompt, so they carry no signal).
      One gate vector per example, shared by all its intervened positions.
    - ``gating="soft"``: sigmoid gates (default, differentiable); ``"topk"``: keep the
      ``top_k`` largest gates, zero the rest; ``"hard"``: gates thresholded at 0.5 when the
      module is in eval mode (the paper's hard gating), soft while training.
    - ``sparsity`` is λ in ``loss = CE + λ·Ω(g)`` with Ω the mean over examples of Σᵢ gᵢ (an L1
      penalty on the gates); ``ReftModel`` adds ``penalty()`` to the loss.
    """

    def __init__(
        self,
        d_model: int,
        rank: int = 4,
        n_subspaces: int = 4,
        router_hidden: int | None = None,
        gating: str = "soft",
        top_k: int | None = None,
        sparsity: float = 0.0,
    ):
        super().__init__()
        _check_dims(d_model, rank, n_subspaces)
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}.")
        if gating == "topk" and not (top_k and 1 <= top_k <= n_subspaces):
            raise ValueError(f"gating='topk' needs 1 <= top_k <= n_subspaces={n_subspaces}, got top_k={top_k}.")
        self.d_model, self.rank, self.n_subspaces = d_model, rank, n_subspaces
        self.gating, self.top_k, self.sparsity = gating, top_k, sparsity
        raw = torch.empty(n_subspaces * rank, d_model)
        nn.init.orthogonal_(raw)
        self.R_raw = nn.Parameter(raw)  # all k bases stacked, orthonormalised together
        self.W = nn.Parameter(orthonormal_rows(raw).clone().view(n_subspaces, rank, d_model))
        self.b = nn.Parameter(torch.zeros(n_subspaces, rank))
        self.router = Router(d_model, n_subspaces, router_hidden)
        self.forced_gates: torch.Tensor | None = None
        self.last_gates: torch.Tensor | None = None  # [batch, k], detached, for plots
        self._gates_for_penalty: torch.Tensor | None = None

    @property
    def R(self) -> torch.Tensor:
        """The k orthonormal bases, ``[k, rank, d]``; all k·rank rows are orthonormal."""
        return orthonormal_rows(self.R_raw).view(self.n_subspaces, self.rank, self.d_model)

    def gates(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Gates for each example: ``[batch, k]`` for ``h`` of shape ``[batch, n, d]``."""
        x = h.to(self.R_raw.dtype)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() == 3:  # summarise the intervened positions of each example
            m = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device) if mask is None else mask.to(x.dtype)
            summary = (x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        else:
            summary = x.reshape(-1, self.d_model)
        g = self.router(summary)  # [batch, k]
        if self.gating == "topk":
            keep = torch.zeros_like(g).scatter(-1, g.topk(self.top_k, dim=-1).indices, 1.0)
            g = g * keep
        elif self.gating == "hard" and not self.training:
            g = (g > 0.5).to(g.dtype)
        return g

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(h, self.d_model, "CSReFT")
        if self.forced_gates is not None:
            n_examples = h.shape[0] if h.dim() == 3 else h.reshape(-1, h.shape[-1]).shape[0]
            g = self.forced_gates.to(device=h.device, dtype=self.R_raw.dtype).expand(n_examples, self.n_subspaces)
        else:
            g = self.gates(h, mask)
        self.last_gates = g.detach()
        self._gates_for_penalty = g
        R = self.R  # [k, r, d]
        x = h.to(R.dtype)
        flat = x.reshape(-1, x.shape[-1]) if x.dim() != 3 else x
        if flat.dim() == 2:  # rows are their own examples
            gate = g.view(-1, self.n_subspaces, 1)  # [n, k, 1]
            z = torch.einsum("nd,krd->nkr", flat, self.W - R) + self.b  # [n, k, r]
            delta = torch.einsum("nkr,krd->nd", z * gate, R)
        else:  # [batch, pos, d]: one gate vector per example
            gate = g.view(-1, 1, self.n_subspaces, 1)  # [batch, 1, k, 1]
            z = torch.einsum("bpd,krd->bpkr", flat, self.W - R) + self.b  # [batch, pos, k, r]
            delta = torch.einsum("bpkr,krd->bpd", z * gate, R)
        return (x + delta.reshape(x.shape)).to(h.dtype)

    def penalty(self) -> torch.Tensor | None:
        """λ·Ω(g) for the last forward pass (an L1 penalty on the gates), or None if λ = 0."""
        if not self.sparsity or self._gates_for_penalty is None:
            return None
        return self.sparsity * self._gates_for_penalty.sum(-1).mean()

    @contextmanager
    def force_gates(self, gates) -> Iterator["CSReFT"]:
        """Fix the gates by hand, e.g. ``with cs.force_gates([1, 0, 0, 0]):`` switches one skill on."""
        g = torch.as_tensor(gates, dtype=torch.float32)
        if g.numel() != self.n_subspaces:
            raise ValueError(f"force_gates takes one gate per subspace ({self.n_subspaces} values), got {g.numel()}.")
        g = g.reshape(1, self.n_subspaces)
        previous, self.forced_gates = self.forced_gates, g
        try:
            yield self
        finally:
            self.forced_gates = previous

    def config(self) -> dict:
        return {
            "d_model": self.d_model,
            "rank": self.rank,
            "n_subspaces": self.n_subspaces,
            "router_hidden": self.router.hidden,
            "gating": self.gating,
            "top_k": self.top_k,
            "sparsity": self.sparsity,
        }


KINDS = {"LoReFT": LoReFT, "DiReFT": DiReFT, "CSReFT": CSReFT}


def build(kind: str, config: dict) -> nn.Module:
    """Rebuild an intervention from its class name and ``config()``, e.g. when loading a checkpoint."""
    if kind not in KINDS:
        raise ValueError(f"Unknown intervention kind {kind!r}; known kinds: {', '.join(KINDS)}.")
    params = inspect.signature(KINDS[kind]).parameters  # the constructor's arguments are the config's keys
    unknown = sorted(set(config) - set(params))
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in config]
    if unknown or missing:
        problems = [f"unknown keys {unknown}"] * bool(unknown) + [f"missing keys {missing}"] * bool(missing)
        raise ValueError(
            f"The {kind} config has {' and '.join(problems)}; {kind} accepts {list(params)}. Was the checkpoint "
            f"written by another version of csreft_lite (its 'version' field) or edited by hand? Load it with the "
            f"version that wrote it, or correct the keys."
        )
    return KINDS[kind](**config)
