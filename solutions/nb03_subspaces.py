"""Reference answers for notebook 03 (multiple subspaces). Try the exercises first."""

from __future__ import annotations

import torch


def interference(acc_alone: dict, acc_mixed: dict) -> dict:
    """Accuracy each skill loses when it shares one edit with the others.

    ``acc_alone[s]``: skill s's accuracy with an edit trained on s alone; ``acc_mixed[s]``:
    with the edit trained on the mixture. Returns ``{s: acc_alone[s] - acc_mixed[s]}`` for
    every skill of ``acc_alone`` (the key ``"mean"`` is not a skill and is skipped), plus
    ``"mean"``: the unweighted mean of those drops. Positive = the mixture hurts.
    """
    drops = {s: acc_alone[s] - acc_mixed[s] for s in acc_alone if s != "mean"}
    return {**drops, "mean": sum(drops.values()) / len(drops)}


def orthogonal_subspaces(raw: torch.Tensor) -> torch.Tensor:
    """k bases ``[k, r, d]`` whose k·r rows are orthonormal *together* (``Rᵢ Rⱼᵀ = 0`` for i ≠ j),
    spanning the same k·r-dimensional space as the rows of ``raw`` (``[k, r, d]``, k·r ≤ d)."""
    k, r, d = raw.shape
    q, _ = torch.linalg.qr(raw.reshape(k * r, d).T)  # [d, k·r], orthonormal columns
    return q.T.reshape(k, r, d)


def subspace_overlap(R: torch.Tensor) -> torch.Tensor:
    """``[k, k]`` overlaps ``‖Rᵢ Rⱼᵀ‖_F / √r`` of k orthonormal bases ``R`` (``[k, r, d]``).

    1 on the diagonal (a subspace with itself), 0 for orthogonal subspaces; two random
    r-dimensional subspaces of ℝᵈ overlap by about √(r/d).
    """
    k, r, d = R.shape
    cross = torch.einsum("ird,jsd->ijrs", R, R)  # [k, k, r, r]: Rᵢ Rⱼᵀ
    return cross.pow(2).sum((-1, -2)).sqrt() / r**0.5


def principal_cosines(Ri: torch.Tensor, Rj: torch.Tensor) -> torch.Tensor:
    """The r cosines of the principal angles between two subspaces with orthonormal bases ``Ri``, ``Rj``
    (``[r, d]``), largest first: the singular values of ``Ri Rjᵀ``. They do not depend on which basis of each
    subspace is given, and ``sqrt(mean(cos²))`` is the overlap ``‖Ri Rjᵀ‖_F / √r``."""
    return torch.linalg.svdvals(Ri @ Rj.T)
