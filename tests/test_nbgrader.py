"""nbgrader 0.9, the real one, on notebook 01 as committed (scripts/nbgrader_cells.py gave it nbgrader's cells):
``generate_assignment`` makes the student version, ``autograde`` gives full marks to the reference answers and zero
to the unsolved stubs (which run on, falling back, but score nothing).

nbgrader runs in its own venv (its dependencies are not the course's), built once into the cache folder
``CSREFT_NBGRADER_VENV`` (default ~/.cache/csreft-lite/nbgrader-0.9-venv) and reused; its kernel is this Python.
Marked ``classroom``: `make test` runs it once; the transformers 4.x jobs skip it. About a minute once the venv exists
(notebook 01 runs twice, in its smoke sizes).
"""

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .submissions import NOTEBOOKS, SOLUTIONS, answer, exercises, with_answer

pytestmark = pytest.mark.classroom

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_hidden_state_interventions.ipynb"
NBGRADER = "nbgrader==0.9.*"


def nbgrader_venv() -> Path:
    """The nbgrader venv, built on first use (pip from PyPI), reused afterwards."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "csreft-lite" / "nbgrader-0.9-venv"
    folder = Path(os.environ.get("CSREFT_NBGRADER_VENV", default))
    ready = folder / ".csreft-ready"
    if not ready.exists():
        venv.create(folder, with_pip=True, clear=True)
        subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", NBGRADER], check=True)
        ready.touch()
    return folder / "bin" / "nbgrader"


def _smoke(nb: dict) -> dict:
    """The notebook in its smoke sizes, as CI runs it (SMOKE = True in the tagged configuration cell)."""
    for cell in nb["cells"]:
        if "parameters" in cell["metadata"].get("tags", []):
            cell["source"] = re.sub(r"^SMOKE = False", "SMOKE = True", "".join(cell["source"]), flags=re.M)
    return nb


def _answered(nb: dict) -> dict:
    """The student version with every exercise answered by the reference."""
    for name in exercises(nb):
        cell = next(nb["cells"][i] for i in range(exercises(nb)[name], -1, -1)
                    if re.search(rf"^def {name}\b", "".join(nb["cells"][i]["source"]), re.M))
        cell["source"] = with_answer("".join(cell["source"]), name, answer(SOLUTIONS[NOTEBOOK], name, "correct"))
    return nb


def _course(tmp_path: Path) -> tuple[Path, dict]:
    course = tmp_path / "course"
    (course / "source" / "ps1").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'csreft'\nc.ExecutePreprocessor.timeout = 600\n")
    (course / "source" / "ps1" / NOTEBOOK).write_text(json.dumps(_smoke(json.loads((NOTEBOOKS / NOTEBOOK).read_text()))))
    kernel = tmp_path / "jupyter" / "kernels" / "python3"  # the course's kernel: this Python, not nbgrader's venv
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter"), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return course, env


def test_nbgrader_gives_full_marks_to_the_reference_answers_and_zero_to_the_stubs(tmp_path):
    nbgrader = nbgrader_venv()
    course, env = _course(tmp_path)
    env["PATH"] = f"{nbgrader.parent}{os.pathsep}{env['PATH']}"  # nbgrader runs its venv's alembic by name

    def run(*args):
        result = subprocess.run([str(nbgrader), *args], cwd=course, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    run("generate_assignment", "ps1", "--force")
    released = json.loads((course / "release" / "ps1" / NOTEBOOK).read_text())
    sources = "".join("".join(c["source"]) for c in released["cells"])
    assert "BEGIN SOLUTION" not in sources and "raise NotImplementedError()" in sources
    for student, nb in (("reference", _answered(json.loads(json.dumps(released)))), ("stubs", released)):
        folder = course / "submitted" / student / "ps1"
        folder.mkdir(parents=True)
        (folder / NOTEBOOK).write_text(json.dumps(nb))
    run("autograde", "ps1", "--create", "--force")
    run("export", "--to", str(tmp_path / "grades.csv"))
    rows = (tmp_path / "grades.csv").read_text().splitlines()
    header = rows[0].split(",")
    scores = {r.split(",")[header.index("student_id")]: r.split(",") for r in rows[1:]}
    score, max_score = header.index("raw_score"), header.index("max_score")
    n = len(exercises(released))
    assert n == 4  # notebook 01's four exercises, one point each
    assert float(scores["reference"][max_score]) == n
    assert float(scores["reference"][score]) == n
    assert float(scores["stubs"][score]) == 0.0
