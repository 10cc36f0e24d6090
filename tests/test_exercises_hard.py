"""The hard exercises (●●●), one per notebook 01-04: each checker accepts the reference answer and another correct
one, names the typical wrong answers, falls back on an unsolved stub, and the notebooks' stubs match solutions/."""

import math

import pytest
import torch

from csreft_lite import checks
from solutions import nb01_interventions as s01
from solutions import nb02_loreft as s02
from solutions import nb03_subspaces as s03
from solutions import nb04_router as s04

from .notebook_stubs import assert_stubs_match


def _parallel_sum(R1, W1, b1, R2, W2, b2):
    return torch.cat([R1, R2]), torch.cat([W1, W2]), torch.cat([b1, b2])


def _reversed_order(R1, W1, b1, R2, W2, b2):
    R, W, b = s02.sequential_as_one(R2, W2, b2, R1, W1, b1)
    r = len(R1)
    return torch.cat([R[r:], R[:r]]), torch.cat([W[r:], W[:r]]), torch.cat([b[r:], b[:r]])


def _mutual_information(skills, subspaces):
    from collections import Counter

    n = len(skills)
    joint, a, c = Counter(zip(skills, subspaces)), Counter(skills), Counter(subspaces)
    return sum(v / n * math.log(v * n / (a[s] * c[x])) for (s, x), v in joint.items())


def _purity(skills, subspaces):
    from collections import Counter

    return sum(max(Counter(x for s, x in zip(skills, subspaces) if s == k).values()) for k in set(skills)) / len(skills)


def _nmi_dividing_by_zero(skills, subspaces):
    from collections import Counter

    n = len(skills)
    h = [-sum(v / n * math.log(v / n) for v in Counter(x).values()) for x in (skills, subspaces)]
    return _mutual_information(skills, subspaces) / ((h[0] + h[1]) / 2) if h[1] else 1 / 0  # no guard for H = 0


# exercise -> (reference, another correct answer, {wrong answer: the mistake the checker must name})
CASES = {
    "logit_lens": (s01.logit_lens, lambda model, h: model.get_output_embeddings()(model.model.norm(h)), {
        lambda model, h: model.lm_head(h): "no_norm",
        lambda model, h: torch.softmax(model.lm_head(model.model.norm(h)), -1): "probabilities",
        lambda model, h: model.lm_head(torch.nn.functional.layer_norm(h, h.shape[-1:])): "plain_layer_norm",
    }),
    "sequential_as_one": (s02.sequential_as_one, None, {
        _parallel_sum: "parallel_sum",
        _reversed_order: "wrong_order",
    }),
    "principal_cosines": (s03.principal_cosines, lambda A, B: torch.linalg.eigvalsh(A @ B.T @ B @ A.T).clamp(min=0).sqrt().flip(0), {
        lambda A, B: (A * B).sum(-1): "row_by_row",
        lambda A, B: torch.linalg.svdvals(A @ B.T) ** 2: "squared",
        lambda A, B: torch.linalg.svdvals(A @ B.T).flip(0): "unsorted",
    }),
    "routing_nmi": (s04.routing_nmi, lambda s, c: 2 * _mutual_information(s, c) / sum(
        -sum(v / len(x) * math.log(v / len(x)) for v in __import__("collections").Counter(x).values()) for x in (s, c))
        if len(set(s)) > 1 and len(set(c)) > 1 else 0.0, {
        _mutual_information: "unnormalised",
        _purity: "purity",
        _nmi_dividing_by_zero: "collapse",
    }),
}


def _checker(name):
    return getattr(checks, f"check_{name}")


@pytest.mark.parametrize("name", CASES)
def test_checker_accepts_the_reference_and_another_correct_answer(name, capsys):
    reference, other, _ = CASES[name]
    assert _checker(name)(reference) is reference
    if other is not None:
        assert _checker(name)(other) is other
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("name,wrong,mistake", [(n, w, m) for n, (_, _, ws) in CASES.items() for w, m in ws.items()])
def test_checker_names_the_typical_mistake(name, wrong, mistake):
    with pytest.raises(checks.ExerciseError) as err:
        _checker(name)(wrong)
    says = checks.HARD_MISTAKES[name][mistake][1]
    if mistake == "collapse":  # a check_exercise that calls the function before the properties reports the crash itself
        assert says in str(err.value) or "ZeroDivisionError" in str(err.value)
    else:
        assert says in str(err.value)
    assert "Hint:" in str(err.value)


@pytest.mark.parametrize("name", CASES)
def test_unsolved_stub_falls_back(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError  # your code here

    fallback = _checker(name)(stub)
    assert "not solved yet" in capsys.readouterr().out
    assert _checker(name)(fallback) is fallback, "what an unsolved exercise continues with must itself pass the check"


@pytest.mark.parametrize("name", CASES)
def test_the_fallback_without_solutions_passes_its_own_check(name):
    fallback, _ = checks.HARD_FALLBACKS[name]
    assert _checker(name)(fallback) is fallback


def test_every_mistake_the_guide_lists_is_tested():
    assert {n: set(m) for n, m in checks.HARD_MISTAKES.items()} == {
        n: set(ws.values()) | ({"not_orthonormal"} if n == "sequential_as_one" else set()) for n, (_, _, ws) in CASES.items()}


def test_the_sequential_edit_is_not_the_sum_of_the_two():
    """The point of notebook 02's hard exercise: edit 2 reads what edit 1 wrote, so the sum is wrong unless W2 R1ᵀ = 0."""
    from csreft_lite.interventions import orthonormal_rows

    torch.manual_seed(0)
    R = orthonormal_rows(torch.randn(4, 9))
    R1, R2, W1, W2, b1, b2 = R[:2], R[2:], torch.randn(2, 9), torch.randn(2, 9), torch.randn(2), torch.randn(2)
    h = torch.randn(5, 9)
    sequential = s02.loreft_edit(s02.loreft_edit(h, R1, W1, b1), R2, W2, b2)
    assert torch.allclose(s02.loreft_edit(h, *s02.sequential_as_one(R1, W1, b1, R2, W2, b2)), sequential, atol=1e-5)
    assert not torch.allclose(s02.loreft_edit(h, *_parallel_sum(R1, W1, b1, R2, W2, b2)), sequential, atol=1e-2)


NOTEBOOKS = {
    "01_hidden_state_interventions.ipynb": (s01, ["logit_lens"]),
    "02_orthonormal_loreft.ipynb": (s02, ["sequential_as_one"]),
    "03_multiple_subspaces.ipynb": (s03, ["principal_cosines"]),
    "04_router.ipynb": (s04, ["routing_nmi"]),
}


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_stub_matches_the_solution(notebook):
    module, names = NOTEBOOKS[notebook]
    assert_stubs_match(notebook, module, names)
