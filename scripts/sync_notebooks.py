"""Keep every notebook's first cells as csreft_lite.colab writes them: the links cell (open in Colab, read it
rendered) first, and the set-up cell as the first code cell. A maintainer's tool (``make sync-notebooks``);
tests/test_setup.py checks that every committed notebook is in sync.

    python scripts/sync_notebooks.py notebooks/          # write the links and the set-up cell into every notebook
    python scripts/sync_notebooks.py --check notebooks/  # exit 1 if a notebook lacks either
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat

from csreft_lite.colab import LINKS_MARKER, MARKER, NOTEBOOK_DIR, bootstrap_cell_source, links_cell_source


def _links(path: str | os.PathLike) -> str:
    return links_cell_source(f"{NOTEBOOK_DIR}/{Path(path).name}")


def _first_code_cell(nb) -> int | None:
    return next((i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"), None)


def is_synced(path: str | os.PathLike) -> bool:
    """Whether the notebook's first cell is its links cell and its first code cell exactly the set-up cell."""
    nb = nbformat.read(str(path), as_version=4)
    i = _first_code_cell(nb)
    links = bool(nb.cells) and nb.cells[0].cell_type == "markdown" and nb.cells[0].source == _links(path)
    return links and i is not None and nb.cells[i].source == bootstrap_cell_source()


def _new_cell(nb, kind: str, source: str, cell_id: str):
    cell = getattr(nbformat.v4, f"new_{kind}_cell")(source)
    cell.pop("id", None)  # fresh id below, valid for the notebook's nbformat version
    if nb.nbformat_minor >= 5:
        cell.id = cell_id
    return cell


def sync(path: str | os.PathLike) -> bool:
    """Make the first cell the links cell and the first code cell the set-up cell; return True if the file changed.

    An older links or set-up cell (it starts with ``LINKS_MARKER`` or ``MARKER``) is replaced; otherwise the
    links cell is inserted at the top and the set-up cell before the first code cell, so no learner's code is lost.
    """
    if is_synced(path):
        return False
    nb = nbformat.read(str(path), as_version=4)
    links = _new_cell(nb, "markdown", _links(path), "colab-links")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder of notebooks")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not in sync")
    args = parser.parse_args(argv)
    notebooks = sorted(Path(args.folder).glob("*.ipynb"))
    if not args.check:
        for path in notebooks:
            print(f"{'updated' if sync(path) else 'up to date'}: {path}")
        return 0
    stale = [path for path in notebooks if not is_synced(path)]
    for path in stale:
        print(f"not synced: {path} (run `make sync-notebooks`)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
