"""Checkers of notebooks 03 and 04: the reference passes, a plausible wrong answer fails with a
clear message, an unsolved stub falls back to the reference, and stubs match the solutions."""


import pytest
import torch

from csreft_lite import checks
from solutions import nb03_subspaces as nb03
from solutions import nb04_router as nb04

from .notebook_stubs import assert_stubs_match


@pytest.fixture(autouse=True)
def _fresh_kernel():
    checks.OUTCOMES.clear()  # each test starts as a fresh notebook kernel (the hints' tier counts failures)
    yield
    checks.OUTCOMES.clear()


# Plausible mistakes, one per exercise (the kind a learner makes first).
def _drop_wrong_sign(acc_alone, acc_mixed):
    drops = {s: acc_mixed[s] - acc_alone[s] for s in acc_alone if s != "mean"}
    return {**drops, "mean": sum(drops.values()) / len(drops)}


def _orthonormal_within_each_only(raw):
    return torch.stack([torch.linalg.qr(basis.T)[0].T for basis in raw])


def _overlap_not_normalised(R):
    return torch.einsum("ird,jsd->ijrs", R, R).pow(2).sum((-1, -2)).sqrt()


def _edit_without_subtraction(h, R, W, b, g):
    z = torch.einsum("nd,krd->nkr", h, W) + b
    return h + torch.einsum("nkr,krd->nd", z * g.unsqueeze(-1), R)


def _summary_of_every_token(h, spans):
    return torch.nn.functional.layer_norm(h, (h.shape[-1],)).mean(1)


def _summary_without_normalising_each_token(h, spans):
    positions = torch.arange(h.shape[1])
    m = ((positions >= spans[:, :1]) & (positions < spans[:, 1:])).to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


def _balance_with_the_sign_flipped(probs):
    return -nb04.balance_term(probs)


def _balance_without_normalising(probs):
    def entropy(p):
        return -(p * p.clamp_min(1e-12).log()).sum(-1)

    return entropy(probs).mean() - entropy(probs.mean(0))


def _balance_with_log_of_zero(probs):
    """The natural first answer: right wherever no probability is exactly 0, nan where one is."""
    q = probs / probs.sum(-1, keepdim=True)

    def entropy(p):
        return -(p * p.log()).sum(-1)

    return entropy(q).mean() - entropy(q.mean(0))


def _balance_in_bits(probs):
    return nb04.balance_term(probs) / torch.log(torch.tensor(2.0))


def _summary_with_the_end_token(h, spans):
    return nb04.instruction_summary(h, torch.stack([spans[:, 0], (spans[:, 1] + 1).clamp(max=h.shape[1])], 1))


def _summary_normalised_after_the_mean(h, spans):
    return torch.nn.functional.layer_norm(_summary_without_normalising_each_token(h, spans), (h.shape[-1],))


def _overlap_divided_by_r(R):
    return _overlap_not_normalised(R) / R.shape[1]


def _edit_without_gates(h, R, W, b, g):
    return nb04.gated_edit(h, R, W, b, torch.ones_like(g))


def _interference_relative(acc_alone, acc_mixed):
    drops = {s: (acc_alone[s] - acc_mixed[s]) / acc_alone[s] for s in acc_alone if s != "mean"}
    return {**drops, "mean": sum(drops.values()) / len(drops)}


# checker, reference, a wrong answer learners write, what the message must say
EXERCISES = [
    (checks.check_interference, nb03.interference, _drop_wrong_sign, checks.says("interference", "sign")),
    (checks.check_interference, nb03.interference, _interference_relative, checks.says("interference", "relative")),
    (checks.check_orthogonal_subspaces, nb03.orthogonal_subspaces, _orthonormal_within_each_only, "not orthogonal to each other"),
    (checks.check_subspace_overlap, nb03.subspace_overlap, _overlap_not_normalised, checks.says("subspace_overlap", "not_normalised")),
    (checks.check_subspace_overlap, nb03.subspace_overlap, _overlap_divided_by_r, checks.says("subspace_overlap", "divided_by_r")),
    (checks.check_gated_edit, nb04.gated_edit, _edit_without_subtraction, checks.says("gated_edit", "no_subtract")),
    (checks.check_gated_edit, nb04.gated_edit, _edit_without_gates, checks.says("gated_edit", "gates_ignored")),
    (checks.check_instruction_summary, nb04.instruction_summary, _summary_of_every_token, checks.says("instruction_summary", "every_token")),
    (checks.check_instruction_summary, nb04.instruction_summary, _summary_without_normalising_each_token,
     checks.says("instruction_summary", "no_layer_norm")),
    (checks.check_instruction_summary, nb04.instruction_summary, _summary_with_the_end_token, checks.says("instruction_summary", "end_inclusive")),
    (checks.check_instruction_summary, nb04.instruction_summary, _summary_normalised_after_the_mean,
     checks.says("instruction_summary", "norm_after_mean")),
    (checks.check_balance_term, nb04.balance_term, _balance_with_the_sign_flipped, checks.says("balance_term", "sign")),
    (checks.check_balance_term, nb04.balance_term, _balance_without_normalising, "do not sum to 1"),
    (checks.check_balance_term, nb04.balance_term, _balance_with_log_of_zero, "0 · log 0"),
    (checks.check_balance_term, nb04.balance_term, _balance_in_bits, checks.says("balance_term", "log2")),
]
IDS = [f"{solution.__name__}-{wrong.__name__}" for _, solution, wrong, _ in EXERCISES]


