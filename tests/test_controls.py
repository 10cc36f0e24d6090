"""SeparateBases, the control for CS-ReFT's orthogonality: the same gated edit, bases orthonormal one by one."""

import pytest
import torch

import csreft_lite as cl
from csreft_lite.reft_model import settings
from csreft_lite.controls import SeparateBases

from .tiny import perturbed as _perturbed, tiny_llama

D, R, K = 16, 3, 2


def test_each_basis_is_orthonormal_but_the_bases_overlap():
    torch.manual_seed(0)
    sb = _perturbed(SeparateBases(D, R, K))
    Rs = sb.R
    for i in range(K):
        assert torch.allclose(Rs[i] @ Rs[i].T, torch.eye(R), atol=1e-5)
    assert (Rs[0] @ Rs[1].T).abs().max() > 1e-2  # not mutually orthogonal, unlike CSReFT


def test_the_edit_is_the_gated_sum_of_loreft_edits():
    sb = _perturbed(SeparateBases(D, R, K))
    h = torch.randn(3, 4, D)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 1.0]])
    Rs, W, b = sb.R, sb.W.detach(), sb.b.detach()
    expected = h.clone()
    for i in range(K):
        expected = expected + g[:, i, None, None] * ((h @ W[i].T + b[i] - h @ Rs[i].T) @ Rs[i])
    assert torch.allclose(sb(h, gates=g), expected, atol=1e-5)
    assert torch.allclose(SeparateBases(D, R, K)(h, gates=torch.ones(K)), h, atol=1e-6)  # starts as the identity
    with pytest.raises(ValueError, match="needs gates"):
        sb(h)


def test_frozen_subspace_stays_bit_for_bit_under_training():
    torch.manual_seed(0)
    model = tiny_llama()
    sb = SeparateBases(model.config.hidden_size, 2, K)
    reft = cl.ReftModel(model, {1: sb}, positions="f1+l1")
    sb.freeze_subspaces(0)
    before = [p.detach().clone() for p in sb.subspace(0)]
    params = [p for p in reft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    ids = torch.randint(3, 100, (2, 6))
    labels = ids.masked_fill(torch.arange(6) < 3, -100)  # a 3-token prompt, then the answer
    with reft.force_gates([1.0, 1.0]):  # both open: subspace 0 is used, and must still not move
        for _ in range(3):
            out = reft(ids, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    assert all(torch.equal(a, p) for a, p in zip(before, sb.subspace(0)))
    assert not torch.equal(sb.W[1], sb.R[1])  # the open subspace learned
    assert reft.trainable_parameters() == sum(p.numel() for p in params)
    assert sb.frozen == (0,) and settings(sb) == {"d_model": model.config.hidden_size, "rank": 2, "n_subspaces": K}
    with pytest.raises(ValueError, match="subspaces 0 to 1"):  # CSReFT's own checks and exact freezing
        sb.freeze_subspaces(2)
