"""Exercise checkers for the notebooks: run the learner's function on cases, compare with the
reference answer, and say precisely what is wrong, without printing the answer.

Pattern (one per exercise, see ``check_exercise``)::

    def loreft_edit(h, R, W, b):
        raise NotImplementedError  # your code here

    loreft_edit = checks.check_loreft_edit(loreft_edit)   # prints ✓, or says what is wrong

An unsolved stub (it raises ``NotImplementedError``) does not break the notebook: the checker
says so and returns the reference solution from ``solutions/``, so later cells still run.
A wrong answer raises ``ExerciseError`` with expected-vs-got on the failing case and a hint.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


class ExerciseError(AssertionError):
    """The learner's answer is wrong; the message says on which case and how."""


@dataclass
class Case:
    """One input to an exercise: positional ``args`` and a short ``description`` shown on failure."""

    args: tuple
    description: str
    kwargs: dict = field(default_factory=dict)


def reference(path: str) -> Callable:
    """Load a reference solution, ``"module:function"`` inside the ``solutions`` package."""
    module, name = path.split(":")
    return getattr(importlib.import_module(f"solutions.{module}"), name)


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__


def compare(got: Any, expected: Any, atol: float = 1e-4, rtol: float = 1e-4) -> str | None:
    """None if ``got`` matches ``expected``, else a one-line description of the difference."""
    if torch.is_tensor(expected):
        if not torch.is_tensor(got):
            return f"expected a tensor of shape {_shape(expected)}, got a {type(got).__name__}"
        if got.shape != expected.shape:
            return f"expected shape {_shape(expected)}, got shape {_shape(got)}"
        if got.dtype != expected.dtype and got.is_floating_point() != expected.is_floating_point():
            return f"expected dtype {expected.dtype}, got {got.dtype}"
        diff = (got.double() - expected.double()).abs()
        if not torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol):
            return f"values differ: max difference {diff.max().item():.3g} (tolerance {atol:g})"
        return None
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if not isinstance(got, (int, float)) and not (torch.is_tensor(got) and got.numel() == 1):
            return f"expected a number, got a {type(got).__name__}"
        got = float(got)
        if abs(got - expected) > atol + rtol * abs(expected):
            return f"expected {expected:g}, got {got:g}"
        return None
    if isinstance(expected, (list, tuple)) and expected and torch.is_tensor(expected[0]):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return f"expected a sequence of {len(expected)} tensors, got {type(got).__name__}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, atol, rtol)
            if problem:
                return f"item {i}: {problem}"
        return None
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def check_exercise(
    fn: Callable,
    solution: str,
    cases: Sequence[Case],
    hint: str,
    name: str | None = None,
    atol: float = 1e-4,
    properties: Callable[[Callable, Case], str | None] | None = None,
) -> Callable:
    """Run ``fn`` and the reference on every case; return the function later cells should use.

    ``properties(fn, case)`` may check what a value comparison cannot (e.g. orthonormality
    of any valid basis when many answers are right); it returns a problem or None, and when
    given, replaces the value comparison.
    """
    name = name or getattr(fn, "__name__", "exercise")
    ref = reference(solution)
    for case in cases:
        try:
            got = fn(*case.args, **case.kwargs)
        except NotImplementedError:
            print(f"… {name}: not solved yet. Continuing with the reference solution (solutions/{solution.split(':')[0]}.py).")
            return ref
        except Exception as err:  # the learner's code crashed: show where, not the answer
            raise ExerciseError(f"✗ {name} raised {type(err).__name__}: {err}\n  on {case.description}.\n  Hint: {hint}") from err
        if properties is not None:
            problem = properties(fn, case)
        else:
            problem = compare(got, ref(*case.args, **case.kwargs), atol=atol, rtol=atol)
        if problem:
            raise ExerciseError(f"✗ {name} is not right yet on {case.description}:\n  {problem}.\n  Hint: {hint}")
    print(f"✓ {name}: all {len(cases)} checks passed.")
    return fn
