"""What the exercise checkers tell a learner beyond right and wrong: a function solved only for the first cases is
reported as partly solved, a wrong return type is named with the type expected, and the notebook's last line counts
the exercises that fell back to the reference solution."""

import ast
import sys
import inspect

import pytest
import torch

from csreft_lite import checks
from solutions import nb01_interventions as s01
from solutions import nb02_loreft as s02
from solutions import nb03_subspaces as s03
from solutions import nb04_router as s04

from .notebook_stubs import code_cells, stubs

NOTEBOOKS = {
    "01_hidden_state_interventions.ipynb": s01,
    "02_orthonormal_loreft.ipynb": s02,
    "03_multiple_subspaces.ipynb": s03,
    "04_router.ipynb": s04,
}


@pytest.fixture(autouse=True)
def _fresh_record():
    checks.OUTCOMES.clear()  # as in a fresh notebook kernel
    yield
    checks.OUTCOMES.clear()


def _stub(*args, **kwargs):
    raise NotImplementedError  # your code here


def _loreft_edit_for_one_vector_only(h, R, W, b):
    if h.dim() > 1:
        raise NotImplementedError  # batches: not written yet
    return s02.loreft_edit(h, R, W, b)


def test_a_function_that_stops_on_a_later_case_is_reported_as_partly_solved(capsys):
    assert checks.check_loreft_edit(_loreft_edit_for_one_vector_only) is s02.loreft_edit  # the reference, from here on
    out = capsys.readouterr().out
    assert "partly solved: passed 1 of 3 checks, then raised NotImplementedError on h of shape (3, 5, 8)" in out
    assert "not solved yet" not in out and "Continuing with the reference solution" in out


def test_a_function_that_stops_on_the_first_case_is_not_solved_yet(capsys):
    assert checks.check_loreft_edit(_stub) is s02.loreft_edit
    out = capsys.readouterr().out
    assert "not solved yet" in out and "partly" not in out


def test_summary_counts_what_fell_back_to_the_reference():
    checks.check_orthonormalize(_stub)
    checks.check_loreft_edit(_loreft_edit_for_one_vector_only)
    checks.check_loreft_parameters(s02.loreft_parameters)
    assert checks.summary() == ("Exercises: 1 of 3 solved by you; 2 used the reference solution (not solved yet: "
                                "orthonormalize; partly solved: loreft_edit after 1 of 3 checks passed).")


def test_summary_of_a_notebook_as_committed_and_as_solved():
    for name in ("steer", "difference_of_means"):
        getattr(checks, f"check_{name}")(_stub)
    assert checks.summary() == ("Exercises: 0 of 2 solved by you; 2 used the reference solution "
                                "(not solved yet: steer, difference_of_means).")
    checks.check_steer(s01.steer)  # solving an exercise and running its check again replaces its outcome
    checks.check_difference_of_means(s01.difference_of_means)
    assert checks.summary() == "Exercises: 2 of 2 solved by you; none used the reference solution."


def test_summary_names_a_check_that_still_fails():
    checks.check_steer(s01.steer)
    with pytest.raises(checks.ExerciseError):
        checks.check_difference_of_means(lambda a, b: b.mean(0) - a.mean(0))
    assert checks.summary() == ("Exercises: 1 of 2 solved by you; none used the reference solution; "
                                "1 still fails its check (difference_of_means).")


def test_summary_before_any_check():
    assert "none checked yet" in checks.summary()


