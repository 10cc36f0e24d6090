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


def instruction_summary(h: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """The router's input: for each example, the mean of its layer-normed hidden states ``LN(h_t)`` over the
    tokens ``spans[b, 0] <= t < spans[b, 1]`` (the instruction's own tokens; ``h`` is ``[batch, seq, d]``,
    ``spans`` is ``[batch, 2]``). Returns ``[batch, d]``. Normalising each token first gives every token one
    vote; tokens outside the span (chat markers, attention sinks, padding) do not count."""
    tokens = F.layer_norm(h, (h.shape[-1],))  # no learned scale or shift
    positions = torch.arange(h.shape[1])  # [seq]
    inside = (positions >= spans[:, :1]) & (positions < spans[:, 1:])  # [batch, seq]
    m = inside.to(h.dtype).unsqueeze(-1)  # [batch, seq, 1]
    return (tokens * m).sum(1) / m.sum(1)


def balance_term(probs: torch.Tensor) -> torch.Tensor:
    """``mean_b H(q_b) − H(mean_b q_b)`` for router probabilities ``probs`` (``[batch, k]``), where each row
    is first normalised to a distribution ``q_b = p_b / Σᵢ p_bi`` and ``H(q) = −Σᵢ qᵢ log qᵢ`` (natural log).

    Low when every example is sure of its subspace *and* the batch uses all of them; 0 when every example
    gets the same distribution (router collapse); −log k at best. Returns a scalar tensor.
    """
    q = probs / probs.sum(-1, keepdim=True)

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-12).log()).sum(-1)

    return entropy(q).mean() - entropy(q.mean(0))


def routing_nmi(skills: list, subspaces: list) -> float:
    """Normalised mutual information between each prompt's skill and the subspace it was routed to:
    ``I(S; C) / ((H(S) + H(C)) / 2)`` from the counts, natural log; 0 when either entropy is 0."""
    import math
    from collections import Counter

    n = len(skills)
    joint, by_skill, by_sub = Counter(zip(skills, subspaces)), Counter(skills), Counter(subspaces)
    mutual = sum(c / n * math.log(c * n / (by_skill[s] * by_sub[x])) for (s, x), c in joint.items())
    h_skill = -sum(c / n * math.log(c / n) for c in by_skill.values())
    h_sub = -sum(c / n * math.log(c / n) for c in by_sub.values())
    return 0.0 if h_skill == 0 or h_sub == 0 else mutual / ((h_skill + h_sub) / 2)
