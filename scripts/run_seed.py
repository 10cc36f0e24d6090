"""Run a notebook once with another SEED and print every text it prints: the seed study of the instructor's guide.

    python scripts/run_seed.py notebooks/03_multiple_subspaces.ipynb 1 [--out executed.ipynb]
    python scripts/run_seed.py notebooks/04_router.ipynb 2 --set 'SKILLS=["lowercase", "last_letter", "plural"]'

A cell ``SEED = N`` (and each ``--set NAME=VALUE``) goes right after the notebook's ``parameters`` cell (as papermill
injects parameters), so the notebook file itself is not changed. A result claim that does not hold in this run is
printed with a ⚠ (``checks.claim``, ``CSREFT_CLAIMS=report``), not raised, on seed 0 too: other settings on seed 0 are
a study as well. Run one at a time with OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def with_seed(path: Path, seed: int, settings: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    """The notebook with ``SEED = seed`` and ``settings`` (``NAME=VALUE``, Python) injected after its parameters cell."""
    nb = nbformat.read(str(path), as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise SystemExit(f"{path}: expected one cell tagged 'parameters', found {len(tagged)}")
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name.strip().isidentifier():
            raise SystemExit(f"--set wants NAME=VALUE (a Python value), got {setting!r}")
    lines = [f"SEED = {seed}", *settings]
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("\n".join(lines) + "  # injected by scripts/run_seed.py"))
    return nb


def printed(nb: nbformat.NotebookNode) -> str:
    """Every text output of the executed notebook, cell by cell (figures and widgets left out)."""
    parts = []
    for i, cell in enumerate(nb.cells):
        texts = [o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream"]
        texts += [o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", [])
                  if o.output_type == "execute_result"]
        if any(t.strip() for t in texts):
            parts.append(f"--- cell {i} ({cell.get('id', '')})\n" + "".join(texts).rstrip())
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("--out", type=Path, help="also save the executed notebook here")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="another parameter, e.g. "
                        "'SKILLS=[\"lowercase\", \"plural\"]' (repeatable)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take")
    args = parser.parse_args()
    nb = with_seed(args.notebook, args.seed, tuple(args.set))
    os.environ["CSREFT_CLAIMS"] = "report"  # the kernel inherits it: a claim that fails is reported, on seed 0 too
    start = time.perf_counter()
    NotebookClient(nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(args.notebook.parent)}}).execute()
    print(printed(nb))
    print(f"=== {args.notebook.name}, SEED = {args.seed} {' '.join(args.set)}: ran in {time.perf_counter() - start:.0f} s")
    if args.out:
        nbformat.write(nb, str(args.out))


if __name__ == "__main__":
    main()
