"""Exercise checkers for the notebooks: run the learner's function on cases, compare with the
reference answer, and say precisely what is wrong, without printing the answer.

Pattern (one per exercise, see ``check_exercise``)::

    def loreft_edit(h, R, W, b):
        raise NotImplementedError  # your code here

    loreft_edit = checks.check_loreft_edit(loreft_edit)   # prints ✓, or says what is wrong

Expected values come from the reference answers in ``solutions/`` when it is importable (a clone), else from
``FALLBACKS``: the library's own implementation of each exercise (a student release ships no ``solutions/``).
A stub that raises ``NotImplementedError`` (on the first case: not solved yet; on a later one: partly
solved) does not break the notebook: the checker says so and returns that reference or fallback.
A wrong answer raises ``ExerciseError`` on the failing case: a mistake learners really make is named
(``MISTAKES``); otherwise a nudge first and the full recipe only when the same check fails again
(``HINTS``). ``summary()`` ends each notebook: which exercises fell back (``OUTCOMES``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F


class ExerciseError(AssertionError):
    """The learner's answer is wrong; the message says on which case and how."""


@dataclass
class Case:
    """One input to an exercise: positional ``args`` and a short ``description`` shown on failure."""

    args: tuple
    description: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Mistake:
    """A wrong answer learners really write (``what``) and what the checker says when it sees one (``says``)."""

    what: str
    says: str


# Exercise -> the mistakes its checker recognises by name (the instructor's guide prints this table).
MISTAKES: dict[str, dict[str, Mistake]] = {
    "record_hidden": {
        "hook_left": Mistake("leaves the forward hook on the layer",
                             "a hook is still attached after your function returned; remove it (handle.remove(), in a finally: block)"),
        "layer_input": Mistake("records the layer's input (args[0], or hidden_states[layer])",
                               "you returned the layer's input; record its output instead"),
        "after_final_norm": Mistake("reads output_hidden_states=True's hidden_states[layer + 1]",
                                    "this is hidden_states[layer + 1], right for every layer but the last: the last entry "
                                    "is taken after the model's final norm, not from the layer's output; record it with a hook"),
        "requires_grad": Mistake("keeps the autograd graph",
                                 "the recorded tensor still requires grad; store output.detach() (or run under torch.no_grad())"),
    },
    "steer": {
        "in_place": Mistake("adds to h in place", "your function changed its input h in place; return a new tensor (h.clone() first, or h + ...)"),
        "sign": Mistake("subtracts the vector", "the vector moved h the wrong way (check the sign of the scale)"),
        "every_position": Mistake("ignores positions", "you added the vector at every position; add it only at h[:, positions]"),
    },
    "difference_of_means": {
        "reversed": Mistake("mean of B minus mean of A", "your vector points the wrong way (it should point from set B towards set A)"),
        "feature_mean": Mistake("averages over the features (dim 1)",
                                "you averaged each example over its features; average each set over its examples (dim 0)"),
    },
    "orthonormalize": {
        "transposed": Mistake("returns QR's Q without transposing it back", "a transpose too many or too few"),
        "not_unit": Mistake("forgets to normalise", "the rows do not have length 1"),
        "not_orthogonal": Mistake("normalises without removing the components along earlier rows", "the rows are not orthogonal"),
        "other_span": Mistake("returns an orthonormal basis of another subspace (e.g. identity rows)",
                              "R has orthonormal rows but spans another subspace than the rows of A"),
    },
    "loreft_edit": {
        "no_subtract": Mistake("h + Rᵀ(W h + b), without − R h", "you added Rᵀ(W h + b) without subtracting R h: that adds to the "
                                                                 "subspace coordinates instead of replacing them"),
        "change_only": Mistake("returns Rᵀ(W h + b − R h) only", "you returned only the change Rᵀ(W h + b − R h); Φ(h) is h plus that change"),
    },
    "loreft_parameters": {
        "bias_twice": Mistake("counts the bias twice", "one r too many per intervention (the bias b counted twice)"),
        "no_bias": Mistake("forgets the bias", "the bias b (r numbers per intervention) seems missing"),
        "one_matrix": Mistake("counts R or W only", "one r×d matrix per intervention seems missing: LoReFT trains both R and W"),
        "extra_matrix": Mistake("counts a third r×d matrix", "one r×d matrix too many per intervention: LoReFT trains R and W, two of them"),
        "one_intervention": Mistake("forgets n_interventions", "it looks like one intervention, not n_interventions"),
    },
    "interference": {
        "sign": Mistake("mixed minus alone", "your drops have the wrong sign: I_s is alone − mixed, positive when the mixture hurts"),
        "relative": Mistake("divides the drop by the accuracy alone", "I_s is the plain difference alone − mixed in accuracy points, not a ratio"),
    },
    "orthogonal_subspaces": {
        "each_alone": Mistake("orthonormalises each subspace on its own", "subspaces are not orthogonal to each other: "
                                                                          "each basis is orthonormal, but not the k·r rows together"),
        "order": Mistake("deals the orthonormal rows to the wrong subspaces",
                         "subspace i must be built from raw[i] in order (Gram-Schmidt order): R[0] spans raw[0], R[0] and R[1] "
                         "together span raw[0] and raw[1], and so on; CSReFT.freeze_subspaces relies on that order"),
        "not_from_raw": Mistake("builds orthonormal bases from scratch", "the bases are orthonormal but do not span the rows of raw "
                                                                         "(build them from raw, not from scratch)"),
    },
    "subspace_overlap": {
        "not_normalised": Mistake("forgets to divide by √r", "the diagonal should be exactly 1 (a subspace overlaps itself "
                                                             "fully); yours is √r: divide by √r"),
        "divided_by_r": Mistake("divides by r instead of √r", "the diagonal should be exactly 1; yours is 1/√r: divide by √r, not r"),
        "squared": Mistake("the squared Frobenius norm", "your diagonal is right but not the rest: take the square root of the sum of squares"),
    },
    "gated_edit": {
        "no_subtract": Mistake("Wᵢh + bᵢ without − Rᵢh", "you did not subtract Rᵢh: each subspace's coordinates must be replaced, not added to"),
        "change_only": Mistake("returns the sum of the edits without h", "you returned only the change; the edited states are h plus it"),
        "gates_ignored": Mistake("ignores the gates", "with every gate 0 the edit must vanish: scale each subspace's edit by that example's gate"),
    },
    "instruction_summary": {
        "every_token": Mistake("averages every token", "you averaged every token; average only t with start <= t < end of each example's span"),
        "end_inclusive": Mistake("counts the end token", "off by one: the span's end is excluded (start <= t < end)"),
        "no_layer_norm": Mistake("averages the raw hidden states", "every token must be layer-normed before the mean (one vote each)"),
        "norm_after_mean": Mistake("layer-norms the mean instead of each token",
                                   "you normalised the mean; normalise each token first, then take the mean"),
    },
    "balance_term": {
        "sign": Mistake("H(mean) − mean H", "your sign is flipped: lower must be better (mean of the rows' entropies minus the entropy of the mean row)"),
        "unnormalised": Mistake("forgets to normalise the rows", "sigmoid gates' rows do not sum to 1: normalise each row first"),
        "log_of_zero": Mistake("0 · log 0 = nan", "your answer is nan, and this case has probabilities that are exactly 0: 0 · log 0 is "
                                                 "0 · (−inf) = nan in floating point, while the entropy counts it as 0. Keep the log away "
                                                 "from 0 (clamp q to a tiny minimum first) or drop the zero terms"),
        "log2": Mistake("log base 2", "your entropies are in bits: use the natural log (torch.log)"),
    },
}

