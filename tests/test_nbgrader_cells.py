"""scripts/nbgrader_cells.py: every exercise of the committed notebooks is an nbgrader answer cell and a locked, graded
check cell; the script makes them from the one-cell form, idempotently, and `--check` catches a notebook without."""

import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from csreft_lite import checks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import nbgrader_cells  # noqa: E402

ONE_CELL = '''def steer(h, vector, scale, positions=None):
    """Return a new torch.Tensor of the shape of h, [batch, seq, d]."""
    raise NotImplementedError  # your code here


steer = checks.check_steer(steer)
assert steer is not None'''


def test_the_committed_notebooks_have_their_nbgrader_cells():
    assert nbgrader_cells.main(["--check", str(ROOT / "notebooks")]) == 0


def test_the_script_splits_marks_and_locks_an_exercise_once(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell(ONE_CELL)]
    path = tmp_path / "01_demo.ipynb"
    nbformat.write(nb, str(path))
    assert nbgrader_cells.main(["--check", str(tmp_path)]) == 1
    assert nbgrader_cells.main([str(tmp_path)]) == 0
    cells = nbformat.read(str(path), as_version=4).cells
    answer, check = cells[1], cells[2]
    assert answer.source.splitlines()[2:5] == ["    ### BEGIN SOLUTION", "    raise NotImplementedError  # your code here",
                                               "    ### END SOLUTION"]
    assert answer.metadata["nbgrader"] == {"grade": False, "grade_id": "steer", "locked": False, "schema_version": 3,
                                           "solution": True, "task": False}
    assert check.source.splitlines()[:2] == ["steer = checks.check_steer(steer)",
                                             'checks.graded("steer")  # nbgrader: scores only if your own steer passed']
    assert check.source.endswith("assert steer is not None")
    assert check.metadata["nbgrader"]["grade"] and check.metadata["nbgrader"]["locked"]
    before = path.read_text()
    assert nbgrader_cells.main([str(tmp_path)]) == 0 and path.read_text() == before  # idempotent
    assert nbgrader_cells.main(["--check", str(tmp_path)]) == 0


def test_the_committed_notebooks_are_unchanged_by_the_script(tmp_path):
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        shutil.copy(path, tmp_path / path.name)
        nbgrader_cells.main([str(tmp_path)])
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name


def test_graded_fails_under_nbgrader_only_when_the_learners_own_function_did_not_pass(monkeypatch, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    checks.OUTCOMES.clear()
    checks.check_steer(stub)
    checks.graded("steer")  # the course: the stub falls back and Run All goes on
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(checks.ExerciseError, match="not solved yet"):
        checks.graded("steer")
    from solutions.nb01_interventions import steer

    checks.check_steer(lambda *a: steer(*a))
    checks.graded("steer")
    checks.OUTCOMES.clear()
