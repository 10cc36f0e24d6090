"""What the exercise checkers tell a learner beyond right and wrong: a wrong return type is named with the type
expected, and every stub says the type its checker requires."""

import ast
import inspect

import pytest
import torch

from csreft_lite import checks
from solutions import nb01_interventions as s01
from solutions import nb02_loreft as s02
from solutions import nb03_subspaces as s03
from solutions import nb04_router as s04

from .notebook_stubs import stubs

NOTEBOOKS = {
    "01_hidden_state_interventions.ipynb": s01,
    "02_orthonormal_loreft.ipynb": s02,
    "03_multiple_subspaces.ipynb": s03,
    "04_router.ipynb": s04,
}


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
