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


def sequential_as_one(
    R1: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, R2: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LoReFT edit ``(R, W, b)`` of rank 2r equal to applying edit 1, then edit 2, when ``R1 R2ᵀ = 0``.

    Edit 2 reads the *edited* state: ``W2 Φ₁(h) = W2 h + W2 R1ᵀ(W1 h + b1 − R1 h)``, so its map and bias pick up
    ``W2 R1ᵀ(W1 − R1)`` and ``W2 R1ᵀ b1``; edit 1's coordinates are untouched by edit 2 (``R1 R2ᵀ = 0``).
    """
    carry = W2 @ R1.T  # [r, r]: how much of subspace 1's coordinates edit 2's map reads
    R = torch.cat([R1, R2])
    W = torch.cat([W1, W2 + carry @ (W1 - R1)])
    b = torch.cat([b1, b2 + carry @ b1])
    return R, W, b
