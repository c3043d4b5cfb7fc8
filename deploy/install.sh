#!/usr/bin/env bash
# The one install script: used by the README, by CI (.ci/run) and by the Dockerfile.
#   bash deploy/install.sh            # runtime install into ./.venv (CPU torch 2.13.0)
#   bash deploy/install.sh dev        # + test/lint tools and Debian's chromium for browser tests
#   bash deploy/install.sh gpu        # + flash-attn / FA3 kernels / torchao (GPU box, used by the Dockerfile)
# RAYCHAT_VENV=DIR picks another venv location; RAYCHAT_VENV=system installs into the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${RAYCHAT_VENV:-.venv}"
if [ "$venv" != "system" ]; then
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    py="$venv/bin/python"
else
    py="$(command -v python3)"
fi
"$py" -m pip install -q --upgrade pip setuptools wheel
# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build on a CPU machine.
"$py" -m pip install -q "torch==2.13.0"
spec="."
case "$extras" in
    "") ;;
    dev) spec=".[dev]" ;;
    gpu) spec=".[gpu]" ;;
    *) echo "install.sh: unknown extra '$extras' (expected: dev, gpu or nothing)" >&2; exit 2 ;;
esac
if [ "$extras" = "gpu" ]; then
    # flash-attn's setup.py imports torch, so pip's isolated build env (no torch) fails with "No module named
    # 'torch'": build it against the torch installed above, with its build deps present. It compiles with nvcc
    # of torch's CUDA major version (the Dockerfile's devel stage); MAX_JOBS / FLASH_ATTN_CUDA_ARCHS tune that.
    "$py" -m pip install -q packaging psutil ninja einops
    "$py" -m pip install -q --no-build-isolation "flash-attn>=2.6"
fi
"$py" -m pip install -q -e "$spec"
if [ "$extras" = "dev" ] && ! command -v chromium >/dev/null 2>&1; then
    # Browser tests drive Debian's chromium through Playwright (never `playwright install`).
    if [ "$(id -u)" = "0" ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "install.sh: chromium not found; install Debian's chromium package for the browser tests" >&2
    fi
fi
if [ "$extras" = "dev" ] && ! command -v bwrap >/dev/null 2>&1; then
    # HumanEval's code sandbox (raychat.tools.execution) and its tests need bubblewrap.
    if [ "$(id -u)" = "0" ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
    else
        echo "install.sh: bwrap not found; install Debian's bubblewrap package for the code sandbox" >&2
    fi
fi
echo "raychat installed into $venv ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
