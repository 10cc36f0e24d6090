"""Interventions on plain tensors: the formulas, orthonormality under training, and CS-ReFT's gates."""

import pytest
import torch

import csreft_lite as cl
from csreft_lite.reft_model import build, settings
from csreft_lite.interventions import orthonormal_rows

from .tiny import perturbed as _perturbed

D, R = 16, 3


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
    g = torch.rand(2, 3)  # [batch, k]
    out = cs(h, gates=g)
    Rk, W, b = cs.R, cs.W, cs.b
    expected = h.clone()
    for i in range(3):
        edit = (h @ W[i].T + b[i] - h @ Rk[i].T) @ Rk[i]
        expected = expected + g[:, i, None, None] * edit
    assert torch.allclose(out, expected, atol=1e-5)
    rows = cs(h.reshape(8, D), gates=g.repeat_interleave(4, 0))  # [n, d] rows, one gate vector each
    assert torch.allclose(rows, out.reshape(8, D), atol=1e-5)


def test_csreft_all_gates_zero_is_exactly_the_identity():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    h = torch.randn(2, 4, D)
    assert torch.equal(cs(h, gates=torch.zeros(3)), h)


def test_one_gate_applies_exactly_that_subspace():
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    h = torch.randn(2, 4, D)
    out = cs(h, gates=torch.tensor([0.0, 1.0, 0.0]))
    Rk, W, b = cs.R, cs.W, cs.b
    expected = h + (h @ W[1].T + b[1] - h @ Rk[1].T) @ Rk[1]
    assert torch.allclose(out, expected, atol=1e-5)


def test_csreft_without_gates_or_with_the_wrong_number_says_what_to_pass():
    cs = cl.CSReFT(D, R, n_subspaces=3)
    with pytest.raises(ValueError, match="needs gates"):
        cs(torch.randn(2, 4, D))
    with pytest.raises(ValueError, match=r"3 subspaces.*pass \[2, 3\]"):
        cs(torch.randn(2, 4, D), gates=torch.ones(2, 2))


def test_topk_gates_are_one_hot_forward_with_the_probabilities_gradient():
    router = _perturbed(cl.Router(D, 4, gating="topk", top_k=1))
    x = torch.randn(6, D)
    g, p = router(x, with_probs=True)
    assert torch.equal(g.detach(), torch.nn.functional.one_hot(p.argmax(-1), 4).float())
    assert torch.allclose(p.sum(-1), torch.ones(6))  # softmax
    weights = torch.randn(6, 4)
    (grad_g,) = torch.autograd.grad((g * weights).sum(), router.net.weight)
    (grad_p,) = torch.autograd.grad((router.probabilities(x) * weights).sum(), router.net.weight)
    assert torch.allclose(grad_g, grad_p)  # straight-through: the backward pass of the probabilities
    two = _perturbed(cl.Router(D, 4, gating="topk", top_k=2))
    assert (two(x).detach().sum(-1) == 2).all()


def test_soft_gates_are_sigmoids_and_hard_gates_threshold_them_at_one_half():
    soft = _perturbed(cl.Router(D, 3, gating="soft"))
    hard = cl.Router(D, 3, gating="hard")
    hard.load_state_dict(soft.state_dict())
    x = torch.randn(8, D)
    p = torch.sigmoid(soft.net(torch.nn.functional.layer_norm(x, (D,)) / D**0.5))  # features: layer norm, unit length
    assert torch.allclose(soft(x), p, atol=1e-6)
    assert torch.equal(hard(x).detach(), (p > 0.5).float())
    assert torch.equal(hard.train()(x).detach(), hard.eval()(x).detach())  # the same in training and evaluation


def test_balance_loss_against_an_independent_computation():
    import numpy as np

    probs = torch.rand(5, 3) + 0.01
    q = (probs / probs.sum(-1, keepdim=True)).double().numpy()

    def entropy(row):
        return -sum(x * np.log(x) for x in row)

    expected = np.mean([entropy(row) for row in q]) - entropy(q.mean(0))
    assert abs(cl.balance_loss(probs).item() - expected) < 1e-6
    k = 4
    one_each = torch.eye(k).repeat(3, 1)  # 12 inputs, each sure of its subspace, all subspaces equally used
    assert abs(cl.balance_loss(one_each).item() + np.log(k)) < 1e-5  # the minimum, −log k
    collapsed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(6, 1)  # every input the same distribution
    assert abs(cl.balance_loss(collapsed).item()) < 1e-6  # 0: router collapse


def test_router_penalty_is_sparsity_plus_balance_of_the_probabilities():
    router = _perturbed(cl.Router(D, 3, gating="soft", sparsity=0.1, balance=2.0))
    gates, p = router(torch.randn(4, D), with_probs=True)
    assert torch.equal(gates, p)  # soft gates are the probabilities
    assert torch.allclose(router.penalty(p), 0.1 * p.sum(-1).mean() + 2.0 * cl.balance_loss(p))
    assert cl.Router(D, 3, balance=0.0).penalty(p) is None
    assert cl.Router(D, 3).balance == 1.0  # the default: without it top-1 routing collapses


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
        (lambda: cl.Router(16, 2, gating="sharp"), "gating must be one of"),
        (lambda: cl.Router(16, 4, gating="topk", top_k=5), "top_k"),
        (lambda: build("LoRA", {}), "Unknown intervention kind"),
        (lambda: cl.LoReFT(32.5, 2), r"LoReFT: d_model must be a positive whole number, got 32.5"),
        (lambda: cl.CSReFT(32, 2, n_subspaces=0), "n_subspaces must be a positive whole number"),
        (lambda: cl.Router(16, 2, balance=-1), r"balance is the weight of a penalty, a number >= 0.*got -1"),
        (lambda: cl.Router(16, 2, sparsity=float("nan")), "sparsity is the weight of a penalty"),
    ],
)
def test_bad_construction_arguments_say_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_hidden_size_names_both_sizes():
    with pytest.raises(ValueError, match="hidden size 16.*last dimension 8"):
        cl.LoReFT(16, 2)(torch.randn(3, 8))


