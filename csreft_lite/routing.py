"""Routing: which subspaces a prompt opens. CS-ReFT's ρ = Router(x), and what x is.

``instruction_summary`` is what the router reads; ``Router`` turns it into gates ``[batch, k]`` and prices them
(sparsity, ``balance_loss``); ``kmeans`` starts it from the clusters of what it reads. ``ReftModel`` runs it once
per forward pass (``validate.check_router``: one router fits the CS-ReFT layers it gates). Skills added one at a
time route with continual.py's ``CentroidRouter``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .validate import check_input, check_sizes, check_weights

GATINGS = ("soft", "topk", "hard")


def instruction_summary(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The router's input ``[batch, d]``: the mean of ``LN(h_t)`` over each prompt's instruction tokens.

    ``hidden``: ``[batch, seq, d]``; ``mask``: ``[batch, seq]``, 1 on the instruction's own tokens
    (``hooks.span_mask`` builds it from ``instruction_spans``). Each token is layer-normed before the
    mean so that every token gets one vote: attention sinks and "massive activations" carry hidden
    states ten to a hundred times longer than the rest and would decide a plain mean alone.
    """
    tokens = F.layer_norm(hidden.float(), hidden.shape[-1:])  # no learned scale or shift
    m = mask.to(tokens.dtype).unsqueeze(-1)  # [batch, seq, 1]
    return (tokens * m).sum(1) / m.sum(1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """``−Σᵢ pᵢ log pᵢ`` over the last dimension, with ``0 · log 0 = 0``."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """``mean_b H(q_b) − H(mean_b q_b)``: low when each input is sure of its subspace *and* all are used.

    ``probs``: ``[batch, k]``; each row is normalised to a distribution ``q_b`` first, so sigmoid gates
    work too. It is minus the mutual information between input and subspace, in ``[−log k, 0]``:
    −log k when each of k equally common kinds of input owns a subspace, 0 when every input gets the
    same distribution (router collapse).
    """
    q = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
    return entropy(q).mean() - entropy(q.mean(0))


def unit_features(summary: torch.Tensor, d_model: int, name: str) -> torch.Tensor:
    """What a router's weights see: the summary ``[batch, d]`` layer-normed, then scaled to unit length (÷√d).

    Why ÷√d, as attention scales its scores: AdamW moves every weight by about ``lr`` per step, so a
    logit over d inputs of size ~1 would move by ``lr·d`` (5 at lr 1e-2 on the course model) and one
    step could overturn any routing; on unit-length inputs it moves by about ``lr·√d``.
    """
    check_input(summary, d_model, name)
    return F.layer_norm(summary.float(), (d_model,)) / d_model**0.5


def kmeans(x: torch.Tensor, k: int, n_init: int = 10, iters: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids ``[k, d]`` and assignments ``[n]``: the best (lowest inertia) of ``n_init`` k-means++ runs.

    Restarts matter: one run often merges two groups and splits a third; the best of ten rarely does.
    """
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= the number of points ({len(x)}), got k={k}.")
    x = x.detach().float()
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        centroids = x[torch.randint(len(x), (1,), generator=generator)]
        for _ in range(k - 1):  # k-means++: each new start far from the others
            d2 = torch.cdist(x, centroids).min(1).values.pow(2)
            weights = d2 / d2.sum() if d2.sum() > 0 else torch.ones_like(d2)
            centroids = torch.cat([centroids, x[torch.multinomial(weights, 1, generator=generator)]])
        for _ in range(iters):
            assign = torch.cdist(x, centroids).argmin(1)
            centroids = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centroids[j] for j in range(k)])
        assign = torch.cdist(x, centroids).argmin(1)
        inertia = (x - centroids[assign]).pow(2).sum().item()
        if best is None or inertia < best[0]:
            best = (inertia, centroids, assign)
    return best[1], best[2]


