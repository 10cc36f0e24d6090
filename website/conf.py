"""Sphinx configuration of the course's website (`make site`).

The source folder is the repository itself (`sphinx-build -c website . build/site`), so every page
keeps its repository path: `notebooks/01_hidden_state_interventions.ipynb` becomes
`notebooks/01_hidden_state_interventions.html`, and the theme's Colab button opens that same path.
MyST-NB executes each notebook once and caches the result in `.jupyter_cache/` (outside the build
folder, so `make clean-site` keeps it); a notebook runs again only when one of its code cells changes.
"""

import os
import sys
from pathlib import Path

from docutils import nodes
from sphinx import addnodes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc reads this checkout's csreft_lite
sys.path.insert(0, str(ROOT / "website"))  # instructor_tables: the guide's generated table

from csreft_lite import __version__, colab  # noqa: E402

project = "CS-ReFT from scratch"
author = "the csreft-from-scratch authors"
release = version = __version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx-mathjax-offline"]  # MathJax 3, served from _static (no CDN)

root_doc = "README"
# The pages: the README (landing page), the notebooks, the API reference, the benchmark write-ups.
# SITE_NOTEBOOKS="01 05" builds only those notebooks (a quick look while editing); `make site` builds all.
_only = os.environ.get("SITE_NOTEBOOKS", "").split()
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb") if not _only or p.name[:2] in _only)
include_patterns = ["README.md", "website/api.md", "bench/RESULTS.md", "docs/benchmarks.md", "docs/instructor.md"]
include_patterns += [f"notebooks/{name}.ipynb" for name in NOTEBOOKS]
exclude_patterns = ["build", ".venv*", ".jupyter_cache", "**/.ipynb_checkpoints"]
TOCTREE = [f"notebooks/{name}" for name in NOTEBOOKS] + ["docs/instructor", "website/api", "bench/RESULTS", "docs/benchmarks"]

# Execution: once, cached; any error fails the build (a cell tagged raises-exception may raise).
nb_execution_mode = "cache"
nb_execution_cache_path = str(ROOT / ".jupyter_cache")
nb_execution_timeout = 900  # seconds per cell; notebook 03's longest cell takes about a minute
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# The kernels inherit this: no download progress bars (a widget per dataset split) in the pages.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# Widgets: their scripts come from website/_static/vendor (scripts/fetch_site_js.sh, from npm), never a CDN.
# (Core widgets only: embed-amd.js bundles them, so it never asks a CDN for a module.) Paths are under _static.
nb_ipywidgets_js = {
    "widgets-offline.js": {},
    "vendor/require.js": {},
    "vendor/html-manager/embed-amd.js": {},
}

html_theme = "sphinx_book_theme"
html_title = "CS-ReFT from scratch"
html_static_path = ["_static"]
html_context = {"default_mode": "light"}
html_show_sourcelink = False
_org_repo = colab.REPO_URL.removeprefix("https://github.com/")
html_theme_options = {
    "repository_url": colab.REPO_URL,
    "repository_branch": colab.RELEASE,
    "path_to_docs": "",
    "use_repository_button": True,
    "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    "home_page_in_toc": True,
    "show_toc_level": 2,
}

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["alpaca_eval"]


def _add_toctree(app, docname, source):
    """The README is the landing page; Sphinx reads a hidden table of contents after it (GitHub shows none)."""
    if docname == root_doc:
        source[0] += "\n\n```{toctree}\n:hidden:\n\n" + "\n".join(TOCTREE) + "\n```\n"


def _instructor_tables(app, docname, source):
    """The instructor's guide gets its table of the checkers' mistakes from csreft_lite.checks at every build."""
    if docname == "docs/instructor":
        import instructor_tables  # website/instructor_tables.py

        source[0] = instructor_tables.fill(source[0])


def _repo_file_links(app, doctree, docname):
    """A link to a repository file that is not a page (a script, a JSON file) opens it on GitHub."""
    for node in list(doctree.findall(addnodes.download_reference)):
        target = node["reftarget"]
        path = (Path(app.srcdir) / Path(docname).parent / target).resolve()
        rel = path.relative_to(ROOT).as_posix()
        ref = nodes.reference("", "", *node.children, refuri=f"{colab.REPO_URL}/blob/{colab.RELEASE}/{rel}")
        node.replace_self(ref)


def _every_notebook_ran(app, env):
    """Fail the build on a notebook page whose code never ran (execution off, or nothing cached for it)."""
    from myst_nb.sphinx_ import NbMetadataCollector

    for name in NOTEBOOKS:
        data = NbMetadataCollector.get_exec_data(env, f"notebooks/{name}")
        if not data or not data.get("succeeded") or data.get("method") not in ("cache", "auto", "force"):
            raise RuntimeError(f"notebooks/{name}.ipynb: its code did not run for the site ({data!r})")


def _index_redirect(app, exception):
    """GitHub Pages serves index.html: send it to the landing page."""
    if exception is None and app.builder.name == "html":
        (Path(app.outdir) / "index.html").write_text(
            '<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=README.html">'
            '<link rel="canonical" href="README.html"><a href="README.html">CS-ReFT from scratch</a>\n'
        )


def setup(app):
    app.connect("source-read", _add_toctree)
    app.connect("source-read", _instructor_tables)
    app.connect("doctree-resolved", _repo_file_links)
    app.connect("env-check-consistency", _every_notebook_ran)
    app.connect("build-finished", _index_redirect)