def _train_steps(cs, optimizer, steps, gates, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, target = torch.randn(8, D, generator=g), torch.randn(8, D, generator=g)
    for _ in range(steps):
        loss = (cs(h, gates=gates) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _subspace_values(cs, i):
    return [t.detach().clone() for t in (cs.R[i], cs.W[i], cs.b[i], *cs.subspace(i))]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("earlier_steps", [0, 5])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_frozen_subspace_stays_bit_for_bit_whatever_the_optimiser(index, earlier_steps, weight_decay):
    """QR turns later rows against earlier ones, and AdamW's decay and moments move a parameter whose gradient is
    zero: neither may touch a frozen subspace, whichever it is, after steps with the same optimiser or not."""
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    optimizer = torch.optim.AdamW(cs.parameters(), lr=1e-2, weight_decay=weight_decay)
    _train_steps(cs, optimizer, earlier_steps, torch.ones(3), seed=2)  # moments for every subspace
    R_before = cs.R.detach().clone()
    cs.freeze_subspaces(index)
    assert torch.allclose(cs.R, R_before, atol=1e-6)  # freezing itself moves no basis (up to float rounding)
    before = _subspace_values(cs, index)
    others = [i for i in range(3) if i != index]
    others_before = [_subspace_values(cs, i) for i in others]
    _train_steps(cs, optimizer, 20, torch.ones(3))  # every gate open: the frozen subspace is in the computation
    assert all(torch.equal(a, b) for a, b in zip(before, _subspace_values(cs, index)))
    for i, old in zip(others, others_before):
        assert not torch.allclose(cs.W[i], old[1])  # the others did learn
    Rk = cs.R.detach()
    assert torch.allclose(Rk.reshape(-1, D) @ Rk.reshape(-1, D).T, torch.eye(3 * R), atol=1e-5)  # still orthonormal


def test_without_freezing_a_shut_gate_does_not_protect_a_subspace():
    """Why freezing is needed: with gate 0 shut, training the others still moves subspace 0's basis (QR)."""
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    h, target = torch.randn(8, D), torch.randn(8, D)
    (cs(h, gates=torch.tensor([0.0, 1.0, 1.0])) - target).pow(2).mean().backward()
    assert cs.subspace(0)[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="subspaces 0 to 2; cannot freeze 3"):
        cs.freeze_subspaces(3)


def test_frozen_subspaces_train_nothing_and_are_not_counted_as_trainable():
    cs = cl.CSReFT(D, R, n_subspaces=3)
    per_subspace = R * D * 2 + R
    assert sum(p.numel() for p in cs.parameters() if p.requires_grad) == 3 * per_subspace
    cs.freeze_subspaces(0, 2)
    assert cs.frozen == (0, 2)
    assert sum(p.numel() for p in cs.parameters() if p.requires_grad) == per_subspace
    assert settings(cs)["frozen"] == [0, 2]


def test_the_state_dict_holds_each_subspace_s_own_parameters_and_round_trips():
    """Format 3: a CS-ReFT's state dict is its parameters as they are (R_raw_i [r, d], W_i [r, d], b_i [r]); format 2's
    stacked layout is read by checkpoint.py (tests/test_reft_model.py loads checkpoints the old code wrote)."""
    cs = _perturbed(cl.CSReFT(D, R, n_subspaces=3))
    state = cs.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        f"{name}_{i}": shape for i in range(3) for name, shape in (("R_raw", (R, D)), ("W", (R, D)), ("b", (R,)))}
    fresh = cl.CSReFT(D, R, n_subspaces=3)
    fresh.load_state_dict(state)
    h, g = torch.randn(2, 4, D), torch.rand(2, 3)
    assert torch.equal(fresh(h, gates=g), cs(h, gates=g))
    with pytest.raises(RuntimeError, match="size mismatch for W_1"):
        fresh.load_state_dict({**state, "W_1": state["W_1"][:1]})


def test_kmeans_finds_well_separated_groups_and_picks_the_best_restart():
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(3, 8, generator=g)
    truth = torch.arange(3).repeat_interleave(20)
    x = centres[truth] + 0.3 * torch.randn(60, 8, generator=g)
    _, assign = cl.kmeans(x, 3)
    pairs = {(int(a), int(t)) for a, t in zip(assign, truth)}
    assert len(pairs) == 3  # one cluster per group, whatever the numbering
    with pytest.raises(ValueError, match="1 <= k <= the number of points"):
        cl.kmeans(x[:2], 3)


def test_router_started_from_clusters_routes_each_cluster_to_its_own_subspace_with_the_asked_confidence():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, D, generator=g)
    truth = torch.arange(3).repeat_interleave(10)
    x = 4 * centres[truth] + torch.randn(30, D, generator=g)
    router = cl.Router(D, 3, gating="topk")
    assign = router.init_from_clusters(x, confidence=0.8)
    probs = router.probabilities(x)
    assert torch.equal(probs.argmax(-1), assign)
    assert len({(int(a), int(t)) for a, t in zip(assign, truth)}) == 3
    assert abs(probs.gather(1, assign[:, None]).mean().item() - 0.8) < 1e-3
    with pytest.raises(ValueError, match="linear top-k router"):
        cl.Router(D, 3, gating="soft").init_from_clusters(x)
