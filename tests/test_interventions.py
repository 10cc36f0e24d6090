"""Interventions on plain tensors: the formulas, orthonormality under training, and CS-ReFT's gates."""

import pytest
import torch

import csreft_lite as cl
from csreft_lite.interventions import build, orthonormal_rows

D, R = 16, 3


def _perturbed(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module


def test_loreft_matches_the_formula_computed_independently():
    lo = _perturbed(cl.LoReFT(D, R))
    h = torch.randn(2, 5, D, dtype=torch.float64)
    # Independent computation: Gram-Schmidt on the raw rows gives the same basis as QR.
    raw = lo.R_raw.detach().double()
    basis = []
    for row in raw:
        v = row.clone()
        for u in basis:
            v = v - (v @ u) * u
        basis.append(v / v.norm())
    Rm = torch.stack(basis)
    W, b = lo.W.detach().double(), lo.b.detach().double()
    expected = h + (h @ W.T + b - h @ Rm.T) @ Rm
    got = lo(h.float()).double()
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.allclose(lo.R.double(), Rm, atol=1e-5)


def test_loreft_starts_as_the_identity_and_edits_only_its_subspace():
    lo = cl.LoReFT(D, R)
    h = torch.randn(4, D)
    assert torch.allclose(lo(h), h, atol=1e-6)
    _perturbed(lo)
    delta = lo(h) - h
    complement = torch.eye(D) - lo.R.T @ lo.R
    assert torch.allclose(delta @ complement, torch.zeros_like(delta), atol=1e-5)
    assert delta.abs().max() > 1e-2


def test_R_stays_orthonormal_through_adamw_with_default_weight_decay():
    torch.manual_seed(0)
    lo = cl.LoReFT(64, 4)
    opt = torch.optim.AdamW(lo.parameters(), lr=1e-2)  # default weight_decay=0.01
    target = torch.randn(32, 64)
    x = torch.randn(32, 64)
    for _ in range(100):
        loss = (lo(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    R = lo.R
    assert torch.allclose(R @ R.T, torch.eye(4), atol=1e-5)
    assert loss.item() < (x - target).pow(2).mean().item()  # it did learn something


def test_orthonormal_rows_is_scale_invariant():
    raw = torch.randn(4, 20)
    assert torch.allclose(orthonormal_rows(raw), orthonormal_rows(1e-3 * raw), atol=1e-5)


def test_direft_formula_and_identity_start():
    di = cl.DiReFT(D, R)
    h = torch.randn(3, D)
    assert torch.equal(di(h), h)
    _perturbed(di)
    expected = h + (h @ di.W1.T + di.b) @ di.W2
    assert torch.allclose(di(h), expected, atol=1e-6)


def test_csreft_subspaces_are_orthonormal_and_mutually_orthogonal():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=4))
    Rk = cs.R  # [k, r, d]
    for i in range(4):
        assert torch.allclose(Rk[i] @ Rk[i].T, torch.eye(R), atol=1e-5)
        for j in range(4):
            if i != j:
                assert (Rk[i] @ Rk[j].T).abs().max() < 1e-5


def test_csreft_equals_the_gated_sum_of_subspace_edits():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    h = torch.randn(2, 4, D)
    out = cs(h)
    g = cs.last_gates  # [batch, k]
    Rk, W, b = cs.R, cs.W, cs.b
    expected = h.clone()
    for i in range(3):
        edit = (h @ W[i].T + b[i] - h @ Rk[i].T) @ Rk[i]
        expected = expected + g[:, i, None, None] * edit
    assert torch.allclose(out, expected, atol=1e-5)
    assert ((g >= 0) & (g <= 1)).all()


def test_csreft_all_gates_zero_is_exactly_the_identity():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    h = torch.randn(2, 4, D)
    with cs.force_gates([0, 0, 0]):
        assert torch.equal(cs(h), h)


def test_forcing_one_gate_applies_exactly_that_subspace():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    h = torch.randn(2, 4, D)
    with cs.force_gates([0, 1, 0]):
        out = cs(h)
    Rk, W, b = cs.R, cs.W, cs.b
    expected = h + (h @ W[1].T + b[1] - h @ Rk[1].T) @ Rk[1]
    assert torch.allclose(out, expected, atol=1e-5)
    assert cs.forced_gates is None  # restored after the block


def test_topk_gating_keeps_k_gates_and_hard_gating_thresholds_in_eval():
    top = _perturbed(cl.CSReFT(D, R, n_subspaces=4, gating="topk", top_k=2))
    top(torch.randn(5, 3, D))
    assert ((top.last_gates > 0).sum(-1) <= 2).all()
    hard = _perturbed(cl.CSReFT(D, R, n_subspaces=4, gating="hard")).eval()
    hard(torch.randn(5, 3, D))
    assert set(hard.last_gates.unique().tolist()) <= {0.0, 1.0}


def test_router_reads_the_masked_mean_of_the_positions():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=2))
    h = torch.randn(1, 4, D)
    mask = torch.tensor([[True, True, False, False]])
    noisy = h.clone()
    noisy[:, 2:] += 100.0  # masked positions must not change the gates
    assert torch.allclose(cs.gates(h, mask), cs.gates(noisy, mask))


def test_sparsity_penalty_is_lambda_times_mean_gate_sum():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3, sparsity=0.1))
    cs(torch.randn(4, 2, D))
    assert torch.allclose(cs.penalty(), 0.1 * cs.last_gates.sum(-1).mean())
    assert cl.CSReFT(D, R, n_subspaces=3).penalty() is None


def test_router_parameter_counts_linear_and_paper_mlp():
    assert sum(p.numel() for p in cl.Router(4096, 4).parameters()) == 4096 * 4 + 4
    paper = cl.Router(4096, 4, hidden=2048)
    assert sum(p.numel() for p in paper.parameters()) == 4096 * 2048 + 2048 + 2048 * 4 + 4  # ~8.4M


def test_bf16_inputs_come_back_in_bf16_with_float32_parameters():
    lo = _perturbed(cl.LoReFT(D, R))
    h = torch.randn(2, D).to(torch.bfloat16)
    out = lo(h)
    assert out.dtype == torch.bfloat16 and lo.W.dtype == torch.float32


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: cl.LoReFT(8, 9), "hidden size is only 8"),
        (lambda: cl.CSReFT(16, 4, n_subspaces=5), "20 orthonormal directions"),
        (lambda: cl.CSReFT(16, 2, gating="sharp"), "gating must be one of"),
        (lambda: cl.CSReFT(16, 2, n_subspaces=4, gating="topk"), "top_k"),
        (lambda: build("LoRA", {}), "Unknown intervention kind"),
    ],
)
def test_bad_construction_arguments_say_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_hidden_size_names_both_sizes():
    with pytest.raises(ValueError, match="hidden size 16.*last dimension 8"):
        cl.LoReFT(16, 2)(torch.randn(3, 8))


def test_force_gates_needs_one_value_per_subspace():
    cs = cl.CSReFT(16, 2, n_subspaces=3)
    with pytest.raises(ValueError, match="3 values"):
        with cs.force_gates([1, 0]):
            pass