# Exercise -> (a nudge at the first failure, the recipe once the same check has failed before).
HINTS: dict[str, tuple[str, str]] = {
    "record_hidden": ("a forward hook's output is the layer's output; the hook must not outlive your function.",
                      "register a forward hook on decoder_layers(model)[layer] that stores hidden_of(output).detach(); run the "
                      "model; remove the hook in a finally: block; return what it stored."),
    "steer": ("the vector goes only where positions says, and h itself must stay as it was.",
              "h + scale * vector broadcasts over batch and positions; for a slice, copy h and add at h[:, positions]."),
    "difference_of_means": ("one mean per set, over its examples; the vector points towards set A.",
                            "average each set over its examples (dimension 0), then subtract B's mean from A's; shape (d,)."),
    "orthonormalize": ("every row of length 1, every pair of rows orthogonal, and the same span as A's rows.",
                       "Gram-Schmidt: for each row, subtract its components along the rows already done, then divide by its "
                       "norm (torch.linalg.qr of Aᵀ works too: transpose Q back)."),
    "loreft_edit": ("Φ(h) replaces the subspace coordinates R h by W h + b and leaves the rest of h alone.",
                    "with h as a row vector, W h is h @ W.T (shape [..., r]) and Rᵀ z is z @ R (shape [..., d])."),
    "loreft_parameters": ("count only what the optimiser updates in one edit, then all the edits.",
                          "one edit trains R (r×d, through a raw matrix of that shape), W (r×d) and b (r): add them up and "
                          "multiply by n_interventions."),
    "interference": ("one entry per skill of acc_alone, positive when the mixture hurts, and 'mean'.",
                     "for every key of acc_alone except 'mean': alone minus mixed; then 'mean', the plain average of those drops."),
    "orthogonal_subspaces": ("all k·r rows orthonormal together, spanning what raw's rows span, subspace by subspace in order.",
                             "stack the k bases into one [k·r, d] matrix, orthonormalise its rows in order (torch.linalg.qr of "
                             "the transpose, then transpose back), reshape to [k, r, d]."),
    "subspace_overlap": ("O[i, i] must be exactly 1 and O[i, j] = 0 for orthogonal subspaces.",
                         "for every pair (i, j) take the r×r matrix Rᵢ Rⱼᵀ, its Frobenius norm, divided by √r."),
    "gated_edit": ("each subspace's LoReFT edit, scaled by that example's gate, all added to h.",
                   "for each subspace i: zᵢ = Wᵢh + bᵢ − Rᵢh (shape [n, r]), scale it by the gate g[:, i], map it back "
                   "with Rᵢ (zᵢ Rᵢ, shape [n, d]) and add the k results to h. torch.einsum helps."),
    "instruction_summary": ("only the span's tokens count, each with one vote.",
                            "normalise every token (F.layer_norm(h, (d,))), build a [batch, seq] mask that is 1 where "
                            "start <= t < end (torch.arange(seq) compared with spans[:, :1] and spans[:, 1:]), sum the "
                            "normalised tokens * mask over the sequence and divide by the mask's sum."),
    "balance_term": ("lower must be better: low when each row is sure and the batch uses every subspace; −log k at best.",
                     "normalise each row to sum to 1; H(q) = −Σ q log q per row with 0 · log 0 = 0; return the mean of the "
                     "rows' entropies minus the entropy of the mean row."),
}


def says(exercise: str, mistake: str) -> str:
    """What the checker of ``exercise`` says about the known ``mistake`` (a key of ``MISTAKES[exercise]``)."""
    return MISTAKES[exercise][mistake].says


def reference(path: str) -> Callable:
    """Load a reference solution, ``"module:function"`` inside the ``solutions`` package."""
    module, name = path.split(":")
    return getattr(importlib.import_module(f"solutions.{module}"), name)


def solutions_available() -> bool:
    """Whether the reference answers (``solutions/``, in a clone, not in a student release) can be imported."""
    try:
        importlib.import_module("solutions")
    except ImportError:
        return False
    return True


def expected(path: str) -> Callable:
    """What the checker compares with: the reference ``"module:function"`` when ``solutions/`` is importable, else the
    library's own implementation of the same exercise (``FALLBACKS``)."""
    return reference(path) if solutions_available() else FALLBACKS[path.split(":")[1]][0]


def _fallback_note(path: str) -> str:
    if solutions_available():
        return f"Continuing with the reference solution (solutions/{path.split(':')[0]}.py)."
    return f"Continuing with the library's own implementation ({FALLBACKS[path.split(':')[1]][1]})."


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__


def _kind(x: Any) -> str:
    """What a value is, for a message: "a torch.Tensor of shape (2, 3)", "a list of 3 items", "None"."""
    if x is None:
        return "None (a function without a return statement returns None)"
    if torch.is_tensor(x):
        return f"a torch.Tensor of shape {tuple(x.shape)}"
    kind = type(x).__name__ if type(x).__module__ == "builtins" else f"{type(x).__module__}.{type(x).__qualname__}"
    if isinstance(x, tuple) and type(x) is not tuple:  # e.g. torch.linalg.qr's named tuple
        kind = f"tuple ({kind})"
    size = f" of {len(x)} items" if isinstance(x, (list, tuple)) else ""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}{size}"


def _tensor_of(expected: torch.Tensor) -> str:
    """The type and shape an exercise must return: "a torch.Tensor of shape (2, 3)", or a scalar tensor."""
    return "a scalar torch.Tensor (shape ())" if expected.dim() == 0 else f"a torch.Tensor of shape {_shape(expected)}"


def known_mistake(got: Any, expected: torch.Tensor, mistakes: list) -> str | None:
    """The message of the first known wrong answer ``got`` reproduces; ``mistakes``: ``(wrong answer, message)`` pairs.
    A wrong answer that equals the expected one on this case (e.g. "every position" when that is asked) is skipped."""
    if not (torch.is_tensor(got) and got.shape == expected.shape):
        return None
    for wrong, message in mistakes:
        if wrong.shape != expected.shape:
            continue
        if not torch.allclose(wrong, expected, atol=1e-4) and torch.allclose(got, wrong, atol=1e-4):
            return message
    return None


def compare(got: Any, expected: Any, atol: float = 1e-4, rtol: float = 1e-4) -> str | None:
    """None if ``got`` matches ``expected``, else a one-line description of the difference."""
    if torch.is_tensor(expected):
        if not torch.is_tensor(got):
            return f"expected {_tensor_of(expected)}, got {_kind(got)}"
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
            return f"expected a number, got {_kind(got)}"
        got = float(got)
        if abs(got - expected) > atol + rtol * abs(expected):
            return f"expected {expected:g}, got {got:g}"
        return None
    if isinstance(expected, (list, tuple)) and expected and torch.is_tensor(expected[0]):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return f"expected a list or tuple of {len(expected)} torch.Tensors, got {_kind(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, atol, rtol)
            if problem:
                return f"item {i}: {problem}"
        return None
    return None if got == expected else f"expected {expected!r}, got {got!r}"


@dataclass
class Outcome:
    """What one exercise's check found: ``status`` is "solved", "partly solved" or "not solved yet" (both continue
    with the reference or the library's fallback), or "failed" (a wrong answer: the check raised ``ExerciseError``);
    ``failures`` counts the failed runs in a row (the second shows the recipe)."""

    name: str
    status: str
    passed: int  # checks passed before the end
    total: int
    failures: int = 0


OUTCOMES: dict[str, Outcome] = {}  # exercise name -> its latest check in this kernel (running a check again replaces it)


