"""Grade a folder of submitted notebooks with the course's own checkers, one row per submission and exercise.

    python -m csreft_lite.grade submissions/ --csv grades.csv [--time-limit 10] [--workers 2]

Each exercise function is taken out of its notebook without running the notebook: the code cell that defines
``NAME`` (the one that calls ``checks.check_NAME``, or the nearest one before it) gives its ``def NAME`` and any
other ``def``, ``class``, import or ``NAME = ...`` in that cell, after the notebook's top-level imports. Helpers a learner defined in another cell are not taken.
Each exercise then runs in a child process forked from this one (torch is imported once, here), in a fresh working
folder that is thrown away, under a time limit: a submission that loops, raises, exits, does not parse or deletes
files costs its own row only. This is not a security sandbox: a submission could still reach the rest of the machine,
so grade untrusted files in a container. Fork needs Linux or macOS.

Statuses: ``solved``; ``partly solved`` (which checks passed); ``wrong`` (the checker's message, or why the cell
could not run); ``missing`` (no such function, or the unsolved stub); ``timed out``; ``delegates`` (the function hands
the work to the reference answers in ``solutions/`` or to the library's own implementation of the exercise).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

CHECK_CALL = re.compile(r"\bchecks\.check_(\w+)\s*\(")
# Exercise -> the library names that do its whole job: calling one of them is handing the exercise over.
LIBRARY = {
    "record_hidden": {"record"},
    "orthonormalize": {"orthonormal_rows"},
    "loreft_edit": {"LoReFT"},
    "loreft_parameters": {"LoReFT"},
    "orthogonal_subspaces": {"orthonormal_rows", "CSReFT"},
    "gated_edit": {"CSReFT"},
    "instruction_summary": {"instruction_summary"},
    "balance_term": {"balance_loss"},
}
SAFE_TO_PREIMPORT = {"torch", "csreft_lite", "matplotlib", "numpy", "math", "random", "time", "contextlib", "ipywidgets",
                     "transformers", "collections", "functools", "itertools", "importlib", "subprocess", "sys"}


@dataclass
class Row:
    """One line of the grade sheet."""

    file: str
    exercise: str
    status: str
    detail: str = ""


@dataclass
class Task:
    """One exercise of one submission, ready to run: the module source that defines the function, or a verdict."""

    file: str
    exercise: str
    source: str | None = None
    verdict: Row | None = None


def _code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells if c.get("cell_type") == "code"]


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _imports(cells: list[str]) -> list[ast.stmt]:
    """Every top-level import of the notebook's cells that parse (IPython magics make a cell unparseable: skipped)."""
    found = []
    for tree in filter(None, map(_parse, cells)):
        found += [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return found


def _keeps(node: ast.stmt, name: str) -> bool:
    """What of the exercise's cell defines the answer: defs, classes, imports and ``NAME = ...`` other than the check."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
        return not CHECK_CALL.search(ast.unparse(node.value))
    return False


def _aliases(imports: list[ast.stmt]) -> dict[str, str]:
    """Local name -> what it is, for names imported from csreft_lite (its own name) or solutions ("solutions")."""
    aliases = {}
    for node in imports:
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: "solutions" for a in node.names if a.name.split(".")[0] == "solutions"})
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("csreft_lite", "solutions"):
            from_solutions = node.module.split(".")[0] == "solutions"
            aliases.update({a.asname or a.name: "solutions" if from_solutions else a.name for a in node.names})
    return aliases


def _handed_to(sub: ast.AST, aliases: dict[str, str], library: set[str]) -> str | None:
    """What ``sub`` (a node of the answer) hands the exercise to, if anything."""
    if isinstance(sub, (ast.Import, ast.ImportFrom)):
        modules = [a.name for a in sub.names] if isinstance(sub, ast.Import) else [sub.module or ""]
        return "the reference answers (solutions)" if any(m.split(".")[0] == "solutions" for m in modules) else None
    if isinstance(sub, ast.Name):
        used = aliases.get(sub.id)
        if used == "checks":  # an answer has no use for the checkers, except to fool them (checks.compare = ...)
            return "the checkers themselves (checks)"
    elif isinstance(sub, ast.Attribute):
        on_checks = isinstance(sub.value, ast.Name) and sub.value.id == "checks"
        if on_checks and sub.attr in ("reference", "expected", "FALLBACKS"):
            return f"the reference answers (checks.{sub.attr})"
        used = sub.attr
    else:
        return None
    if used == "solutions":
        return "the reference answers (solutions)"
    return f"the library's own implementation ({used})" if used in library else None


def delegation(name: str, kept: list[ast.stmt], imports: list[ast.stmt]) -> str | None:
    """How the answer to ``name`` hands its work over (to the reference answers or the library), or None."""
    aliases = _aliases(imports)
    for node in kept:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.FunctionDef) and node.name != name):
            continue
        for sub in ast.walk(node):
            handed = _handed_to(sub, aliases, LIBRARY.get(name, set()))
            if handed:
                return f"hands the work to {handed}"
    return None


def tasks_of(path: Path, exercises: list[str] | None = None) -> list[Task]:
    """One task per exercise of the submission ``path``: the exercises it checks, or ``exercises`` when given."""
    try:
        cells = _code_cells(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [Task(path.name, name, verdict=Row(path.name, name, "wrong", f"the notebook cannot be read: {err}"))
                for name in exercises or ["(all)"]]
    found = [m for cell in cells for m in CHECK_CALL.findall(cell) if m != "exercise"]
    names = list(dict.fromkeys(exercises or found))
    imports = _imports(cells)
    return [_task(path.name, name, cells, imports) for name in names]


def answer_cell(cells: list[str], name: str) -> str | None:
    """The cell that answers ``name``: the one running its check when it defines ``name`` too, else the nearest cell
    before it that does (nbgrader's layout: an answer cell, then a locked check cell)."""
    at = next((i for i, c in enumerate(cells) if re.search(rf"\bchecks\.check_{name}\s*\(", c)), None)
    if at is None:
        return None
    defines = re.compile(rf"^(def {name}\b|{name}\s*=(?!\s*checks\.check_))", re.M)
    return next((cells[i] for i in range(at, -1, -1) if defines.search(cells[i])), cells[at])


def _task(file: str, name: str, cells: list[str], imports: list[ast.stmt]) -> Task:
    cell = answer_cell(cells, name)
    if cell is None:
        return Task(file, name, verdict=Row(file, name, "missing", f"no cell runs checks.check_{name}"))
    try:
        tree = ast.parse(cell)
    except SyntaxError as err:
        return Task(file, name, verdict=Row(file, name, "wrong", f"the exercise's cell does not parse: {err.msg} (line {err.lineno})"))
    kept = [node for node in tree.body if _keeps(node, name)]
    if not any(isinstance(n, (ast.FunctionDef, ast.Assign)) for n in kept):
        return Task(file, name, verdict=Row(file, name, "missing", f"the cell defines no {name}"))
    handed = delegation(name, kept, imports + [n for n in kept if isinstance(n, (ast.Import, ast.ImportFrom))])
    if handed:
        return Task(file, name, verdict=Row(file, name, "delegates", handed))
    module = ast.Module(body=[_guarded(node) for node in imports] + kept, type_ignores=[])
    return Task(file, name, source=ast.unparse(ast.fix_missing_locations(module)))


def _guarded(node: ast.stmt) -> ast.stmt:
    """An import that cannot fail the row: ``try: import x / except ImportError: pass`` (ipywidgets may be missing)."""
    return ast.Try(body=[node], handlers=[ast.ExceptHandler(type=ast.Name("ImportError"), name=None, body=[ast.Pass()])],
                   orelse=[], finalbody=[])


class _TimeLimit(BaseException):
    """Raised in the child when its time is up (a BaseException, so the checker's ``except Exception`` lets it pass)."""


def _on_alarm(signum, frame):
    raise _TimeLimit


def run_task(source: str, name: str, time_limit: float) -> tuple[str, str]:
    """Define the submission's function from ``source`` and run ``checks.check_NAME`` on it: (status, detail)."""
    from . import checks

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            namespace = {"__name__": "submission"}
            exec(compile(source, "submission", "exec"), namespace)
            fn = namespace.get(name)
            if not callable(fn):
                return "missing", f"{name} is not a function in the submission"
            if fn in {entry[0] for entry in checks.FALLBACKS.values()}:
                return "delegates", f"{name} is the library's fallback itself"
            checks.OUTCOMES.clear()
            getattr(checks, f"check_{name}")(fn)
    except _TimeLimit:
        return "timed out", f"no result after {time_limit:g} s"
    except checks.ExerciseError as err:
        return "wrong", str(err).split("\n  Hint:")[0].replace("\n", " ")
    except BaseException as err:  # noqa: BLE001 (SystemExit included): the submission's own failure, this row only
        return "wrong", f"the cell raised {type(err).__name__}: {err}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    outcome = checks.OUTCOMES[name]
    if outcome.status == "partly solved":
        return "partly solved", f"passed {outcome.passed} of {outcome.total} checks, then raised NotImplementedError"
    if outcome.status == "not solved yet":
        return "missing", "not solved yet (the stub raises NotImplementedError)"
    return "solved", f"all {outcome.total} checks passed"


def _child(conn, source: str, name: str, time_limit: float, folder: str) -> None:
    import torch

    torch.set_num_threads(1)  # one thread per child: no thread pool inherited across the fork
    os.chdir(folder)  # a fresh folder of its own: what the submission writes or deletes there is thrown away
    Path("submission.py").write_text(source)
    try:
        conn.send(run_task(source, name, time_limit))
    finally:
        conn.close()
        os._exit(0)  # skip interpreter teardown (and anything the submission registered to run at exit)


def preimport(sources: list[str]) -> None:
    """Import once, before forking, what every child needs (torch, the library, transformers' Llama, the notebooks'
    safe imports), so that each child starts in milliseconds."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch  # noqa: F401

    from . import checks  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401  (record_hidden's tiny model)

    torch.set_num_threads(1)
    statements = {}
    for tree in filter(None, map(_parse, sources)):  # the guarded imports at the top of each task's source
        statements.update({ast.unparse(n.body[0]): n.body[0] for n in tree.body if isinstance(n, ast.Try)})
    for statement in statements.values():
        names = [a.name for a in statement.names] if isinstance(statement, ast.Import) else [statement.module or ""]
        if all(name.split(".")[0] in SAFE_TO_PREIMPORT for name in names):
            with contextlib.suppress(Exception):
                exec(compile(ast.Module(body=[statement], type_ignores=[]), "preimport", "exec"), {})


def run_all(tasks: list[Task], time_limit: float = 10.0, workers: int = 2) -> list[Row]:
    """Run every task, at most ``workers`` children at a time; a child past ``time_limit`` (+1 s grace) is killed."""
    context = multiprocessing.get_context("fork")
    rows: dict[int, Row] = {i: t.verdict for i, t in enumerate(tasks) if t.verdict is not None}
    todo = [i for i, t in enumerate(tasks) if t.verdict is None]
    running: dict = {}  # sentinel -> (index, process, connection, folder, deadline)
    root = Path(tempfile.mkdtemp(prefix="csreft-grade-"))
    try:
        while todo or running:
            while todo and len(running) < workers:
                i = todo.pop(0)
                running.update([_start(context, tasks[i], i, time_limit, root)])
            ready = wait(list(running), timeout=0.05)
            now = time.monotonic()
            for sentinel in list(running):
                i, process, conn, folder, deadline = running[sentinel]
                if sentinel in ready or now > deadline:
                    rows[i] = _finish(tasks[i], process, conn, now > deadline and sentinel not in ready, time_limit)
                    shutil.rmtree(folder, ignore_errors=True)
                    del running[sentinel]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [rows[i] for i in range(len(tasks))]


def _start(context, task: Task, i: int, time_limit: float, root: Path):
    folder = tempfile.mkdtemp(dir=root)
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, task.source, task.exercise, time_limit, folder), daemon=True)
    process.start()
    send.close()
    return process.sentinel, (i, process, receive, folder, time.monotonic() + time_limit + 1.0)


def _finish(task: Task, process, conn, late: bool, time_limit: float) -> Row:
    if late:
        process.kill()
    process.join()
    result = None
    with contextlib.suppress(EOFError, OSError):
        if conn.poll():
            result = conn.recv()
    conn.close()
    if result is None:
        status, detail = ("timed out", f"killed after {time_limit:g} s") if late else ("wrong", f"the process died (exit code {process.exitcode})")
    else:
        status, detail = result
    return Row(task.file, task.exercise, status, detail)


def grade(folder: str | os.PathLike, time_limit: float = 10.0, workers: int = 2) -> list[Row]:
    """Every ``*.ipynb`` of ``folder`` (sorted by name), each exercise it checks: one ``Row`` each."""
    paths = sorted(Path(folder).glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"No .ipynb files in {folder}: pass the folder that holds the submitted notebooks.")
    tasks = [task for path in paths for task in tasks_of(path)]
    preimport([t.source for t in tasks if t.source])
    return run_all(tasks, time_limit, workers)


def write_csv(rows: list[Row], path: str | os.PathLike) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "exercise", "status", "detail"])
        writer.writerows([row.file, row.exercise, row.status, row.detail] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csreft_lite.grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder of submitted notebooks (*.ipynb)")
    parser.add_argument("--csv", required=True, help="where to write the grade sheet")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per exercise (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="exercises checked at once (default 2)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    rows = grade(args.folder, args.time_limit, args.workers)
    write_csv(rows, args.csv)
    counts = {status: sum(r.status == status for r in rows) for status in dict.fromkeys(r.status for r in rows)}
    print(f"{len(rows)} rows written to {args.csv} in {time.monotonic() - start:.0f} s: "
          + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
