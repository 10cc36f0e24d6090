"""The built website, read as a visitor would: every page in headless Chromium, with no network.

Run after `make site`: `make test-site` (or `pytest -p no:nbval website/test_site.py`; SITE_DIR names the build).
A local web server on 127.0.0.1 serves the build; Chromium resolves no other host, and the test fails on any
request that leaves 127.0.0.1 (a CDN script, a web font), so what passes here renders offline.

For each notebook page: as many rendered figures (loaded images, naturalWidth > 0) as the executed notebook
has image outputs (counted in MyST-NB's execution cache, not written down here); math typeset by MathJax
(no raw `$$` left); no traceback; the Open-in-Colab button and the links cell open this notebook's own path.
For the site: the sidebar reaches every notebook and the instructor's guide, the next/previous links work, and
search finds pages. The guide shows its generated table of the checkers' mistakes, a row for every exercise. Widget
pages load their icon fonts from the site's own copy (_static/vendor/html-manager/), not from the page's folder.

Needs Debian's `chromium` and `chromium-driver` and `selenium` (`pip install -e ".[docs]"`). Where they are
missing the tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urldefrag

import pytest

from csreft_lite import colab

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("SITE_DIR", ROOT / "build" / "site"))
if not SITE.is_absolute():
    SITE = ROOT / SITE
CACHE = ROOT / ".jupyter_cache"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCREENSHOTS = ROOT / "build" / "site-screenshots"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the website's browser test must run in CI)")
    pytest.skip(reason)


def executed_notebook(path: Path):
    """The executed notebook that the site rendered, from MyST-NB's jupyter-cache."""
    from jupyter_cache import get_cache

    if not CACHE.is_dir():
        _missing(f"no execution cache at {CACHE}: run `make site` first")
    try:
        _, nb = get_cache(str(CACHE)).merge_match_into_file(str(path))
    except KeyError:
        pytest.fail(f"{path.name}: not in the execution cache, so the site shows it unexecuted (run `make site`)")
    return nb


def expected_figures(nb) -> int:
    """Image outputs of the executed notebook (a widget's own output is not one: its view is the widget)."""
    return sum(
        1
        for cell in nb.cells if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") in ("display_data", "execute_result")
        and WIDGET_VIEW not in out.get("data", {}) and any(t in out.get("data", {}) for t in IMAGE_TYPES)
    )


def test_every_code_cell_ran_for_the_site():
    """The cached notebooks the site shows ran every code cell (an execution count on each)."""
    for path in NOTEBOOKS:
        nb = executed_notebook(path)
        unrun = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip() and not c.get("execution_count")]
        assert not unrun, f"{path.name}: code cells {unrun} have no execution count in the site's run"
        assert expected_figures(nb) > 0 or "05_" in path.name, f"{path.name}: the executed notebook has no figure"


# ---- the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    if not (SITE / "README.html").is_file():
        _missing(f"no built site at {SITE}: run `make site` first")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        _missing("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[docs]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # failed loads (a font not found) are logged
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 # no host but this machine: anything fetched from the web would fail to load
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    # MathJax 3 typesets after the page has loaded: wait for it (a page without math resolves at once).
    browser.set_script_timeout(60)
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const p = window.MathJax && MathJax.startup && MathJax.startup.promise;"
        "(p || Promise.resolve()).then(() => done(true), () => done(false));")
    wait.until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))