# checker, a function returning the wrong type, what the message must say
WRONG_TYPES = [
    (checks.check_steer, lambda h, v, s, positions=None: (h + s * v).tolist(),
     "expected a torch.Tensor of shape (2, 5, 8), got a list of 2 items"),
    (checks.check_orthonormalize, lambda A: torch.linalg.qr(A.T),
     "expected a torch.Tensor of shape (2, 3), got a tuple (torch.return_types.linalg_qr) of 2 items"),
    (checks.check_loreft_edit, lambda h, R, W, b: None,
     "expected a torch.Tensor of shape (8,), got None"),
    (checks.check_loreft_parameters, lambda d, r, n: float(n * (2 * r * d + r)), "expected an int, got a float"),
    (checks.check_interference, lambda alone, mixed: list(s03.interference(alone, mixed).items()),
     "expected a dict with keys ['a', 'b', 'mean'], got a list of 3 items"),
    (checks.check_orthogonal_subspaces, lambda raw: list(s03.orthogonal_subspaces(raw)),
     "expected a torch.Tensor of shape (2, 3, 8), got a list of 2 items"),
    (checks.check_subspace_overlap, lambda R: {"overlap": s03.subspace_overlap(R)},
     "expected a torch.Tensor of shape (3, 3), got a dict"),
    (checks.check_balance_term, lambda p: s04.balance_term(p).item(),
     "expected a scalar torch.Tensor (shape ()), got a float"),
]


@pytest.mark.parametrize("checker, wrong, message", WRONG_TYPES, ids=[c.__name__.removeprefix("check_") for c, _, _ in WRONG_TYPES])
def test_a_wrong_return_type_is_named_with_the_type_expected(checker, wrong, message):
    with pytest.raises(checks.ExerciseError) as err:
        checker(wrong)
    assert message in str(err.value)


def _return_type(fn) -> str:
    annotation = inspect.signature(fn).return_annotation
    return annotation if isinstance(annotation, str) else ("torch.Tensor" if annotation is torch.Tensor else annotation.__name__)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_stub_says_the_type_its_checker_requires(notebook):
    for name, stub in stubs(notebook).items():
        expected = _return_type(getattr(NOTEBOOKS[notebook], name))
        assert expected in (ast.get_docstring(stub) or ""), f"{notebook}: the stub {name} does not say it returns {expected}"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_notebook_with_exercises_ends_with_the_summary_line(notebook):
    assert "print(checks.summary())" in code_cells(notebook)[-1]


# ---- the two checkers that rejected right answers or accepted wrong ones (issue 28) ----------------------------------


def test_interference_accepts_the_mean_as_a_difference_of_the_two_means():
    """The exercise promises both dicts carry "mean"; alone["mean"] − mixed["mean"] is then the mean of the drops."""
    def by_means(acc_alone, acc_mixed):
        drops = {s: acc_alone[s] - acc_mixed[s] for s in acc_alone if s != "mean"}
        return {**drops, "mean": acc_alone["mean"] - acc_mixed["mean"]}

    assert checks.check_interference(by_means) is by_means


def test_orthogonal_subspaces_rejects_rows_dealt_to_the_wrong_subspaces():
    """Orthonormal together and spanning raw, but subspace 0 no longer spans raw[0]: freeze_subspaces relies on it."""
    with pytest.raises(checks.ExerciseError, match="in order"):
        checks.check_orthogonal_subspaces(lambda raw: s03.orthogonal_subspaces(raw.flip(0)).flip(0))


# ---- hints in two tiers -----------------------------------------------------------------------------------------------


def test_the_first_failure_nudges_and_a_second_failure_gives_the_recipe():
    def wrong(h, R, W, b, g):
        return 2 * s04.gated_edit(h, R, W, b, g)

    for attempt in (1, 2):
        with pytest.raises(checks.ExerciseError) as err:
            checks.check_gated_edit(wrong)
        nudge, recipe = checks.HINTS["gated_edit"]
        assert nudge in str(err.value)
        assert (recipe in str(err.value)) == (attempt == 2)
    checks.check_gated_edit(s04.gated_edit)  # solving it resets the tier
    with pytest.raises(checks.ExerciseError) as err:
        checks.check_gated_edit(wrong)
    assert checks.HINTS["gated_edit"][1] not in str(err.value)


