"""A copy of the repository as git would commit it, for tests that build or install the package.

Building in place would leave ``build/`` and ``*.egg-info`` in the checkout; and a test of what a
release installs must see only files that git ships, not whatever else lies in the working tree.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked_files(root: Path = ROOT) -> list[str]:
    """The paths git tracks (the index: HEAD plus staged files); empty when ``root`` is not a git checkout."""
    if shutil.which("git") is None or not (root / ".git").exists():
        return []
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def copy_tracked(dest: Path, root: Path = ROOT) -> Path:
    """Copy every tracked file, as it is now in the working tree (uncommitted edits included), to ``dest``."""
    files = tracked_files(root)
    if not files:
        raise RuntimeError(f"{root} is not a git checkout (or git is missing): cannot tell which files ship")
    for rel in files:
        src = root / rel
        if not src.is_file():  # deleted in the working tree, not yet in the index
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest
