#!/usr/bin/env bash
# Creates .venv (if missing) and installs lcblock_cuda + lcnet into it, building the C++ and
# (when a CUDA toolkit is found) CUDA kernels. Idempotent: re-running only rebuilds what changed.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${LCBLOCK_VENV:-.venv}

# LCBLOCK_SYSTEM_TORCH=1: reuse the torch already installed for $PYTHON (e.g. a GPU machine
# without network): the venv sees the system site-packages and nothing is downloaded for torch.
SYSTEM_TORCH=${LCBLOCK_SYSTEM_TORCH:-0}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  if [ "$SYSTEM_TORCH" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if [ "$SYSTEM_TORCH" != 1 ]; then
  python -m pip install --quiet --upgrade pip
  # torch first: the extension builds against the torch in this venv (--no-build-isolation).
  # torchvision only provides the VGG-19 architecture for the perceptual loss.
  python -m pip install --quiet "torch>=2.4" torchvision ninja pybind11 numpy setuptools wheel
fi

# Where nvcc is a wrapper script (as on our machines), setup.py asks nvcc for the real
# toolkit folder; TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0" when no GPU is visible.
echo "setup: building lcblock_cuda (C++ and, if a toolkit is found, CUDA kernels); this takes a few minutes"
python -m pip install --quiet --no-build-isolation -e ".[dev,export,realblur]"
python - <<'PY'
import torch, lcblock_cuda
err = lcblock_cuda.extension_error()
if err is not None:
    raise SystemExit(f"setup: the compiled kernels failed to load: {err}")
print(f"setup: ok — torch {torch.__version__}, CUDA kernels compiled: {lcblock_cuda.cuda_compiled()}, "
      f"GPU visible: {torch.cuda.is_available()}")
PY