def _offsite_requests(browser, base: str) -> list[str]:
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [n for n in names if not n.startswith(base) and not n.startswith("data:")]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_page_as_a_visitor_sees_it(browser, server, notebook):
    from selenium.webdriver.common.by import By

    repo_path = notebook.relative_to(ROOT).as_posix()
    nb = executed_notebook(notebook)
    _open(browser, server + repo_path.replace(".ipynb", ".html"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{notebook.stem[:2]}-top.png"))

    # Every figure the notebook makes, loaded and not empty.
    figures = browser.execute_script(
        "return Array.from(document.querySelectorAll('div.cell_output img'))"
        ".filter(i => !i.closest('.jupyter-widgets, .widget-area, .jupyter-widgets-view'))"
        ".map(i => [i.naturalWidth, i.naturalHeight, i.getAttribute('src').slice(0, 60)])")
    empty = [f for f in figures if f[0] == 0 or f[1] == 0]
    assert not empty, f"{notebook.name}: images that did not load: {empty}"
    assert len(figures) == expected_figures(nb), (
        f"{notebook.name}: {len(figures)} figures on the page, the executed notebook made {expected_figures(nb)}")

    # Math: typeset by MathJax, no TeX left as text.
    text = browser.find_element(By.CSS_SELECTOR, "main").text
    if any("$" in c.source for c in nb.cells if c.cell_type == "markdown"):
        assert browser.find_elements(By.CSS_SELECTOR, "mjx-container"), f"{notebook.name}: no math was typeset"
    assert "$$" not in text and "\\begin{" not in text and "\\frac" not in text, f"{notebook.name}: raw TeX on the page"

    # No cell failed.
    assert "Traceback (most recent call last)" not in text, f"{notebook.name}: a traceback on the page"
    assert not browser.find_elements(By.CSS_SELECTOR, "div.output.traceback"), f"{notebook.name}: a traceback output"

    # Widgets, where the notebook has them: drawn from their saved state (the scripts are served locally).
    if any(WIDGET_VIEW in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])):
        assert browser.find_elements(By.CSS_SELECTOR, ".widget-slider, .widget-hslider, .jupyter-widgets .widget-inline-hbox"), (
            f"{notebook.name}: its widgets were not drawn")

    # The Colab buttons (the theme's launch button and the notebook's own links cell) open this notebook.
    colab_links = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='colab.research.google.com']")}
    assert colab_links == {colab.colab_url(repo_path)}, f"{notebook.name}: Colab links {colab_links}"
    assert (ROOT / repo_path).is_file()

    assert not _offsite_requests(browser, server), f"{notebook.name}: requests that leave the machine"
    assert not _missing_fonts(browser, server), f"{notebook.name}: fonts not found: {_missing_fonts(browser, server)}"


def _sidebar_pages(browser) -> set[str]:
    """The pages the sidebar links, without fragments: Sphinx links the page being read as "#", i.e. PAGE#."""
    from selenium.webdriver.common.by import By

    return {urldefrag(a.get_attribute("href")).url for a in browser.find_elements(By.CSS_SELECTOR, "nav.bd-links a")}


FONTS = (".woff2", ".woff", ".ttf", ".eot")


def _missing_fonts(browser, base: str) -> list[str]:
    """Font files the page asked for outside the site's copy, or that the browser could not load (console errors)."""
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    elsewhere = [n for n in names if n.split("?")[0].endswith(FONTS) and not n.startswith(base + "_static/")]
    failed = [e["message"] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and any(ext in e["message"] for ext in FONTS)]
    return elsewhere + failed


def test_the_instructors_guide_shows_the_checkers_mistakes(browser, server):
    import importlib.util

    from selenium.webdriver.common.by import By

    spec = importlib.util.spec_from_file_location("instructor_tables", ROOT / "website" / "instructor_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    _open(browser, server + "docs/instructor.html")
    browser.save_screenshot(str(SCREENSHOTS / "instructor.png"))
    sidebar = _sidebar_pages(browser)
    assert server + "docs/instructor.html" in sidebar, "the sidebar does not link the instructor's guide"
    plain = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "…": "..."})  # Sphinx's smart quotes and ellipses, back
    cells = [td.text.translate(plain) for td in browser.find_elements(By.CSS_SELECTOR, "main table td")]
    for exercise in tables.exercises():
        assert exercise in cells, f"the guide's table has no row for {exercise}"
    for mistakes in tables.mistakes().values():
        for _, says in mistakes:
            assert says in cells, f"the guide's table lacks the message {says!r}"
    source = browser.page_source
    assert tables.MARKER not in source and "SEED_TABLE" not in source
    assert not _offsite_requests(browser, server)


def test_navigation_reaches_every_notebook(browser, server):
    from selenium.webdriver.common.by import By

    _open(browser, server + "index.html")  # GitHub Pages' entry: redirects to the README
    assert browser.current_url.endswith("README.html")
    browser.save_screenshot(str(SCREENSHOTS / "landing.png"))
    sidebar = _sidebar_pages(browser)
    for notebook in NOTEBOOKS:
        page = server + notebook.relative_to(ROOT).as_posix().replace(".ipynb", ".html")
        assert page in sidebar, f"the sidebar does not link {notebook.name}"
    # Next/previous: from the first notebook, "next" leads to the second.
    _open(browser, server + f"notebooks/{NOTEBOOKS[0].stem}.html")
    browser.find_element(By.CSS_SELECTOR, "a.right-next").click()
    _open(browser, browser.current_url)
    assert browser.current_url.endswith(f"notebooks/{NOTEBOOKS[1].stem}.html")
    assert browser.title.startswith(NOTEBOOKS[1].stem[:2]), browser.title
    assert not _offsite_requests(browser, server)


def test_search_finds_the_method(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server + "search.html?q=LoReFT")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li"))
    hits = {a.get_attribute("href").split("?")[0].split("#")[0]
            for a in browser.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a")}
    assert server + f"notebooks/{NOTEBOOKS[1].stem}.html" in hits, f"search for LoReFT did not find notebook 02: {hits}"