def _hint(name: str, hint: str | None) -> str:
    """A nudge on the first failure; the recipe too once this exercise has failed before in this kernel."""
    nudge, recipe = HINTS.get(name, (hint, None)) if hint is None else (hint, None)
    before = OUTCOMES.get(name)
    if recipe and before is not None and before.status == "failed":
        return f"Hint: {nudge}\n  Recipe: {recipe}"
    return f"Hint: {nudge}" + ("\n  (Run the check again after a change; a second failure shows the full recipe.)" if recipe else "")


def _fail(name: str, passed: int, total: int, message: str, hint: str | None) -> ExerciseError:
    text = f"{message}\n  {_hint(name, hint)}"
    before = OUTCOMES.get(name)
    failures = before.failures + 1 if before is not None and before.status == "failed" else 1
    OUTCOMES[name] = Outcome(name, "failed", passed, total, failures)
    return ExerciseError(text)


def check_exercise(fn: Callable, solution: str, cases: Sequence[Case], hint: str | None = None, name: str | None = None,
                   atol: float = 1e-4, properties: Callable[[Callable, Case], str | None] | None = None) -> Callable:
    """Run ``fn`` and the expected answer (``expected(solution)``) on every case; return the function later cells use.

    ``properties(fn, case)`` may check what a value comparison cannot (e.g. orthonormality of any valid basis when
    many answers are right, or a known mistake); it returns a problem or None, and when given, replaces the value
    comparison. ``hint``: one hint for every failure; None uses ``HINTS[name]``'s two tiers.
    """
    name = name or getattr(fn, "__name__", "exercise")
    ref = expected(solution)
    for passed, case in enumerate(cases):
        try:
            if properties is not None:
                problem = properties(fn, case)
            else:
                problem = compare(fn(*case.args, **case.kwargs), ref(*case.args, **case.kwargs), atol=atol, rtol=atol)
        except NotImplementedError:
            note = _fallback_note(solution)
            if passed == 0:
                print(f"… {name}: not solved yet. {note}")
            else:  # solved for the first cases only: say so, rather than replace it silently
                print(f"… {name}: partly solved: passed {passed} of {len(cases)} checks, then raised "
                      f"NotImplementedError on {case.description}. {note}")
            OUTCOMES[name] = Outcome(name, "partly solved" if passed else "not solved yet", passed, len(cases))
            return ref
        except Exception as err:  # the learner's code crashed: show where, not the answer
            raise _fail(name, passed, len(cases), f"✗ {name} raised {type(err).__name__}: {err}\n  on {case.description}.", hint) from err
        if problem:
            raise _fail(name, passed, len(cases), f"✗ {name} is not right yet on {case.description}:\n  {problem}.", hint)
    print(f"✓ {name}: all {len(cases)} checks passed.")
    OUTCOMES[name] = Outcome(name, "solved", len(cases), len(cases))
    return fn


def graded(name: str) -> None:
    """An nbgrader test cell's last line: under nbgrader (``NBGRADER_EXECUTION`` set), fail unless the learner's own
    function passed its check (an unsolved stub continues with the fallback and would pass); elsewhere, nothing."""
    if not os.environ.get("NBGRADER_EXECUTION"):
        return
    outcome = OUTCOMES.get(name)
    if outcome is None or outcome.status != "solved":
        status = outcome.status if outcome else "not checked"
        raise ExerciseError(f"{name}: {status}; this exercise scores only when your own function passes its check.")


def summary() -> str:
    """One line on the exercises checked in this kernel, e.g. 'Exercises: 2 of 3 solved by you; 1 used the reference
    solution (not solved yet: steer).'"""
    done = list(OUTCOMES.values())
    if not done:
        return "Exercises: none checked yet in this session (run the exercise cells above first)."
    solved = [o for o in done if o.status == "solved"]
    not_yet = [o.name for o in done if o.status == "not solved yet"]
    partly = [f"{o.name} after {o.passed} of {o.total} checks passed" for o in done if o.status == "partly solved"]
    failed = [o.name for o in done if o.status == "failed"]
    groups = [f"{label}: {', '.join(names)}" for label, names in (("not solved yet", not_yet), ("partly solved", partly)) if names]
    used = "the reference solution" if solutions_available() else "the library's implementation"
    line = f"Exercises: {len(solved)} of {len(done)} solved by you; "
    line += f"{len(not_yet) + len(partly)} used {used} ({'; '.join(groups)})" if groups else f"none used {used}"
    if failed:
        line += f"; {len(failed)} still {'fails its check' if len(failed) == 1 else 'fail their checks'} ({', '.join(failed)})"
    return line + "."


# ---- what an unsolved exercise continues with when solutions/ is not there (a student release) ---------------------
# The library's own implementation where it has one; the few it has no function for are written here. A test keeps
# each equal to the reference answer on the checkers' cases and on the notebooks' inputs.


