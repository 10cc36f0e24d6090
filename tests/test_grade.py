"""The grading command on a folder of submissions made from the real notebooks and solutions/ (tests/submissions.py):
one row per submission and exercise with the right status, and a submission that loops, does not parse or deletes
files costs its own row only."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csreft_lite import grade

from .submissions import NOTEBOOKS, answer_cell, submission, with_answer, write_submissions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.classroom
def test_grading_a_folder_writes_the_right_row_for_each_submission_and_exercise(tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    expected = write_submissions(folder)
    before = sorted(p.name for p in folder.iterdir())
    sheet = tmp_path / "grades.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "csreft_lite.grade", str(folder), "--csv", str(sheet), "--time-limit", "4"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = list(csv.DictReader(sheet.open()))
    assert list(rows[0]) == ["file", "exercise", "status", "detail"]
    got = {(r["file"], r["exercise"]): r["status"] for r in rows}
    assert got == expected  # 24 submissions x their notebook's exercises (4 each), every status
    details = {(r["file"], r["exercise"]): r["detail"] for r in rows}
    assert any("passed 1 of" in d for (f, _), d in details.items() if f.startswith("partly"))
    assert all(d.startswith("✗") or "does not parse" in d or "raised" in d for (f, _), d in details.items()
               if got[(f, _)] == "wrong")
    assert sorted(p.name for p in folder.iterdir()) == before  # what the submissions deleted was their own folder
    assert f"{len(expected)} rows written" in run.stdout and len(expected) == 24 * 4


def _notebook_with(tmp_path, notebook: str, name: str, code: str) -> Path:
    nb = json.loads((NOTEBOOKS / notebook).read_text())
    cell = answer_cell(nb, name)
    cell["source"] = with_answer("".join(cell["source"]), name, code)
    path = tmp_path / f"x_{notebook}"
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.parametrize("code", [
    "balance_term = cl.balance_loss",
    "def balance_term(probs):\n    return cl.routing.balance_loss(probs)",
    "from csreft_lite.routing import balance_loss as mine\n\ndef balance_term(probs):\n    return mine(probs)",
    "def balance_term(probs):\n    return checks.FALLBACKS['balance_term'][0](probs)",
    "def balance_term(probs):\n    checks.compare = lambda *args, **kwargs: None\n    return probs.sum()",
])
def test_handing_the_exercise_to_the_library_is_delegating(tmp_path, code):
    path = _notebook_with(tmp_path, "04_router.ipynb", "balance_term", code)
    row = next(t for t in grade.tasks_of(path) if t.exercise == "balance_term").verdict
    assert row is not None and row.status == "delegates", row


def test_using_library_helpers_that_are_not_the_answer_is_not_delegating(tmp_path):
    """record_hidden's reference itself uses cl.decoder_layers and hidden_of: a learner may too."""
    nb = submission("01_hidden_state_interventions.ipynb", ["correct"])
    path = tmp_path / "a.ipynb"
    path.write_text(json.dumps(nb))
    task = next(t for t in grade.tasks_of(path) if t.exercise == "record_hidden")
    assert task.verdict is None and "decoder_layers" in task.source


@pytest.mark.parametrize("body, status, detail", [
    ("raise SystemExit(3)", "wrong", "SystemExit"),
    ("import os\n    os._exit(1)", "wrong", "the process died"),
    ("import time\n    time.sleep(60)", "timed out", "after 3 s"),
])
def test_a_submission_that_exits_dies_or_sleeps_costs_its_row_only(tmp_path, body, status, detail):
    path = _notebook_with(tmp_path, "01_hidden_state_interventions.ipynb", "steer",
                          f"def steer(h, vector, scale, positions=None):\n    {body}")
    tasks = [t for t in grade.tasks_of(path) if t.exercise in ("steer", "difference_of_means")]
    grade.preimport([t.source for t in tasks if t.source])  # as the command does: children start in milliseconds
    rows = grade.run_all(tasks, time_limit=3.0)
    assert (rows[1].status, rows[1].exercise) == (status, "steer") and detail in rows[1].detail, rows[1]
    assert rows[0].status == "missing"  # the stub beside it, graded as usual


def test_a_folder_without_notebooks_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="No .ipynb files"):
        grade.grade(tmp_path)
