"""The student release (`make student-release`, scripts/student_release.py): no reference answers anywhere, a
pyproject that packages the library only, and, run from the release's own files with no `solutions` on the path,
every checker accepts a right answer and an unsolved stub continues with the library's implementation. (The release's
notebooks are the committed ones, which nbval runs; the full Run All of 01-04 in the release, unsolved and solved, is
too slow for CI and is measured by hand, see the release's commit.)"""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from csreft_lite import checks

from .submissions import SOLUTIONS, answer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import student_release  # noqa: E402

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

IN_THE_RELEASE = r"""
import importlib.util, json, sys
import csreft_lite
from csreft_lite import checks
assert importlib.util.find_spec("solutions") is None and not checks.solutions_available()
answers = json.loads(sys.argv[1])

def stub(*args, **kwargs):
    raise NotImplementedError

report = {"csreft_lite": csreft_lite.__file__}
for name, source in answers.items():
    check = getattr(checks, f"check_{name}")
    fell_back = check(stub) is checks.FALLBACKS[name][0]
    namespace = {}
    exec(source, namespace)
    mine = namespace[name]
    report[name] = [fell_back, check(mine) is mine, checks.OUTCOMES[name].status]
print("RELEASE", json.dumps(report))
"""


def test_the_release_has_no_answers_and_packages_the_library_only(tmp_path):
    dest = student_release.build(tmp_path / "student")
    assert not list(dest.rglob("solutions")) and not list(dest.rglob("nb0*.py"))
    assert tomllib.loads((dest / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"] == ["csreft_lite*"]
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert (dest / "notebooks" / notebook.name).read_bytes() == notebook.read_bytes()
    assert (dest / "scripts" / "install_env.sh").exists() and "no reference answers" in (dest / "README.md").read_text()


def test_in_the_release_a_stub_falls_back_to_the_library_and_a_right_answer_passes(tmp_path):
    dest = student_release.build(tmp_path / "student")
    bare = tmp_path / "venv"
    venv.create(bare, with_pip=False)  # no .pth files: this venv's editable install (which maps solutions) stays out
    answers = {name: answer(module, name, "correct") for notebook, module in SOLUTIONS.items()
               for name in checks.FALLBACKS if hasattr(__import__(f"solutions.{module}", fromlist=[name]), name)}
    env = {"PYTHONPATH": f"{dest}:{sysconfig.get_paths()['purelib']}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(bare / "bin" / "python"), "-c", IN_THE_RELEASE, json.dumps(answers)], cwd=dest / "notebooks",
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [l for l in run.stdout.splitlines() if l.startswith("RELEASE ")]
    report = json.loads(line.removeprefix("RELEASE "))
    assert Path(report.pop("csreft_lite")).is_relative_to(dest)
    assert set(report) == set(checks.FALLBACKS)
    assert all(result == [True, True, "solved"] for result in report.values()), report
