"""The instructor's guide (docs/instructor.md, a page of the site) and the room it describes: its table of the
checkers' mistakes is generated from csreft_lite.checks and lists every exercise, and the student install is the
light set."""

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

from csreft_lite import checks

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "instructor.md"


def _tables():
    spec = importlib.util.spec_from_file_location("instructor_tables", ROOT / "website" / "instructor_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checked_in_notebooks() -> dict[str, str]:
    """Every exercise a notebook checks (``checks.check_NAME(``), with the notebook's number, read from the notebooks."""
    found = {}
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        found.update({name: path.name[:2] for name in re.findall(r"checks\.check_(\w+)\(", code)})
    return found


def test_the_table_lists_every_exercise_the_notebooks_check_in_its_notebook():
    assert _tables().exercises() == _checked_in_notebooks()


def test_every_checker_in_checks_py_is_in_the_table():
    checkers = {name.removeprefix("check_") for name, _ in inspect.getmembers(checks, inspect.isfunction)
                if name.startswith("check_") and name != "check_exercise"}
    assert checkers == set(_tables().exercises())


def test_every_mistake_a_checker_names_is_a_row_with_its_message():
    tables = _tables()
    markdown = tables.mistakes_markdown()
    for exercise, mistakes in tables.mistakes().items():
        for what, says in mistakes:
            assert f"| `{exercise}` | {tables._cell(what)} | {tables._cell(says)} |" in markdown
    assert checks.HARD_MISTAKES and set(checks.HARD_MISTAKES) <= set(tables.mistakes())


def test_the_guide_has_one_place_for_the_table_and_the_build_fills_it():
    tables = _tables()
    text = GUIDE.read_text()
    assert text.count(tables.MARKER) == 1
    filled = tables.fill(text)
    assert tables.MARKER not in filled and tables.mistakes_markdown() in filled
    with pytest.raises(ValueError, match="mistakes table has nowhere to go"):
        tables.fill(text.replace(tables.MARKER, ""))


def test_the_guide_is_a_page_of_the_site():
    conf = (ROOT / "website" / "conf.py").read_text()
    assert '"docs/instructor.md"' in conf and '"docs/instructor"' in conf and "_instructor_tables" in conf


def test_the_guide_names_the_room_commands_that_exist():
    text = GUIDE.read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("student", "student-setup", "cache"):
        assert f"make {target}" in text and re.search(rf"^{target}:", makefile, re.M), target
    assert "python -m csreft_lite.models --build-cache" in text
    assert "scripts/run_seed.py" in text and (ROOT / "scripts" / "run_seed.py").is_file()
    assert "SEED_TABLE" not in text and "RUN_NOTE" not in text, "a placeholder of the seed study is left"


def test_the_student_install_is_the_light_set():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    light = " ".join(extras["lab"]).lower()
    for heavy in ("sphinx", "selenium", "alpaca-eval", "peft"):
        assert heavy not in light, f"the student set would install {heavy}"
    recipe = re.search(r"^\$\(STUDENT_STAMP\):.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "EXTRAS=lab" in recipe and "scripts/install_env.sh" in recipe
    readme = (ROOT / "README.md").read_text()
    assert "make student" in readme and "--build-cache" in readme
