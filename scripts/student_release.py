"""Write the course without its reference answers, to hand to a class: `make student-release` (build/student/).

It holds the notebooks, the package ``csreft_lite``, a README for students and the install files; no ``solutions/``,
and a pyproject.toml that packages ``csreft_lite`` only. In it every exercise checker compares with, and an unsolved
exercise continues with, the library's own implementation (``checks.FALLBACKS``), so every notebook still runs top
to bottom. tests/test_student_release.py checks the release's files and its fallbacks.

    python scripts/student_release.py [DEST]     # default build/student
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL_FILES = ["constraints.txt", "environment.yml", "scripts/install_env.sh"]

README = """# CS-ReFT from scratch: the course (student release)

Five notebooks that build CS-ReFT (Compositional Subspace Representation Fine-tuning) from scratch, and the small
library `csreft_lite` they use. This release has no reference answers: write each exercise yourself.

## Install and open the course

    bash scripts/install_env.sh .venv           # a virtual environment with the course and its model (CPU torch)
    .venv/bin/jupyter lab notebooks/            # needs JupyterLab: .venv/bin/pip install jupyterlab

or, in an environment you already have: `pip install -e .` from this folder.

## Exercises

Each exercise is a function to write, `def name(...): raise NotImplementedError`, followed by a check:
`name = checks.check_name(name)` runs your function on small cases and prints ✓, or says what is wrong (a nudge
first, the full recipe if the same check fails again). While an exercise is not solved, the notebook goes on with
the library's own implementation of it, so every notebook runs from top to bottom. The last cell of each notebook
prints which exercises you solved.
"""


def release_pyproject(text: str) -> str:
    """The course's pyproject.toml, packaging ``csreft_lite`` only and without the developers' pytest set-up."""
    text = re.sub(r"\[tool\.setuptools\.packages\.find\]\n(#[^\n]*\n)*include = \[[^\]]*\]",
                  '[tool.setuptools.packages.find]\n# The student release: the library only, no reference answers.\n'
                  'include = ["csreft_lite*"]', text)
    return re.sub(r"\n\[tool\.pytest\.ini_options\].*", "\n", text, flags=re.S)


def build(dest: Path) -> Path:
    """Write the release into ``dest`` (replaced if it exists); return it."""
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "csreft_lite", dest / "csreft_lite", ignore=ignore)
    (dest / "notebooks").mkdir(parents=True)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(notebook, dest / "notebooks" / notebook.name)
    for name in INSTALL_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    (dest / "pyproject.toml").write_text(release_pyproject((ROOT / "pyproject.toml").read_text()))
    (dest / "README.md").write_text(README)
    leaked = [p for p in dest.rglob("*") if p.name == "solutions" or "nb0" in p.name and p.suffix == ".py"]
    if leaked:
        raise RuntimeError(f"reference answers in the student release: {leaked}")
    return dest


if __name__ == "__main__":
    out = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "student")
    print(f"the student release: {out} ({sum(1 for _ in out.rglob('*') if _.is_file())} files, no solutions/)")
