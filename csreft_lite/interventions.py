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
  with k subspaces that are orthonormal *and* mutually orthogonal; the gates gᵢ(x) ∈ [0, 1]
  come from one small ``Router`` per model (``ReftModel`` runs it and hands every layer's
  ``CSReFT`` the same gates).
"""

from __future__ import annotations

import inspect
import math
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


GATINGS = ("soft", "topk", "hard")


def balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """``mean_b H(q_b) − H(mean_b q_b)``: low when each input is sure of its subspace *and* all are used.

    ``probs`` is ``[batch, k]`` (router probabilities); each row is normalised to a distribution ``q_b``
    first, so sigmoid gates work too. The first term is small when every input picks one subspace
    confidently, the second large when the batch as a whole spreads over all k subspaces. Their
    difference is minus the mutual information between the input and its subspace, in nats, so it lies
    in ``[−log k, 0]``: −log k when each of k equally common kinds of input owns one subspace, 0 when
    every input gets the same distribution (router collapse).
    """
    q = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
    return _entropy(q).mean() - _entropy(q.mean(0))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def kmeans(x: torch.Tensor, k: int, n_init: int = 10, iters: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids ``[k, d]`` and assignments ``[n]`` of the best of ``n_init`` k-means++ runs on ``x`` ``[n, d]``.

    "Best": the lowest sum of squared distances to the assigned centroid. Restarts matter: one run often
    merges two groups and splits a third; the best of ten rarely does.
    """
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= the number of points ({len(x)}), got k={k}.")
    x = x.detach().float()
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        centroids = x[torch.randint(len(x), (1,), generator=generator)]
        for _ in range(k - 1):  # k-means++: spread the starting points
            d2 = torch.cdist(x, centroids).min(1).values.pow(2)
            pick = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones_like(d2), 1, generator=generator)
            centroids = torch.cat([centroids, x[pick]])
        for _ in range(iters):
            assign = torch.cdist(x, centroids).argmin(1)
            centroids = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centroids[j] for j in range(k)])
        assign = torch.cdist(x, centroids).argmin(1)
        inertia = (x - centroids[assign]).pow(2).sum().item()
        if best is None or inertia < best[0]:
            best = (inertia, centroids, assign)
    return best[1], best[2]


