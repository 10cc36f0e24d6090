"""Submissions made from the real notebooks and the reference answers, for the grading and release tests: each
exercise's stub is replaced by an answer written from ``solutions/`` (correct, partly solved, wrong, delegating,
looping or unparseable), so the files follow the notebooks and the solutions as they change.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOLUTIONS = {
    "01_hidden_state_interventions.ipynb": "nb01_interventions",
    "02_orthonormal_loreft.ipynb": "nb02_loreft",
    "03_multiple_subspaces.ipynb": "nb03_subspaces",
    "04_router.ipynb": "nb04_router",
}
CHECK = re.compile(r"^(\w+) = checks\.check_(\w+)\(\1\)", re.M)


def exercises(notebook: dict) -> dict[str, int]:
    """Exercise name -> index of its cell (the code cell with ``name = checks.check_name(name)``), in order."""
    found = {}
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            for name, checked in CHECK.findall("".join(cell["source"])):
                if name == checked:
                    found[name] = i
    return found


def answer_cell(notebook: dict, name: str) -> dict:
    """The cell holding the stub ``def name``: the check's own cell, or the answer cell just before it (nbgrader's)."""
    at = exercises(notebook)[name]
    return next(notebook["cells"][i] for i in range(at, -1, -1)
                if re.search(rf"^def {name}\b", "".join(notebook["cells"][i]["source"]), re.M))


def _solution(module: str, name: str) -> tuple[list[str], ast.FunctionDef]:
    """The reference's imports (as lines) and its ``def`` (an AST to transform)."""
    source = inspect.getsource(importlib.import_module(f"solutions.{module}"))
    tree = ast.parse(source)
    imports = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and getattr(n, "module", None) != "__future__"]
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return imports, fn


def _statements(code: str) -> list[ast.stmt]:
    return ast.parse(code).body


def _after_docstring(fn: ast.FunctionDef) -> int:
    return 1 if ast.get_docstring(fn) is not None else 0


def answer(module: str, name: str, kind: str) -> str:
    """Source of an answer to exercise ``name`` of kind correct, partly, wrong, delegates, delegates_checks, loops,
    deletes (deletes every file in its working folder, then answers right) or syntax."""
    imports, fn = _solution(module, name)
    params = ", ".join(a.arg for a in fn.args.args)
    if kind == "partly":  # right on the first call, "not written yet" on every later one
        fn.body[_after_docstring(fn):_after_docstring(fn)] = _statements(f"{name}.calls = getattr({name}, 'calls', 0) + 1\nif {name}.calls > 1:\n    raise NotImplementedError")
    elif kind == "wrong":
        for node in ast.walk(fn):
            if isinstance(node, ast.Return) and node.value is not None:
                node.value = ast.BinOp(node.value, ast.Mult(), ast.Constant(2))
    elif kind == "delegates":
        fn.body = _statements(f"from solutions.{module} import {name} as answer\nreturn answer({params})")
    elif kind == "delegates_checks":
        fn.body = _statements(f"return checks.reference('{module}:{name}')({params})")
    elif kind == "loops":
        fn.body = _statements("while True:\n    pass")
    elif kind == "deletes":
        fn.body[_after_docstring(fn):_after_docstring(fn)] = _statements("import os\nfor entry in os.listdir('.'):\n    os.remove(entry)")
    source = "\n".join(imports) + "\n\n\n" + ast.unparse(ast.fix_missing_locations(fn))
    return source + "\n    return (" if kind == "syntax" else source


def with_answer(cell_source: str, name: str, code: str) -> str:
    """The exercise cell with its stub ``def name`` replaced by ``code`` (the rest of the cell kept)."""
    tree = ast.parse(cell_source)
    stub = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    lines = cell_source.splitlines()
    return "\n".join(lines[: stub.lineno - 1] + code.splitlines() + lines[stub.end_lineno:])


# Submission kind -> the answer kind of its exercises 1, 2, 3 (later exercises, if any, are answered correctly) and
# the status the grader must write for each.
KINDS = {
    "correct": (("correct", "correct", "correct"), ("solved", "solved", "solved")),
    "partly": (("partly", "correct", None), ("partly solved", "solved", "missing")),
    "wrong": (("wrong", "wrong", "wrong"), ("wrong", "wrong", "wrong")),
    "delegating": (("delegates", "delegates_checks", "delegates"), ("delegates", "delegates", "delegates")),
    "loops": (("deletes", "loops", "correct"), ("solved", "timed out", "solved")),
    "syntax": (("correct", "correct", "syntax"), ("solved", "solved", "wrong")),
}


def submission(notebook: str, answers: list[str | None]) -> dict:
    """The notebook with exercise i answered by kind ``answers[i]`` (None: the stub left as it is)."""
    nb = json.loads((NOTEBOOKS / notebook).read_text())
    names = list(exercises(nb))
    for i, name in enumerate(names):
        kind = answers[i] if i < len(answers) else "correct"
        if kind is not None:
            cell = answer_cell(nb, name)
            cell["source"] = with_answer("".join(cell["source"]), name, answer(SOLUTIONS[notebook], name, kind))
    return nb


def write_submissions(folder: Path) -> dict[tuple[str, str], str]:
    """Write the 6 kinds x 4 notebooks into ``folder``; return (file name, exercise) -> the status expected."""
    expected = {}
    for notebook in SOLUTIONS:
        names = list(exercises(json.loads((NOTEBOOKS / notebook).read_text())))
        for kind, (answers, statuses) in KINDS.items():
            file = f"{kind}_{notebook}"
            (folder / file).write_text(json.dumps(submission(notebook, list(answers)), indent=1))
            for i, name in enumerate(names):
                expected[(file, name)] = statuses[i] if i < len(statuses) else "solved"
    return expected