def _record_with_library(model, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    from .residual import record

    with record(model, [layer]) as states, torch.no_grad():
        model(input_ids=input_ids)
    return states[layer]


def _steer_here(h: torch.Tensor, vector: torch.Tensor, scale: float, positions: slice | None = None) -> torch.Tensor:
    out = h.clone()
    out[:, slice(None) if positions is None else positions] += scale * vector
    return out


def _mean_difference_here(states_a: torch.Tensor, states_b: torch.Tensor) -> torch.Tensor:
    return states_a.mean(0) - states_b.mean(0)


def _orthonormalize_with_library(A: torch.Tensor) -> torch.Tensor:
    from .interventions import orthonormal_rows

    return orthonormal_rows(A).to(A.dtype)


def _loreft_edit_with_library(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from .interventions import LoReFT

    edit = LoReFT(R.shape[1], R.shape[0])
    with torch.no_grad():
        for param, value in ((edit.R_raw, R), (edit.W, W), (edit.b, b)):  # R's rows are orthonormal: R_raw = R keeps R
            param.copy_(value)
        return edit(h)


def _loreft_parameters_with_library(d_model: int, rank: int, n_interventions: int) -> int:
    from .interventions import LoReFT

    return n_interventions * sum(p.numel() for p in LoReFT(d_model, rank).parameters())


def _interference_here(acc_alone: dict, acc_mixed: dict) -> dict:
    skills = [s for s in acc_alone if s != "mean"]
    drops = dict(zip(skills, (acc_alone[s] - acc_mixed[s] for s in skills)))
    drops["mean"] = sum(drops.values()) / len(skills)
    return drops


def _orthogonal_subspaces_with_library(raw: torch.Tensor) -> torch.Tensor:
    from .interventions import orthonormal_rows

    return orthonormal_rows(raw.flatten(0, 1)).reshape(raw.shape).to(raw.dtype)


def _subspace_overlap_here(R: torch.Tensor) -> torch.Tensor:
    k, r, _ = R.shape
    rows = R.flatten(0, 1)  # [k·r, d]
    cosines = (rows @ rows.T).reshape(k, r, k, r)  # [i, ·, j, ·]: Rᵢ Rⱼᵀ
    return torch.linalg.matrix_norm(cosines.permute(0, 2, 1, 3)) / r**0.5


def _gated_edit_with_library(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    from .interventions import CSReFT

    k, r, d = R.shape
    edit = CSReFT(d, rank=r, n_subspaces=k)
    with torch.no_grad():
        for i in range(k):  # the stacked rows are orthonormal: R_raw = R keeps R
            for param, value in zip(edit.subspace(i), (R[i], W[i], b[i])):
                param.copy_(value)
        return edit(h, gates=g)


def _instruction_summary_with_library(h: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    from .hooks import span_mask
    from .routing import instruction_summary

    return instruction_summary(h, span_mask(torch.ones(h.shape[:2], dtype=torch.long), spans)).to(h.dtype)


def _balance_term_with_library(probs: torch.Tensor) -> torch.Tensor:
    from .routing import balance_loss

    return balance_loss(probs)


# Exercise -> (the function an unsolved exercise continues with without solutions/, where it comes from).
FALLBACKS: dict[str, tuple[Callable, str]] = {
    "record_hidden": (_record_with_library, "csreft_lite.residual.record"),
    "steer": (_steer_here, "csreft_lite.checks; residual.add_vector does the same inside a model"),
    "difference_of_means": (_mean_difference_here, "csreft_lite.checks"),
    "orthonormalize": (_orthonormalize_with_library, "csreft_lite.orthonormal_rows"),
    "loreft_edit": (_loreft_edit_with_library, "csreft_lite.LoReFT"),
    "loreft_parameters": (_loreft_parameters_with_library, "csreft_lite.LoReFT's parameters"),
    "interference": (_interference_here, "csreft_lite.checks"),
    "orthogonal_subspaces": (_orthogonal_subspaces_with_library, "csreft_lite.orthonormal_rows on the stacked rows"),
    "subspace_overlap": (_subspace_overlap_here, "csreft_lite.checks"),
    "gated_edit": (_gated_edit_with_library, "csreft_lite.CSReFT"),
    "instruction_summary": (_instruction_summary_with_library, "csreft_lite.routing.instruction_summary"),
    "balance_term": (_balance_term_with_library, "csreft_lite.balance_loss"),
}


# ---- notebook 03: multiple subspaces -----------------------------------------------------------


def _compare_dicts(got: Any, expected: dict, atol: float = 1e-6) -> str | None:
    if not isinstance(got, dict):
        return f"expected a dict with keys {sorted(expected)}, got {_kind(got)}"
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        return f"expected keys {sorted(expected)}; missing {missing or 'none'}, unexpected {extra or 'none'}"
    for key in expected:
        problem = compare(got[key], expected[key], atol=atol, rtol=0)
        if problem:
            return f"at key {key!r}: {problem}"
    return None


def _scores(**accuracy: float) -> dict:
    """Accuracies as ``tasks.score`` returns them: one per skill, then ``"mean"``, their exact mean."""
    return {**accuracy, "mean": sum(accuracy.values()) / len(accuracy)}


def check_interference(fn: Callable) -> Callable:
    """Exercise (nb 03): per-skill accuracy drop from "trained alone" to "trained on the mixture"."""
    solution = "nb03_subspaces:interference"
    cases = [
        Case((_scores(a=0.9, b=0.8), _scores(a=0.5, b=0.8)), "two skills, one hurt by the mixture"),
        Case((_scores(a=0.5, b=0.25, c=1.0), _scores(a=0.75, b=0.0, c=0.5)),
             "three skills, one of them better in the mixture (a negative drop)"),
        Case((_scores(x=0.6, y=0.35), _scores(y=0.1, x=0.6)), "acc_mixed lists the skills in another order"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        alone, mixed = case.args
        got, want = f(dict(alone), dict(mixed)), expected(solution)(alone, mixed)
        if isinstance(got, dict) and set(got) == set(want):
            skills = [s for s in alone if s != "mean"]
            if all(abs(got[s] + want[s]) < 1e-6 for s in skills) and any(want[s] for s in skills):
                return says("interference", "sign")
            if all(abs(got[s] - want[s] / alone[s]) < 1e-6 for s in skills if alone[s]) and any(
                    abs(want[s] / alone[s] - want[s]) > 1e-6 for s in skills if alone[s]):
                return says("interference", "relative")
        return _compare_dicts(got, want)

    return check_exercise(fn, solution, cases, name="interference", properties=properties)


def _span_problem(raw: torch.Tensor, R: torch.Tensor) -> str | None:
    """Whether subspaces 0..i of ``R`` span what the rows of raw[0..i] span, for every i (Gram-Schmidt order)."""
    k, r, d = raw.shape
    rows, flat = raw.double().reshape(k * r, d), R.double().reshape(k * r, d)
    outside = (rows - rows @ flat.T @ flat).norm().item() / rows.norm().item()
    if outside > 1e-4:
        return says("orthogonal_subspaces", "not_from_raw") + f": {outside:.2%} of raw lies outside them"
    for i in range(k - 1):
        first = rows[: (i + 1) * r]
        basis = flat[: (i + 1) * r]
        if (first - first @ basis.T @ basis).norm().item() > 1e-4 * first.norm().item():
            return says("orthogonal_subspaces", "order") + f" (here subspaces 0..{i} do not span raw[0..{i}])"
    return None


def check_orthogonal_subspaces(fn: Callable) -> Callable:
    """Exercise (nb 03): k bases whose k·r rows are orthonormal together and built from raw in order (any such pass)."""
    gen = torch.Generator().manual_seed(3)
    near = torch.randn(1, 2, 16, generator=gen).repeat(3, 1, 1) + 0.1 * torch.randn(3, 2, 16, generator=gen)
    cases = [
        Case((torch.randn(2, 3, 8, generator=gen),), "raw of shape (2, 3, 8): k=2 subspaces of rank 3 in d=8"),
        Case((near,), "raw of shape (3, 2, 16) whose three subspaces start almost on top of each other"),
        Case((torch.randn(4, 1, 4, generator=gen),), "raw of shape (4, 1, 4): k·r = d, the whole space"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        raw = case.args[0]
        R = f(raw.clone())
        k, r, d = raw.shape
        if not torch.is_tensor(R) or R.shape != raw.shape:
            transposed = " (QR's Q is [d, k·r]: transpose it back)" if torch.is_tensor(R) and R.shape == (d, k * r) else ""
            return f"expected a torch.Tensor of shape {tuple(raw.shape)}, got {_kind(R)}{transposed}"
        flat = R.double().reshape(k * r, d)
        gram = flat @ flat.T  # [k·r, k·r]: block (i, j) is Rᵢ Rⱼᵀ
        for i in range(k):
            block = gram[i * r:(i + 1) * r, i * r:(i + 1) * r]
            err = (block - torch.eye(r, dtype=block.dtype)).abs().max().item()
            if err > 1e-4:
                return f"the rows of subspace {i} are not orthonormal: max |Rᵢ Rᵢᵀ − I| = {err:.3g}"
        for i in range(k):
            for j in range(i + 1, k):
                err = gram[i * r:(i + 1) * r, j * r:(j + 1) * r].abs().max().item()
                if err > 1e-4:
                    return says("orthogonal_subspaces", "each_alone") + f" (subspaces {i} and {j}: max |Rᵢ Rⱼᵀ| = {err:.3g})"
        return _span_problem(raw, R)

    return check_exercise(fn, "nb03_subspaces:orthogonal_subspaces", cases, name="orthogonal_subspaces", properties=properties)


def check_subspace_overlap(fn: Callable) -> Callable:
    """Exercise (nb 03): the [k, k] matrix of overlaps ‖Rᵢ Rⱼᵀ‖_F / √r."""
    solution = "nb03_subspaces:subspace_overlap"
    gen = torch.Generator().manual_seed(4)

    def bases(k, r, d):
        from .interventions import orthonormal_rows

        return torch.stack([orthonormal_rows(torch.randn(r, d, generator=gen)) for _ in range(k)])

    same = bases(1, 2, 6)
    cases = [
        Case((bases(3, 2, 6),), "3 random orthonormal bases of rank 2 in d=6"),
        Case((torch.cat([same, same, bases(1, 2, 6)]),), "3 bases of rank 2 in d=6, the first two identical"),
        Case((torch.eye(4).reshape(2, 2, 4),), "2 mutually orthogonal bases of rank 2 in d=4"),
        Case((bases(2, 1, 5),), "2 bases of rank 1 in d=5"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        R = case.args[0]
        got, want = f(R.clone()), expected(solution)(R)
        r = R.shape[1]
        mistakes = [(want * r**0.5, says("subspace_overlap", "not_normalised")),
                    (want / r**0.5, says("subspace_overlap", "divided_by_r")),
                    (want.pow(2), says("subspace_overlap", "squared"))]
        return known_mistake(got, want, mistakes) or compare(got, want)

    return check_exercise(fn, solution, cases, name="subspace_overlap", properties=properties)


# ---- notebook 04: the router -------------------------------------------------------------------


def check_gated_edit(fn: Callable) -> Callable:
    """Exercise (nb 04): CS-ReFT's gated sum of k LoReFT edits."""
    from .interventions import orthonormal_rows

    solution = "nb04_router:gated_edit"
    gen = torch.Generator().manual_seed(5)

    def params(n, k, r, d):
        R = orthonormal_rows(torch.randn(k * r, d, generator=gen)).reshape(k, r, d)
        return (torch.randn(n, d, generator=gen), R, torch.randn(k, r, d, generator=gen), torch.randn(k, r, generator=gen))

    h, R, W, b = params(4, 3, 2, 8)
    cases = [
        Case((h, R, W, b, torch.ones(4, 3)), "n=4 states, k=3 subspaces of rank 2, d=8, every gate 1"),
        Case((h, R, W, b, torch.zeros(4, 3)), "the same states with every gate 0 (the edit must vanish)"),
        Case((h, R, W, b, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0, 0.5]])),
             "the same states, a different gate pattern per example"),
        Case((*params(2, 2, 3, 10), torch.rand(2, 2, generator=gen)), "n=2, k=2, rank 3, d=10, random gates in [0, 1]"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        h_, R_, W_, b_, g_ = case.args
        got, ref = f(*(x.clone() for x in case.args)), expected(solution)
        want = ref(*case.args)
        mistakes = [(ref(h_, R_, W_ + R_, b_, g_), says("gated_edit", "no_subtract")),
                    (want - h_, says("gated_edit", "change_only")),
                    (ref(h_, R_, W_, b_, torch.ones_like(g_)), says("gated_edit", "gates_ignored"))]
        return known_mistake(got, want, mistakes) or compare(got, want)

    return check_exercise(fn, solution, cases, name="gated_edit", properties=properties)


def check_instruction_summary(fn: Callable) -> Callable:
    """Exercise (nb 04): the mean hidden state over each example's instruction tokens."""
    solution = "nb04_router:instruction_summary"
    gen = torch.Generator().manual_seed(6)
    h = torch.randn(3, 9, 8, generator=gen)
    sinks = h.clone()
    sinks[:, :2] *= 100.0  # attention-sink-like positions before the span, and padding-like values after it
    sinks[:, 7:] = 1e4
    massive = h.clone()
    massive[:, 3] = 50.0 * massive[:, 3] + 20.0  # one huge token inside every span
    cases = [
        Case((h, torch.tensor([[2, 6], [3, 9], [0, 4]])), "a batch of 3, seq 9, d=8, a different span per example"),
        Case((h, torch.tensor([[4, 5], [0, 9], [8, 9]])), "spans of one token, of the whole sequence, and of the last token"),
        Case((sinks, torch.tensor([[2, 7], [2, 5], [3, 6]])),
             "huge values outside the spans (they must not change the result)"),
        Case((massive, torch.tensor([[2, 6], [1, 5], [3, 8]])),
             "one token 50 times longer than the others inside every span (it must get one vote, not decide alone)"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        h_, spans = case.args
        got, ref = f(h_.clone(), spans.clone()), expected(solution)
        want = ref(h_, spans)
        d = h_.shape[-1]
        wider = torch.stack([spans[:, 0], (spans[:, 1] + 1).clamp(max=h_.shape[1])], 1)
        every = torch.tensor([[0, h_.shape[1]]] * len(h_))
        mistakes = [(ref(h_, every), says("instruction_summary", "every_token")),
                    (ref(h_, wider), says("instruction_summary", "end_inclusive")),
                    (_span_mean(h_, spans), says("instruction_summary", "no_layer_norm")),
                    (F.layer_norm(_span_mean(h_, spans), (d,)), says("instruction_summary", "norm_after_mean"))]
        return known_mistake(got, want, mistakes) or compare(got, want)

    return check_exercise(fn, solution, cases, name="instruction_summary", properties=properties)


def _span_mean(h: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """The plain mean of each example's span of raw hidden states (a known wrong answer)."""
    t = torch.arange(h.shape[1])
    m = ((t >= spans[:, :1]) & (t < spans[:, 1:])).to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


def check_balance_term(fn: Callable) -> Callable:
    """Exercise (nb 04): minus the mutual information between an example and its subspace."""
    solution = "nb04_router:balance_term"
    gen = torch.Generator().manual_seed(7)
    cases = [
        Case((torch.softmax(torch.randn(6, 3, generator=gen), -1),), "6 examples, k=3, softmax probabilities"),
        Case((torch.eye(4).repeat(2, 1),), "8 examples, each sure of one of 4 subspaces, all used equally (expect −log 4)"),
        Case((torch.tensor([[0.7, 0.2, 0.1]]).repeat(5, 1),), "5 examples with the same distribution: router collapse (expect 0)"),
        Case((torch.rand(5, 4, generator=gen) * 0.9 + 0.05,), "5 examples, k=4, sigmoid gates whose rows do not sum to 1"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        probs = case.args[0]
        got, ref = f(probs.clone()), expected(solution)
        if torch.is_tensor(got) and got.numel() == 1 and torch.isnan(got).item() and (probs == 0).any():
            return says("balance_term", "log_of_zero")
        want = ref(probs)
        mistakes = [(-want, says("balance_term", "sign")),
                    (_entropy_gap(probs), says("balance_term", "unnormalised")),
                    (want / torch.log(torch.tensor(2.0)), says("balance_term", "log2"))]
        return known_mistake(got, want, mistakes) or compare(got, want, atol=1e-5, rtol=1e-5)

    return check_exercise(fn, solution, cases, name="balance_term", properties=properties)


def _entropy_gap(p: torch.Tensor) -> torch.Tensor:
    """mean H(rows) − H(mean row) of ``p`` as given, rows not normalised (a known wrong answer)."""
    def entropy(x: torch.Tensor) -> torch.Tensor:
        return -(x * x.clamp_min(1e-12).log()).sum(-1)

    return entropy(p).mean() - entropy(p.mean(0))


# ---------------------------------------------------------------- notebook 01: hidden-state interventions


def _nb01_tiny_llama(seed: int = 0, layers: int = 3):
    """A tiny random Llama (hidden size 16): the record exercise runs on it in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # transformers 5 attaches its own hooks on the first output_hidden_states call: not the learner's
        model(input_ids=torch.zeros(1, 2, dtype=torch.long), output_hidden_states=True)
    return model


def _hook_count(model) -> int:
    from .models import decoder_layers

    return sum(len(block._forward_hooks) for block in decoder_layers(model))


def check_record_hidden(fn: Callable) -> Callable:
    """Exercise ``record_hidden(model, layer, input_ids) -> [batch, seq, d]`` (notebook 01)."""
    solution = "nb01_interventions:record_hidden"
    model = _nb01_tiny_llama()
    gen = torch.Generator().manual_seed(1)
    cases = [
        Case((model, 0, torch.randint(0, 50, (1, 5), generator=gen)), "a tiny random Llama (3 layers, d=16), layer 0, one prompt of 5 tokens"),
        Case((model, 1, torch.randint(0, 50, (2, 7), generator=gen)), "the same model, layer 1, a batch of 2 prompts of 7 tokens"),
        Case((model, 2, torch.randint(0, 50, (3, 4), generator=gen)), "the same model, its last layer (2), a batch of 3 prompts of 4 tokens"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        m, layer, ids = case.args
        before = _hook_count(m)
        got = f(m, layer, ids)
        if _hook_count(m) != before:
            return says("record_hidden", "hook_left") + f" ({_hook_count(m) - before} left)"
        want = expected(solution)(m, layer, ids)
        with torch.no_grad():
            states = m(input_ids=ids, output_hidden_states=True).hidden_states  # [embeddings, after layer 0, ..., final norm]
        mistakes = [(states[layer], says("record_hidden", "layer_input")),
                    (states[layer + 1], says("record_hidden", "after_final_norm"))]
        named = known_mistake(got.detach() if torch.is_tensor(got) else got, want, mistakes)
        if named:
            return named
        if torch.is_tensor(got) and got.requires_grad:
            return says("record_hidden", "requires_grad")
        return compare(got, want)

    return check_exercise(fn, solution, cases, name="record_hidden", properties=properties)


def check_steer(fn: Callable) -> Callable:
    """Exercise ``steer(h, vector, scale, positions=None) -> h'`` (notebook 01)."""
    solution = "nb01_interventions:steer"
    gen = torch.Generator().manual_seed(2)
    h, v = torch.randn(2, 5, 8, generator=gen), torch.randn(8, generator=gen)
    cases = [
        Case((h, v, 3.0), "h of shape (2, 5, 8), scale 3.0, every position (positions=None)"),
        Case((h, v, 2.0, slice(-1, None)), "h of shape (2, 5, 8), scale 2.0, the last position only (slice(-1, None))"),
        Case((h, v, -1.5, slice(0, 2)), "h of shape (2, 5, 8), scale -1.5, the first two positions (slice(0, 2))"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        h_in = case.args[0].clone()
        got = f(h_in, *case.args[1:])
        if not torch.equal(h_in, case.args[0]):
            return says("steer", "in_place")
        ref = expected(solution)
        want, vector, scale = ref(*case.args), case.args[1], case.args[2]
        positions = case.args[3] if len(case.args) > 3 else None
        mistakes = [(ref(h_in, vector, -scale, positions), says("steer", "sign")),
                    (ref(h_in, vector, scale), says("steer", "every_position"))]
        return known_mistake(got, want, mistakes) or compare(got, want)

    return check_exercise(fn, solution, cases, name="steer", properties=properties)


def check_difference_of_means(fn: Callable) -> Callable:
    """Exercise ``difference_of_means(states_a, states_b) -> [d]`` (notebook 01)."""
    solution = "nb01_interventions:difference_of_means"
    gen = torch.Generator().manual_seed(3)
    cases = [
        Case((torch.randn(5, 8, generator=gen) + 1, torch.randn(3, 8, generator=gen)), "states_a (5, 8) and states_b (3, 8)"),
        Case((torch.randn(2, 8, generator=gen), torch.randn(7, 8, generator=gen) - 2), "states_a (2, 8) and states_b (7, 8)"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        a, b = case.args
        got, want = f(a.clone(), b.clone()), expected(solution)(a, b)
        if torch.is_tensor(got) and got.shape != want.shape and got.shape in ((len(a),), (len(b),)):
            return says("difference_of_means", "feature_mean") + f" (got shape {tuple(got.shape)})"
        return known_mistake(got, want, [(-want, says("difference_of_means", "reversed"))]) or compare(got, want)

    return check_exercise(fn, solution, cases, name="difference_of_means", properties=properties)


# ---------------------------------------------------------------- notebook 02: orthonormal LoReFT


def check_orthonormalize(fn: Callable) -> Callable:
    """Exercise ``orthonormalize(A) -> R`` (notebook 02). Many answers are right: any ``R`` with
    orthonormal rows spanning the row space of ``A``."""
    gen = torch.Generator().manual_seed(4)
    skewed = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0]])
    cases = [
        Case((torch.randn(2, 3, generator=gen),), "A of shape (2, 3), random"),
        Case((skewed,), "A of shape (2, 3) whose two rows point almost the same way"),
        Case((3 * torch.randn(4, 16, generator=gen),), "A of shape (4, 16), random, rows of length about 12"),
        Case((torch.randn(1, 5, generator=gen),), "A of shape (1, 5): a single row"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        A = case.args[0]
        R = f(A.clone())
        if not torch.is_tensor(R):
            return f"expected a torch.Tensor of shape {tuple(A.shape)}, got {_kind(R)}"
        if R.shape != A.shape:
            hint = f" ({says('orthonormalize', 'transposed')})" if R.shape == A.T.shape else ""
            return f"expected shape {tuple(A.shape)} (one orthonormal row per row of A), got {tuple(R.shape)}{hint}"
        R, A = R.double(), A.double()
        gram = R @ R.T
        norms = gram.diagonal()
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            return f"{says('orthonormalize', 'not_unit')} (their lengths are {[round(x, 3) for x in norms.sqrt().tolist()]})"
        off = (gram - torch.eye(len(R), dtype=R.dtype)).abs().max().item()
        if off > 1e-4:
            return f"{says('orthonormalize', 'not_orthogonal')}: R Rᵀ differs from the identity by up to {off:.3g}"
        P_R = R.T @ R  # projection onto the span of R's rows
        P_A = A.T @ torch.linalg.solve(A @ A.T, A)  # projection onto the span of A's rows
        gap = (P_R - P_A).abs().max().item()
        if gap > 1e-4:
            return f"{says('orthonormalize', 'other_span')} (projections differ by up to {gap:.3g})"
        return None

    return check_exercise(fn, "nb02_loreft:orthonormalize", cases, name="orthonormalize", properties=properties)


def check_loreft_edit(fn: Callable) -> Callable:
    """Exercise ``loreft_edit(h, R, W, b) -> Φ(h)`` (notebook 02)."""
    from .interventions import orthonormal_rows

    solution = "nb02_loreft:loreft_edit"
    gen = torch.Generator().manual_seed(5)
    d, r = 8, 2
    R = orthonormal_rows(torch.randn(r, d, generator=gen))
    W, b = torch.randn(r, d, generator=gen), torch.randn(r, generator=gen)
    cases = [
        Case((torch.randn(d, generator=gen), R, W, b), "a single h of shape (8,), rank 2"),
        Case((torch.randn(3, 5, d, generator=gen), R, W, b), "h of shape (3, 5, 8) = [batch, positions, d], rank 2"),
        Case((torch.randn(4, d, generator=gen), R, R.clone(), torch.zeros(r)), "W = R and b = 0 (the edit must do nothing)"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        h, R_, W_, b_ = case.args
        got, want = f(h.clone(), R_, W_, b_), expected(solution)(h, R_, W_, b_)
        mistakes = [(h + (h @ W_.T + b_) @ R_, says("loreft_edit", "no_subtract")),
                    (want - h, says("loreft_edit", "change_only"))]
        return known_mistake(got, want, mistakes) or compare(got, want)

    return check_exercise(fn, solution, cases, name="loreft_edit", properties=properties)


def check_loreft_parameters(fn: Callable) -> Callable:
    """Exercise ``loreft_parameters(d_model, rank, n_interventions) -> int`` (notebook 02)."""
    solution = "nb02_loreft:loreft_parameters"
    cases = [
        Case((576, 4, 1), "d_model=576, rank=4, one intervention"),
        Case((576, 4, 4), "d_model=576, rank=4, 4 interventions"),
        Case((4096, 8, 3), "d_model=4096, rank=8, 3 interventions"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        got = f(*case.args)
        d, r, n = case.args
        want = expected(solution)(*case.args)
        if not isinstance(got, int) and not (torch.is_tensor(got) and got.numel() == 1):
            return f"expected an int, got {_kind(got)}"
        got = int(got)
        if got == want:
            return None
        diff = got - want
        known = {n * r: "bias_twice", -n * r: "no_bias", -n * r * d: "one_matrix", n * r * d: "extra_matrix"}
        if diff in known:
            return f"your count is {'too large' if diff > 0 else 'too small'}: {says('loreft_parameters', known[diff])}"
        if n > 1 and got * n == want:
            return f"your count is too small: {says('loreft_parameters', 'one_intervention')}"
        return f"your count is {'too large' if diff > 0 else 'too small'}"

    return check_exercise(fn, solution, cases, name="loreft_parameters", properties=properties)



# ---------------------------------------------------------------- results that move with the seed (issue 28)

DEFAULT_SEED = 0  # the seed every notebook's text was written for and checked on


def claim(holds: bool, text: str, seed: int, shows: str = "") -> None:
    """Check a sentence of a notebook's text against this run (no return value: a cell that ends with it prints nothing).

    On the seed the text was written for (``DEFAULT_SEED``) a claim that fails is an error, so the committed notebook
    guards its text. On another seed it is a finding, not a bug: this prints what the run shows instead and carries
    on, so a learner who changes ``SEED`` is never stopped by a cell that is not an exercise. With the environment
    variable ``CSREFT_CLAIMS=report`` (``scripts/run_seed.py`` sets it: a study of seeds or of other settings, such as
    the guide's assessment) every seed reports instead."""
    if holds:
        return
    if seed == DEFAULT_SEED and os.environ.get("CSREFT_CLAIMS") != "report":
        raise AssertionError(f"{f'{text} ({shows})' if shows else text}. The text was checked on seed {DEFAULT_SEED} with "
                             f"the notebook's own settings; if you changed one, this is what your run shows, not a bug: "
                             f"start Jupyter with CSREFT_CLAIMS=report to be told instead of stopped.")
    print(f"⚠ seed {seed}: the text says {text!r}, but this run does not show it{': ' + shows if shows else ''}. "
          f"(The text was checked on seed {DEFAULT_SEED} with the notebook's own settings; results move with both.)")


# ---------------------------------------------------------------- the hard exercises (●●●), one per notebook 01-04
# Each: a checker in the pattern above, the mistakes it names (HARD_MISTAKES: the instructor's guide lists them), a
# nudge as its hint, and what an unsolved exercise continues with when solutions/ is not installed (HARD_FALLBACKS).

HARD_MISTAKES: dict[str, dict[str, tuple[str, str]]] = {  # exercise -> {key: (what learners write, what the check says)}
    "logit_lens": {
        "no_norm": ("applies the output layer to h directly",
                    "you skipped the model's final norm: after the last decoder layer the stream goes through "
                    "model.model.norm, then model.lm_head"),
        "probabilities": ("returns softmax probabilities", "you returned probabilities; return the logits (before softmax)"),
        "plain_layer_norm": ("uses F.layer_norm instead of the model's norm",
                             "a layer norm without the model's own weights is not its final norm: call model.model.norm"),
    },
    "sequential_as_one": {
        "parallel_sum": ("stacks [W1; W2] and [b1; b2]",
                         "that is the two edits summed (CS-ReFT with both gates open), not one after the other: edit 2 "
                         "reads h after edit 1 has changed it, so W2 also sees edit 1's change"),
        "wrong_order": ("applies edit 2 first", "your single edit equals edit 2 followed by edit 1; the order is edit 1, then edit 2"),
        "not_orthonormal": ("returns a combined R whose rows are not orthonormal",
                            "the combined R must have orthonormal rows: stack R1 and R2, do not mix them"),
    },
    "principal_cosines": {
        "row_by_row": ("compares row i of one basis with row i of the other",
                       "your numbers change when a basis is rotated within its subspace: the principal angles belong to "
                       "the subspaces, not to the bases you were given"),
        "squared": ("returns squared cosines (eigenvalues of M Mᵀ)", "those are the squared cosines: take their square roots"),
        "unsorted": ("returns the cosines unsorted", "return the cosines largest first"),
    },
    "routing_nmi": {
        "unnormalised": ("returns the mutual information itself", "that is the mutual information; divide it by the mean of the "
                                                                  "two entropies, so a perfect routing scores 1"),
        "purity": ("counts how often a skill's most common subspace is chosen",
                   "a majority count (purity) is not the NMI: it gives credit when every skill goes to one subspace"),
        "collapse": ("divides by zero when every prompt goes to one subspace",
                     "when every prompt goes to one subspace (or there is one skill) an entropy is 0: the NMI is 0 then"),
    },
}


def _says(exercise: str, mistake: str) -> str:
    return HARD_MISTAKES[exercise][mistake][1]


def _logit_lens_here(model, h: torch.Tensor) -> torch.Tensor:
    return model.lm_head(model.model.norm(h))


def _sequential_as_one_here(R1, W1, b1, R2, W2, b2):
    carry = W2 @ R1.T
    return torch.cat([R1, R2]), torch.cat([W1, W2 + carry @ (W1 - R1)]), torch.cat([b1, b2 + carry @ b1])


def _routing_nmi_with_library(skills: list, subspaces: list) -> float:
    from .evaluate import routing_nmi

    return routing_nmi(skills, subspaces)


HARD_FALLBACKS: dict[str, tuple[Callable, str]] = {
    "logit_lens": (_logit_lens_here, "csreft_lite.checks"),
    "sequential_as_one": (_sequential_as_one_here, "csreft_lite.checks"),
    "principal_cosines": (lambda Ri, Rj: torch.linalg.svdvals(Ri @ Rj.T), "torch.linalg.svdvals"),
    "routing_nmi": (_routing_nmi_with_library, "csreft_lite.evaluate.routing_nmi"),
}
# Exercise -> (a nudge at the first failure, the recipe once the same check has failed before).
HARD_HINTS: dict[str, tuple[str, str]] = {
    "logit_lens": ("what happens to the last decoder layer's output before it becomes logits?",
                   "apply the model's final norm (model.model.norm) to h, then its output layer (model.lm_head)."),
    "sequential_as_one": ("write Φ₂(Φ₁(h)) out: which coordinates does each edit set, and what does W2 read?",
                          "R = [R1; R2]; subspace 1 keeps W1, b1; edit 2 reads Φ₁(h), so its map is W2 + W2R1ᵀ(W1 − R1) "
                          "and its bias b2 + W2R1ᵀb1."),
    "principal_cosines": ("the answer may not depend on which orthonormal basis of each subspace you were given.",
                          "the cosines are the singular values of Ri Rjᵀ (torch.linalg.svdvals), already largest first."),
    "routing_nmi": ("count the pairs (skill, subspace); renaming the subspaces must not change the answer.",
                    "I = Σ p(s, c) log(p(s, c) / (p(s) p(c))) over the pairs seen; H from the counts of each list; return "
                    "I / ((H(S) + H(C)) / 2), or 0 when an entropy is 0."),
}
FALLBACKS.update(HARD_FALLBACKS)  # what a student release falls back to, and the two tiers of hints, as for the others
HINTS.update(HARD_HINTS)


def check_logit_lens(fn: Callable) -> Callable:
    """Exercise ``logit_lens(model, h) -> logits`` (notebook 01, ●●●): the final norm, then the output layer."""
    model = _nb01_tiny_llama()
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(0, 50, (2, 6), generator=gen)
    with torch.no_grad():
        first = model(input_ids=ids, output_hidden_states=True).hidden_states[1]  # the output of layer 0
    cases = [
        Case((model, first), "the tiny Llama's stream after layer 0, [2, 6, 16]"),
        Case((model, 5 * torch.randn(3, 16, generator=gen)), "three states of norm about 20, [3, 16]"),
        Case((model, _last_layer_output(model, ids)), "the last layer's output (the lens must give the model's own logits)"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        m, h = case.args
        with torch.no_grad():
            got, expected = f(m, h.clone()), _logit_lens_here(m, h)
        mistakes = [(m.lm_head(h), _says("logit_lens", "no_norm")),
                    (torch.softmax(expected, -1), _says("logit_lens", "probabilities")),
                    (m.lm_head(torch.nn.functional.layer_norm(h, h.shape[-1:])), _says("logit_lens", "plain_layer_norm"))]
        return known_mistake(got, expected, mistakes) or compare(got, expected)

    return check_exercise(fn, "nb01_interventions:logit_lens", cases, name="logit_lens", properties=properties)


def _last_layer_output(model, ids: torch.Tensor) -> torch.Tensor:
    """The output of the model's last decoder layer, read with a hook (hidden_states[-1] is taken after the norm)."""
    from .hooks import hidden_of
    from .models import decoder_layers

    store = {}
    # store.update returns None: a forward hook that returns a value replaces the layer's output (4.x: a tuple)
    handle = decoder_layers(model)[-1].register_forward_hook(lambda mod, args, output: store.update(h=hidden_of(output)))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return store["h"]


def _split_orthonormal(gen: torch.Generator, r: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .interventions import orthonormal_rows

    R = orthonormal_rows(torch.randn(2 * r, d, generator=gen))
    return R[:r], R[r:]


def _edit(h, R, W, b):
    return h + (h @ W.T + b - h @ R.T) @ R


def check_sequential_as_one(fn: Callable) -> Callable:
    """Exercise ``sequential_as_one(R1, W1, b1, R2, W2, b2) -> (R, W, b)`` (notebook 02, ●●●)."""
    gen = torch.Generator().manual_seed(12)

    def edits(r, d, read_back=True):
        R1, R2 = _split_orthonormal(gen, r, d)
        W1, b1, b2 = torch.randn(r, d, generator=gen), torch.randn(r, generator=gen), torch.randn(r, generator=gen)
        W2 = torch.randn(r, d, generator=gen) if read_back else R2.clone()  # W2 = R2: edit 2 ignores subspace 1
        return R1, W1, b1, R2, W2, b2

    cases = [
        Case(edits(2, 8), "two rank-2 edits in d=8 with orthogonal subspaces"),
        Case(edits(1, 5), "two rank-1 edits in d=5"),
        Case(edits(3, 12, read_back=False), "edit 2 with W2 = R2, blind to subspace 1 (then the order does not matter)"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        R1, W1, b1, R2, W2, b2 = case.args
        got = f(*(t.clone() for t in case.args))
        if not (isinstance(got, (tuple, list)) and len(got) == 3 and all(torch.is_tensor(t) for t in got)):
            return f"expected a tuple (R, W, b) of three torch.Tensors, got {_kind(got)}"
        R, W, b = got
        r, d = R1.shape
        for name, t, shape in (("R", R, (2 * r, d)), ("W", W, (2 * r, d)), ("b", b, (2 * r,))):
            if tuple(t.shape) != shape:
                return f"{name} should have shape {shape} (rank 2r = {2 * r}), got {tuple(t.shape)}"
        if not torch.allclose(R @ R.T, torch.eye(2 * r), atol=1e-4):
            return _says("sequential_as_one", "not_orthonormal")
        h = torch.randn(6, d, generator=torch.Generator().manual_seed(13))
        one, expected = _edit(h, R, W, b), _edit(_edit(h, R1, W1, b1), R2, W2, b2)
        mistakes = [(_edit(h, torch.cat([R1, R2]), torch.cat([W1, W2]), torch.cat([b1, b2])), _says("sequential_as_one", "parallel_sum")),
                    (_edit(_edit(h, R2, W2, b2), R1, W1, b1), _says("sequential_as_one", "wrong_order"))]
        problem = known_mistake(one, expected, mistakes) or compare(one, expected)
        return problem and f"your (R, W, b), applied to 6 random states, is not edit 1 then edit 2: {problem}"

    return check_exercise(fn, "nb02_loreft:sequential_as_one", cases, name="sequential_as_one", properties=properties)


def check_principal_cosines(fn: Callable) -> Callable:
    """Exercise ``principal_cosines(Ri, Rj) -> [r]`` (notebook 03, ●●●): the cosines of the principal angles."""
    gen = torch.Generator().manual_seed(14)
    Ri, Rj = _split_orthonormal(gen, 3, 10)
    from .interventions import orthonormal_rows

    tilted = orthonormal_rows(Ri + torch.tensor([[1.0], [0.2], [3.0]]) * Rj)  # tilted towards Rj's, by three angles
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=gen))[0]
    cases = [
        Case((tilted, Rj), "two rank-3 subspaces of d=10, one tilted towards the other"),
        Case((rotation @ tilted, Rj), "the same subspaces, the first basis rotated within its subspace"),
        Case((Ri, Rj), "two orthogonal subspaces (every cosine 0)"),
        Case((rotation @ Rj, Rj), "one subspace with two different bases (every cosine 1)"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        A, B = case.args
        got, expected = f(A.clone(), B.clone()), torch.linalg.svdvals(A @ B.T)
        mistakes = [((A * B).sum(-1), _says("principal_cosines", "row_by_row")),
                    (expected ** 2, _says("principal_cosines", "squared")),
                    (expected.flip(0), _says("principal_cosines", "unsorted"))]
        problem = known_mistake(got, expected, mistakes)
        if problem is None and torch.is_tensor(got) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-4) \
                and torch.allclose(got.sort(descending=True).values, expected, atol=1e-4):
            problem = _says("principal_cosines", "unsorted")
        return problem or compare(got, expected)

    return check_exercise(fn, "nb03_subspaces:principal_cosines", cases, name="principal_cosines", properties=properties)


def check_routing_nmi(fn: Callable) -> Callable:
    """Exercise ``routing_nmi(skills, subspaces) -> float`` (notebook 04, ●●●)."""
    skills = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    cases = [
        Case((skills, [2] * 4 + [0] * 4 + [1] * 4), "12 prompts of 3 skills, each skill to a subspace of its own (expect 1)"),
        Case((skills, [0] * 8 + [1] * 4), "two skills sharing subspace 0, the third alone"),
        Case((skills, [0] * 12), "every prompt to subspace 0: router collapse (expect 0)"),
        Case((skills, [0, 1, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0]), "a noisy routing"),
        Case((["x", "x", "y", "y", "y"], ["s1", "s2", "s2", "s2", "s1"]), "subspaces named by strings, uneven skills"),
    ]

    def properties(f: Callable, case: Case) -> str | None:
        import math
        from collections import Counter

        s, c = case.args
        try:
            got = f(list(s), list(c))
        except ZeroDivisionError:
            return _says("routing_nmi", "collapse")
        expected = _routing_nmi_with_library(s, c)
        if isinstance(got, (int, float)) or (torch.is_tensor(got) and got.numel() == 1):
            got = float(got)
            n = len(s)
            purity = sum(max(Counter(x for y, x in zip(s, c) if y == skill).values()) for skill in set(s)) / n
            mutual = expected * 0.5 * sum(-v / n * math.log(v / n) for cnt in (Counter(s), Counter(c)) for v in cnt.values())
            if abs(got - expected) > 1e-4:
                if abs(got - mutual) < 1e-4:
                    return _says("routing_nmi", "unnormalised")
                if abs(got - purity) < 1e-4:
                    return _says("routing_nmi", "purity")
        return compare(got, expected, atol=1e-4, rtol=0)

    return check_exercise(fn, "nb04_router:routing_nmi", cases, name="routing_nmi", properties=properties)