class Router(nn.Module):
    """Gates ``g ∈ [0, 1]^k`` from an instruction summary, ``[batch, d] -> [batch, k]``.

    ``hidden=None``: one linear map ``d → k`` (16K parameters on Llama-2-7B), inside the paper's budget; ``hidden=d//2``
    is the paper's MLP (8.4M, 13× its whole claimed budget). ``gating``: ``"topk"`` (softmax; the ``top_k`` largest
    become gates of exactly 1, the rest 0), ``"soft"`` (sigmoids, the paper's form) or ``"hard"`` (sigmoids thresholded
    at 0.5). Top-k and hard gates are straight-through: the backward pass acts as if the gates were the probabilities,
    so a subspace trains at the scale it is used at. ``balance`` defaults to 1: without it a top-1 router sent every
    prompt to one subspace (notebook 04, NMI 0.03).
    """

    def __init__(self, d_model: int, n_subspaces: int, hidden: int | None = None, gating: str = "topk",
                 top_k: int = 1, sparsity: float = 0.0, balance: float = 1.0):
        super().__init__()
        check_sizes("Router", n_subspaces, d_model=d_model, **({} if hidden is None else {"hidden": hidden}))
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}.")
        if gating == "topk" and not 1 <= top_k <= n_subspaces:
            raise ValueError(f"gating='topk' needs 1 <= top_k <= n_subspaces={n_subspaces}, got top_k={top_k}.")
        check_weights("Router", sparsity=sparsity, balance=balance)
        self.d_model, self.n_subspaces, self.hidden = d_model, n_subspaces, hidden
        self.gating, self.top_k, self.sparsity, self.balance = gating, top_k, sparsity, balance
        if hidden is None:
            self.net = nn.Linear(d_model, n_subspaces)
        else:
            self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, n_subspaces))

    def features(self, summary: torch.Tensor) -> torch.Tensor:
        """What the weights see (``unit_features``)."""
        return unit_features(summary, self.d_model, "Router")

    def probabilities(self, summary: torch.Tensor) -> torch.Tensor:
        """Softmax (top-k) or sigmoid (soft, hard) probabilities, ``[batch, k]``."""
        logits = self.net(self.features(summary))
        return logits.softmax(-1) if self.gating == "topk" else torch.sigmoid(logits)

    def forward(self, summary: torch.Tensor, with_probs: bool = False):
        """Gates ``[batch, k]`` (and the probabilities, when ``with_probs``)."""
        p = self.probabilities(summary)
        if self.gating == "soft":
            gates = p
        else:
            if self.gating == "topk":
                chosen = torch.zeros_like(p).scatter(-1, p.topk(self.top_k, dim=-1).indices, 1.0)
            else:
                chosen = (p > 0.5).to(p.dtype)
            gates = chosen + (p - p.detach())  # forward: exactly 0/1; backward: the probabilities' gradient
        return (gates, p) if with_probs else gates

    def penalty(self, probs: torch.Tensor) -> torch.Tensor | None:
        """``sparsity·Ω(p) + balance·balance_loss(p)`` for probabilities ``[batch, k]``; None when both weights are 0."""
        if not (self.sparsity or self.balance):
            return None
        total = probs.new_zeros(())
        if self.sparsity:
            total = total + self.sparsity * probs.sum(-1).mean()
        if self.balance:
            total = total + self.balance * balance_loss(probs)
        return total

    @torch.no_grad()
    def init_from_clusters(self, summaries: torch.Tensor, confidence: float = 0.9, n_init: int = 10, seed: int = 0) -> torch.Tensor:
        """Start as a nearest-centroid classifier of the k-means clusters of ``summaries`` ``[n, d]``; returns each one's cluster.

        Why: with top-1 gates the first subspace to become useful attracts every input and the others never learn
        ("dead experts"). Logits ``β (x·cᵢ − ‖cᵢ‖²/2)`` are largest for the nearest centroid; β is set so that an input's
        own cluster gets probability ``confidence`` on average (confident, far from saturated).
        """
        if self.gating != "topk" or self.hidden is not None:
            raise ValueError("init_from_clusters is for the linear top-k router (hidden=None, gating='topk').")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence is the mean probability of an input's own cluster, in (0, 1); got {confidence}.")
        x = self.features(summaries)
        centroids, assign = kmeans(x, self.n_subspaces, n_init=n_init, seed=seed)
        weight, bias = centroids, -0.5 * centroids.pow(2).sum(-1)
        low, high = 1e-6, 1e3
        for _ in range(60):  # bisection on β: the mean own-cluster probability grows with β
            beta = (low * high) ** 0.5
            own = torch.softmax(beta * (x @ weight.T + bias), -1).gather(1, assign[:, None]).mean()
            low, high = (low, beta) if own > confidence else (beta, high)
        self.net.weight.copy_(beta * weight)
        self.net.bias.copy_(beta * bias)
        return assign

    def extra_repr(self) -> str:
        net = f"{self.d_model}→{self.hidden}→{self.n_subspaces}" if self.hidden else f"{self.d_model}→{self.n_subspaces}"
        return f"{net} ({f'topk-{self.top_k}' if self.gating == 'topk' else self.gating})"
