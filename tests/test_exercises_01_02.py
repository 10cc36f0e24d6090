"""Exercises of notebooks 01 and 02: every checker accepts the reference solution, rejects a
plausible wrong answer with ExerciseError, and falls back to the reference on an unsolved stub;
the notebooks' stubs keep the names and signatures of the functions in solutions/."""


import pytest
import torch

from csreft_lite import checks
from csreft_lite.hooks import hidden_of
from csreft_lite.models import decoder_layers
from solutions import nb01_interventions as s01
from solutions import nb02_loreft as s02

from .notebook_stubs import assert_stubs_match


@pytest.fixture(autouse=True)
def _fresh_kernel():
    checks.OUTCOMES.clear()  # each test starts as a fresh notebook kernel (the hints' tier counts failures)
    yield
    checks.OUTCOMES.clear()

NOTEBOOKS = {
    "01_hidden_state_interventions.ipynb": (s01, ["record_hidden", "difference_of_means", "steer"]),
    "02_orthonormal_loreft.ipynb": (s02, ["orthonormalize", "loreft_edit", "loreft_parameters"]),
}


def _record_without_remove(model, layer, input_ids):
    store = {}
    decoder_layers(model)[layer].register_forward_hook(lambda m, a, out: store.update(h=hidden_of(out).detach()))
    with torch.no_grad():
        model(input_ids=input_ids)
    return store["h"]


def _record_input(model, layer, input_ids):
    store = {}
    handle = decoder_layers(model)[layer].register_forward_hook(lambda m, args, out: store.update(h=args[0].detach()))
    with torch.no_grad():
        model(input_ids=input_ids)
    handle.remove()
    return store["h"]


def _record_through_hidden_states(model, layer, input_ids):
    """The common shortcut: right on every layer but the last, whose entry comes after the final norm."""
    with torch.no_grad():
        return model(input_ids=input_ids, output_hidden_states=True).hidden_states[layer + 1]


def _steer_in_place(h, vector, scale, positions=None):
    h[:, slice(None) if positions is None else positions] += scale * vector
    return h


def _gram_schmidt_without_orthogonalising(A):
    return A / A.norm(dim=1, keepdim=True)


# checker name -> (reference, wrong answers that must fail)
CASES = {
    "record_hidden": (s01.record_hidden, [_record_without_remove, _record_input, _record_through_hidden_states]),
    "steer": (s01.steer, [
        lambda h, v, s, positions=None: s01.steer(h, v, -s, positions),  # subtracts
        lambda h, v, s, positions=None: h + s * v,  # ignores positions
        _steer_in_place,  # right values, but edits its input
    ]),
    "difference_of_means": (s01.difference_of_means, [
        lambda a, b: b.mean(0) - a.mean(0),  # wrong sign
        lambda a, b: a.mean(-1) - b.mean(-1),  # wrong dimension
    ]),
    "orthonormalize": (s02.orthonormalize, [
        _gram_schmidt_without_orthogonalising,
        lambda A: torch.linalg.qr(A.T)[0],  # forgets to transpose back
        lambda A: torch.eye(A.shape[1])[: A.shape[0]],  # orthonormal, but another subspace
    ]),
    "loreft_edit": (s02.loreft_edit, [
        lambda h, R, W, b: h + (h @ W.T + b) @ R,  # forgets − R h
        lambda h, R, W, b: h + (h @ W.T + b - h @ R.T) @ R * 0.5,
        lambda h, R, W, b: (h @ W.T + b - h @ R.T) @ R,  # returns the change only
    ]),
    "loreft_parameters": (s02.loreft_parameters, [
        lambda d, r, n: n * (2 * r * d + 2 * r),  # counts the bias twice
        lambda d, r, n: n * (r * d + r),  # forgets W
        lambda d, r, n: 2 * r * d + r,  # one intervention only
    ]),
}


def _checker(name):
    return getattr(checks, f"check_{name}")


@pytest.mark.parametrize("name", CASES)
def test_checker_accepts_the_reference(name, capsys):
    reference, _ = CASES[name]
    assert _checker(name)(reference) is reference
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("name,wrong", [(n, w) for n, (_, ws) in CASES.items() for w in ws])
def test_checker_rejects_a_wrong_answer(name, wrong):
    with pytest.raises(checks.ExerciseError) as err:
        _checker(name)(wrong)
    assert "Hint:" in str(err.value)


@pytest.mark.parametrize("name", CASES)
def test_unsolved_stub_falls_back_to_the_reference(name, capsys):
    reference, _ = CASES[name]

    def stub(*args, **kwargs):
        raise NotImplementedError  # your code here

    assert _checker(name)(stub) is reference
    assert "not solved yet" in capsys.readouterr().out


def test_orthonormalize_accepts_any_valid_basis():
    import csreft_lite as cl

    checks.check_orthonormalize(cl.orthonormal_rows)  # QR with sign fixes: another basis, same span
    checks.check_orthonormalize(lambda A: -s02.orthonormalize(A))


def test_wrong_answer_messages_do_not_print_the_expected_count():
    with pytest.raises(checks.ExerciseError) as err:
        checks.check_loreft_parameters(lambda d, r, n: n * (2 * r * d + 2 * r))
    assert str(s02.loreft_parameters(576, 4, 1)) not in str(err.value)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_stubs_match_solutions(notebook):
    module, names = NOTEBOOKS[notebook]
    assert_stubs_match(notebook, module, names)


def test_record_hidden_through_hidden_states_is_told_about_the_final_norm(capsys):
    """hidden_states[layer + 1] passes layers 0 and 1; on the last layer the message must say why it fails."""
    with pytest.raises(checks.ExerciseError) as err:
        checks.check_record_hidden(_record_through_hidden_states)
    assert "its last layer (2)" in str(err.value) and "final norm" in str(err.value)