@pytest.mark.parametrize("checker, solution, wrong, message", EXERCISES, ids=IDS)
def test_checker_accepts_the_reference(checker, solution, wrong, message, capsys):
    assert checker(solution) is solution
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("checker, solution, wrong, message", EXERCISES, ids=IDS)
def test_checker_rejects_a_wrong_answer_and_says_where(checker, solution, wrong, message):
    with pytest.raises(checks.ExerciseError) as info:
        checker(wrong)
    text = str(info.value)
    assert message in text and "Hint:" in text


@pytest.mark.parametrize("checker, solution, wrong, message", EXERCISES, ids=IDS)
def test_unsolved_stub_falls_back_to_the_reference(checker, solution, wrong, message, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError  # your code

    assert checker(stub) is solution
    assert "not solved yet" in capsys.readouterr().out


def test_orthogonal_subspaces_accepts_any_valid_bases():
    """Many answers are right: a rotation inside each subspace (here a sign flip) still passes."""
    def flipped(raw):
        return -nb03.orthogonal_subspaces(raw)

    assert checks.check_orthogonal_subspaces(flipped) is flipped


def test_orthogonal_subspaces_rejects_bases_unrelated_to_raw():
    def standard_basis(raw):
        k, r, d = raw.shape
        return torch.eye(d)[: k * r].reshape(k, r, d)

    with pytest.raises(checks.ExerciseError, match="do not span"):
        checks.check_orthogonal_subspaces(standard_basis)


def test_references_match_the_library():
    """The exercises are what cl.CSReFT, ReftModel's router input and cl.balance_loss compute, so the notebook's
    claim "your functions = the library" holds."""
    from csreft_lite import CSReFT, balance_loss
    from csreft_lite.hooks import span_mask

    torch.manual_seed(0)
    cs = CSReFT(16, rank=2, n_subspaces=3)
    with torch.no_grad():
        for i in range(3):  # W starts at R and b at 0 (a zero edit): move them so the edit is not the identity
            R_raw, W, b = cs.subspace(i)
            W.add_(0.3 * torch.randn_like(W))
            b.add_(torch.randn_like(b))
    h = torch.randn(2, 5, 16)
    g = torch.rand(2, 3)
    out = cs(h, gates=g)
    ours = torch.stack([nb04.gated_edit(h[i], cs.R, cs.W, cs.b, g[i].expand(5, 3)) for i in range(2)])
    assert torch.allclose(out, ours, atol=1e-5)
    spans = torch.tensor([[1, 4], [0, 2]])
    m = span_mask(torch.ones(2, 5, dtype=torch.long), spans).unsqueeze(-1)  # what ReftModel._route averages over
    tokens = torch.nn.functional.layer_norm(h, (16,))
    assert torch.allclose((tokens * m).sum(1) / m.sum(1), nb04.instruction_summary(h, spans), atol=1e-6)
    probs = torch.rand(6, 3)
    assert torch.allclose(balance_loss(probs), nb04.balance_term(probs), atol=1e-6)


def test_reference_overlap_of_csreft_bases_is_the_identity():
    from csreft_lite import CSReFT

    overlap = nb03.subspace_overlap(CSReFT(32, rank=4, n_subspaces=4).R.detach())
    assert torch.allclose(overlap, torch.eye(4), atol=1e-5)


@pytest.mark.parametrize(
    "notebook, module, names",
    [
        ("03_multiple_subspaces.ipynb", nb03, ["interference", "orthogonal_subspaces", "subspace_overlap"]),
        ("04_router.ipynb", nb04, ["gated_edit", "instruction_summary", "balance_term"]),
    ],
)
def test_notebook_stubs_have_the_solutions_signatures(notebook, module, names):
    assert_stubs_match(notebook, module, names)