def test_every_checker_has_two_tiers_of_hints_and_its_mistakes_listed():
    exercises = {name.removeprefix("check_") for name in dir(checks) if name.startswith("check_") and name != "check_exercise"}
    assert exercises == set(checks.HINTS) == set(checks.FALLBACKS)
    assert set(checks.MISTAKES) <= exercises
    for name, mistakes in checks.MISTAKES.items():
        assert mistakes and all(m.what and m.says for m in mistakes.values()), name


# ---- without solutions/ (a student release) ---------------------------------------------------------------------------


@pytest.fixture
def no_solutions(monkeypatch):
    """As in a student release: `import solutions` fails."""
    for name in [m for m in sys.modules if m == "solutions" or m.startswith("solutions.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "solutions", None)
    assert not checks.solutions_available()


REFERENCES = {name: getattr(module, name) for module in (s01, s02, s03, s04) for name in checks.FALLBACKS if hasattr(module, name)}


@pytest.mark.parametrize("name", sorted(checks.FALLBACKS))
def test_without_solutions_every_reference_answer_still_passes(name, no_solutions, capsys):
    """The checkers compare with the library's fallback instead; it agrees with the reference on every case."""
    answer = REFERENCES[name]
    assert getattr(checks, f"check_{name}")(answer) is answer
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(checks.FALLBACKS))
def test_without_solutions_a_stub_continues_with_the_library_not_the_reference(name, no_solutions, capsys):
    assert getattr(checks, f"check_{name}")(_stub) is checks.FALLBACKS[name][0]
    out = capsys.readouterr().out
    assert "not solved yet" in out and "library's own implementation" in out and "solutions/" not in out
    assert "used the library's implementation" in checks.summary()


@pytest.mark.parametrize("name", sorted(checks.FALLBACKS))
def test_without_solutions_a_wrong_answer_still_fails(name, no_solutions):
    wrong = {"loreft_parameters": lambda d, r, n: 0, "interference": lambda a, m: {**a}, "routing_nmi": lambda s, c: 0.5,
             "sequential_as_one": lambda *a: tuple(t + 1.0 for t in REFERENCES[name](*a))}.get(name)
    if wrong is None:
        def wrong(*args):
            out = REFERENCES[name](*args)
            return out + 1.0 if torch.is_tensor(out) else out
    with pytest.raises(checks.ExerciseError):
        getattr(checks, f"check_{name}")(wrong)


def test_the_fallbacks_agree_with_the_references_on_larger_inputs():
    """What the notebooks feed them: the course model's width, batches and ranks the checkers' cases do not use."""
    torch.manual_seed(0)
    h, R_raw = torch.randn(4, 7, 576), torch.randn(3, 4, 576)
    R = s03.orthogonal_subspaces(R_raw)
    W, b, g = torch.randn(3, 4, 576), torch.randn(3, 4), torch.rand(28, 3)
    pairs = {
        "steer": ((h, h[0, 0], 4.0, slice(-2, None)), {}),
        "difference_of_means": ((h[0], h[1]), {}),
        "loreft_edit": ((h, R[0], W[0], b[0]), {}),
        "orthogonal_subspaces": ((R_raw,), {}),
        "subspace_overlap": ((R,), {}),
        "gated_edit": ((h.reshape(-1, 576), R, W, b, g), {}),
        "instruction_summary": ((h, torch.tensor([[1, 5], [0, 7], [3, 4], [2, 6]])), {}),
        "balance_term": ((torch.softmax(torch.randn(16, 3), -1),), {}),
        "loreft_parameters": ((576, 4, 2), {}),
    }
    for name, (args, kwargs) in pairs.items():
        got, want = checks.FALLBACKS[name][0](*args, **kwargs), REFERENCES[name](*args, **kwargs)
        if name == "orthogonal_subspaces":  # another basis of the same nested spans is right: compare projections
            got, want = [x.flatten(0, 1).T @ x.flatten(0, 1) for x in (got, want)]
        assert checks.compare(got, want, atol=1e-4) is None, name
