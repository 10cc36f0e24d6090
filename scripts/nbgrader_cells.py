"""Give every exercise of the notebooks nbgrader's cells, so that an nbgrader course can use them as they are.

An exercise is a stub ``def NAME`` and its check ``NAME = checks.check_NAME(NAME)``. This script makes them two cells:

- the answer: an nbgrader *solution* cell (``grade_id`` NAME), whose stub body sits between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` (``nbgrader generate_assignment`` turns that region into its own stub);
- the check: a locked, graded *test* cell (``grade_id`` check_NAME, 1 point) that ends with ``checks.graded("NAME")``:
  under nbgrader's autograde it fails unless the learner's own function passed (an unsolved stub passes the check
  by continuing with the fallback); in the course it does nothing.

Idempotent: run it again after editing the notebooks (a merge included); ``--check`` changes nothing and exits 1
when a notebook is not in that form. tests/test_nbgrader_cells.py runs ``--check`` on notebooks/.

    python scripts/nbgrader_cells.py notebooks/           # write the cells and their metadata
    python scripts/nbgrader_cells.py --check notebooks/   # exit 1 if a notebook needs it
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

CHECK = re.compile(r"^(\w+) = checks\.check_(\w+)\(\1\)\s*$", re.M)
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def solution_metadata(name: str) -> dict:
    return {"grade": False, "grade_id": name, "locked": False, "schema_version": 3, "solution": True, "task": False}


def test_metadata(name: str) -> dict:
    return {"grade": True, "grade_id": f"check_{name}", "locked": True, "points": 1, "schema_version": 3,
            "solution": False, "task": False}


def _stub_def(source: str, name: str) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def with_markers(source: str, name: str) -> str:
    """The answer cell with its stub body (everything after the docstring) between the solution markers."""
    if BEGIN in source:
        return source
    fn = _stub_def(source, name)
    if fn is None:
        raise ValueError(f"no def {name} in its answer cell:\n{source}")
    lines = source.splitlines()
    first = fn.body[1 if ast.get_docstring(fn) is not None and len(fn.body) > 1 else 0]
    indent = " " * first.col_offset
    start, end = first.lineno - 1, fn.end_lineno
    return "\n".join(lines[:start] + [indent + BEGIN] + lines[start:end] + [indent + END] + lines[end:])


def with_graded_line(source: str, name: str) -> str:
    """The check cell with ``checks.graded(NAME)`` right after the check."""
    line = f'checks.graded("{name}")  # nbgrader: scores only if your own {name} passed'
    if f'checks.graded("{name}")' in source:
        return source
    lines = source.splitlines()
    i = next(i for i, text in enumerate(lines) if CHECK.match(text) and CHECK.match(text).group(1) == name)
    return "\n".join(lines[: i + 1] + [line] + lines[i + 1:])


def _split(nb, index: int, name: str) -> None:
    """Split the cell holding both ``def NAME`` and its check into the answer cell and the check cell."""
    cell = nb.cells[index]
    lines = cell.source.splitlines()
    at = next(i for i, text in enumerate(lines) if CHECK.match(text) and CHECK.match(text).group(1) == name)
    answer, check = "\n".join(lines[:at]).rstrip(), "\n".join(lines[at:]).strip()
    cell.source = answer
    new = nbformat.v4.new_code_cell(check)
    new.pop("id", None)
    if nb.nbformat_minor >= 5:
        new.id = f"check-{name}".replace("_", "-")
    nb.cells.insert(index + 1, new)


def exercise_cells(nb) -> dict[str, int]:
    """Exercise name -> index of the cell that runs its check."""
    found = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for name, checked in CHECK.findall(cell.source):
                if name == checked:
                    found[name] = i
    return found


def prepare(nb) -> None:
    """Make every exercise an answer cell and a check cell with their nbgrader metadata (in place)."""
    for name in exercise_cells(nb):
        i = exercise_cells(nb)[name]
        if _stub_def(nb.cells[i].source, name) is not None:
            _split(nb, i, name)
            i += 1
        answer = nb.cells[i - 1]
        if _stub_def(answer.source, name) is None:
            raise ValueError(f"exercise {name}: the cell before its check does not define {name}")
        answer.source = with_markers(answer.source, name)
        answer.metadata["nbgrader"] = solution_metadata(name)
        nb.cells[i].source = with_graded_line(nb.cells[i].source, name)
        nb.cells[i].metadata["nbgrader"] = test_metadata(name)


def process(path: Path, check: bool) -> bool:
    """Whether ``path`` needed changes (written unless ``check``)."""
    before = nbformat.read(str(path), as_version=4)
    nb = nbformat.read(str(path), as_version=4)
    prepare(nb)
    if nb == before:
        return False
    if not check:
        nbformat.validate(nb)
        nbformat.write(nb, str(path))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder of notebooks")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook needs the cells")
    args = parser.parse_args(argv)
    stale = [path for path in sorted(Path(args.folder).glob("*.ipynb")) if process(path, args.check)]
    for path in stale:
        print(f"{'needs nbgrader cells' if args.check else 'updated'}: {path}"
              + (" (run `python scripts/nbgrader_cells.py notebooks/`)" if args.check else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
