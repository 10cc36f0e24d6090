"""Reference answers for notebook 02, orthonormal LoReFT.

Try the exercises in the notebook first: ``checks.check_loreft_edit(loreft_edit)`` and
friends compare your function with these and say what differs.
"""

from __future__ import annotations

import torch


def orthonormalize(A: torch.Tensor) -> torch.Tensor:
    """Rows of ``A [r, d]`` (r ≤ d, full rank) -> ``R [r, d]`` with orthonormal rows (``R Rᵀ = I``)
    spanning the same row space. Gram-Schmidt: remove from each row its components along the
    rows before it, then normalise. (Any orthonormal basis of the same space is right.)"""
    rows = []
    for a in A.double():
        for q in rows:
            a = a - (a @ q) * q
        rows.append(a / a.norm())
    return torch.stack(rows).to(A.dtype)


def loreft_edit(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Φ(h) = h + Rᵀ(W h + b − R h)`` for ``h [..., d]``, ``R, W [r, d]``, ``b [r]``.

    With row vectors ``h``, ``W h`` is ``h @ W.T`` (``[..., r]``) and ``Rᵀ z`` is ``z @ R``."""
    return h + (h @ W.T + b - h @ R.T) @ R


def loreft_parameters(d_model: int, rank: int, n_interventions: int) -> int:
    """Trainable parameters of ``n_interventions`` LoReFT edits: R (r·d) + W (r·d) + b (r) each."""
    return n_interventions * (2 * rank * d_model + rank)