class Router(nn.Module):
    """Gates ``g ∈ [0, 1]^k`` from a summary of the input, ``[batch, d] -> [batch, k]``: ρ = Router(x).

    One router serves every CS-ReFT layer of a ``ReftModel``, which hands it the summary (the mean
    hidden state over the instruction's own tokens) and passes the gates to each layer's ``CSReFT``.

    - ``hidden=None``: a single linear map ``d → k`` (d·k + k parameters: 2.3K on the course model,
      16K on Llama-2-7B), which keeps CS-ReFT inside the paper's parameter budget. ``hidden=d // 2`` is
      the paper's MLP ``d → d/2 → k`` (ReLU): 8.4M parameters on Llama-2-7B, 13× the paper's whole
      claimed budget, so it is an option, not the default.
    - ``gating="soft"``: sigmoid gates, the paper's form, differentiable everywhere. ``"topk"``: softmax
      probabilities, the ``top_k`` largest become gates of exactly 1 and the rest 0, with a
      straight-through gradient (the backward pass acts as if the gates were the probabilities), so a
      subspace is trained at the scale it is used at and forcing a gate to 1 by hand is the trained
      behaviour. ``"hard"``: sigmoid probabilities thresholded at 0.5 (the paper's hard gating), also
      straight-through, identical at training and evaluation.
    - ``penalty()``: ``sparsity · mean_b Σᵢ pᵢ`` (the paper's Ω, an L1 cost on open gates; with top-k's
      softmax it is constant) plus ``balance · balance_loss(p)`` (see ``balance_loss``), for the
      probabilities of the last call. ``ReftModel`` adds it to the loss. ``balance`` defaults to 1: without
      it a top-1 router sent every prompt to one subspace (notebook 04's skills, routing NMI 0.03).
    - ``init_from_clusters``: start from the k-means clusters of the router's inputs (``ReftModel.init_router``);
      with top-1 gates, a random start left a subspace without inputs on one seed in three.
    """

    def __init__(
        self,
        d_model: int,
        n_subspaces: int,
        hidden: int | None = None,
        gating: str = "topk",
        top_k: int = 1,
        sparsity: float = 0.0,
        balance: float = 1.0,
    ):
        super().__init__()
        if d_model < 1 or n_subspaces < 1:
            raise ValueError(f"d_model and n_subspaces must be positive, got {d_model} and {n_subspaces}.")
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}.")
        if gating == "topk" and not 1 <= top_k <= n_subspaces:
            raise ValueError(f"gating='topk' needs 1 <= top_k <= n_subspaces={n_subspaces}, got top_k={top_k}.")
        self.d_model, self.n_subspaces, self.hidden = d_model, n_subspaces, hidden
        self.gating, self.top_k, self.sparsity, self.balance = gating, top_k, sparsity, balance
        if hidden is None:
            self.net = nn.Linear(d_model, n_subspaces)
        else:
            self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, n_subspaces))
        # Residual-stream norms differ by orders of magnitude across layers and models;
        # normalising the summary lets one learning rate fit every layer.
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.last_probs: torch.Tensor | None = None  # [batch, k] of the last call, for penalty()

    def features(self, summary: torch.Tensor) -> torch.Tensor:
        """What the router's weights see: the summary layer-normed, then scaled to unit length (÷√d).

        Why ÷√d, as attention scales its scores: AdamW moves every weight by about ``lr`` per step, so a logit
        over d layer-normed inputs (each of size ~1) would move by about ``lr·d`` (5 at lr 1e-2 on the course
        model) and one step could overturn any routing; on unit-length inputs a step moves it by about ``lr·√d``.
        """
        _check_input(summary, self.d_model, "Router")
        dtype = next(self.net.parameters()).dtype  # float32, whatever the model's dtype
        return self.norm(summary.to(dtype)) / self.d_model**0.5

    def probabilities(self, summary: torch.Tensor) -> torch.Tensor:
        """Softmax (top-k) or sigmoid (soft, hard) probabilities, ``[batch, k]``."""
        logits = self.net(self.features(summary))
        return logits.softmax(-1) if self.gating == "topk" else torch.sigmoid(logits)

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(summary)
        self.last_probs = p
        if self.gating == "soft":
            return p
        if self.gating == "topk":
            chosen = torch.zeros_like(p).scatter(-1, p.topk(self.top_k, dim=-1).indices, 1.0)
        else:
            chosen = (p > 0.5).to(p.dtype)
        return chosen + (p - p.detach())  # forward: exactly 0/1; backward: the probabilities' gradient

    @torch.no_grad()
    def init_from_clusters(self, summaries: torch.Tensor, confidence: float = 0.9, n_init: int = 10, seed: int = 0) -> torch.Tensor:
        """Start as a nearest-centroid classifier of the k-means clusters of ``summaries`` (``[n, d]``, the router's
        inputs on training prompts); returns each summary's cluster.

        Why: with top-1 gates the subspace that becomes useful first attracts every input, and a subspace that
        never gets inputs never becomes useful (the "dead expert" of mixtures of experts; VQ-VAE codebooks are
        started from k-means for the same reason). Starting from the clusters of what the router reads gives
        every subspace its own group of inputs from the first step. The logits are ``β (x·cᵢ − ‖cᵢ‖²/2)`` on the
        router's features ``x`` (``features``), so the largest is the nearest centroid ``cᵢ``; β is set so that an
        input's own cluster gets probability ``confidence`` on average (confident, but far from saturated).
        """
        if self.gating != "topk" or self.hidden is not None:
            raise ValueError("init_from_clusters is for the linear top-k router (hidden=None, gating='topk').")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence is the mean probability of an input's own cluster, in (0, 1); got {confidence}.")
        x = self.features(summaries)
        centroids, assign = kmeans(x, self.n_subspaces, n_init=n_init, seed=seed)
        weight, bias = centroids, -0.5 * centroids.pow(2).sum(-1)
        low, high = 1e-6, 1e3
        for _ in range(60):  # bisection on β (the mean own-cluster probability grows with β)
            beta = (low * high) ** 0.5
            own = torch.softmax(beta * (x @ weight.T + bias), -1).gather(1, assign[:, None]).mean()
            low, high = (low, beta) if own > confidence else (beta, high)
        self.net.weight.copy_(beta * weight)
        self.net.bias.copy_(beta * bias)
        return assign

    def penalty(self) -> torch.Tensor | None:
        """``sparsity·Ω(p) + balance·balance_loss(p)`` for the last call, or None when both weights are 0."""
        if self.last_probs is None or not (self.sparsity or self.balance):
            return None
        p, total = self.last_probs, self.last_probs.new_zeros(())
        if self.sparsity:
            total = total + self.sparsity * p.sum(-1).mean()
        if self.balance:
            total = total + self.balance * balance_loss(p)
        return total

    def config(self) -> dict:
        return {
            "d_model": self.d_model, "n_subspaces": self.n_subspaces, "hidden": self.hidden, "gating": self.gating,
            "top_k": self.top_k, "sparsity": self.sparsity, "balance": self.balance,
        }



class CSReFT(nn.Module):
    """Compositional Subspace ReFT: k LoReFT-style edits, each scaled by its gate.

    ``Φ(h) = h + Σᵢ gᵢ · Rᵢᵀ(Wᵢ h + bᵢ − Rᵢ h)``.

    The gates ``g`` (``[batch, k]``, one vector per example, shared by its positions) come from
    outside: ``ReftModel`` computes them once per forward pass with its ``Router`` and hands the same
    gates to the CS-ReFT module of every layer, as in the paper (ρ = Router(x)). On tensors, pass
    ``gates=`` yourself.

    Where the paper is silent: the subspaces are mutually orthogonal (``Rᵢ Rⱼᵀ = 0``). The stacked
    ``[k·r, d]`` basis is made orthonormal as a whole, so no skill's edit can write into another's
    subspace (the paper only requires orthonormal rows within each ``Rᵢ``).
    """

    def __init__(self, d_model: int, rank: int = 4, n_subspaces: int = 4):
        super().__init__()
        _check_dims(d_model, rank, n_subspaces)
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

    def _parameters_with_frozen_detached(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not bool(self.frozen.any()):
            return self.R_raw, self.W, self.b
        rows = self.frozen.repeat_interleave(self.rank)[:, None]  # [k·r, 1]
        keep = self.frozen[:, None]
        return (torch.where(rows, self.R_raw.detach(), self.R_raw), torch.where(keep[..., None], self.W.detach(), self.W),
                torch.where(keep, self.b.detach(), self.b))

    @property
    def R(self) -> torch.Tensor:
        """The k orthonormal bases, ``[k, rank, d]``; all k·rank rows are orthonormal."""
        return orthonormal_rows(self._parameters_with_frozen_detached()[0]).view(self.n_subspaces, self.rank, self.d_model)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None, gates: torch.Tensor | None = None) -> torch.Tensor:
        """``h``: ``[batch, n, d]`` (or ``[n, d]``, one example per row); ``gates``: ``[batch, k]``."""
        _check_input(h, self.d_model, "CSReFT")
        if gates is None:
            raise ValueError(
                "CSReFT needs gates, one per example and subspace ([batch, k]): inside a ReftModel its Router "
                "gives them (or reft.force_gates(...)); on tensors, call cs(h, gates=g)."
            )
        R_raw, W, b = self._parameters_with_frozen_detached()
        R = orthonormal_rows(R_raw).view(self.n_subspaces, self.rank, self.d_model)  # [k, r, d]
        x = h.to(R.dtype)
        n_examples = x.shape[0]
        g = gates.to(device=x.device, dtype=R.dtype)
        if g.dim() == 1:
            g = g.unsqueeze(0)
        if g.shape[-1] != self.n_subspaces or g.shape[0] not in (1, n_examples):
            raise ValueError(
                f"CSReFT has {self.n_subspaces} subspaces and got {n_examples} examples, but gates of shape "
                f"{tuple(gates.shape)}; pass [{n_examples}, {self.n_subspaces}] (or [{self.n_subspaces}] for all)."
            )
        g = g.expand(n_examples, -1)
        z = torch.einsum("...d,krd->...kr", x, W - R) + b  # [..., k, r]: Wᵢh + bᵢ − Rᵢh
        scale = g.view(n_examples, *([1] * (x.dim() - 2)), self.n_subspaces, 1)  # [batch, (1,) k, 1]
        delta = torch.einsum("...kr,krd->...d", z * scale, R)
        return (x + delta).to(h.dtype)

    def config(self) -> dict:
        return {"d_model": self.d_model, "rank": self.rank, "n_subspaces": self.n_subspaces}


KINDS = {"LoReFT": LoReFT, "DiReFT": DiReFT, "CSReFT": CSReFT, "Router": Router}


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
