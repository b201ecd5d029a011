#!/usr/bin/env bash
# One call for a machine with a CUDA GPU: build, test, sanitize, benchmark, train, report.
#
#   scripts/gpu_check.sh OUT_DIR             # on a GPU: the real run (under 8 minutes)
#   scripts/gpu_check.sh --dry-run OUT_DIR   # anywhere: every step's CPU stand-in
#
# The steps, their time caps and the report (OUT_DIR/gpu_check.json, gpu_check.md, logs/) are
# those of scripts/gpu_check.py; docs/cuda.md, "The GPU check", says how to read them. Without
# --dry-run and without a usable GPU it stops at once (exit 3) with a message saying why, before
# touching OUT_DIR. The exit status is 0 only when no step failed or was skipped for time.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 470), MAX_JOBS (default:
# all cores).
set -uo pipefail

usage() {
  echo "usage: scripts/gpu_check.sh [--dry-run] OUT_DIR" >&2
  exit 2
}
DRY=()
if [ $# -ge 1 ] && [ "$1" = "--dry-run" ]; then
  DRY=(--dry-run)
  shift
fi
if [ $# -ne 1 ] || [ -z "$1" ] || [ "${1#-}" != "$1" ]; then
  usage
fi
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

no_gpu() {
  echo "gpu_check: no CUDA GPU on this machine ($1); nothing to check, stopping." \
    "(scripts/gpu_check.sh --dry-run OUT_DIR runs the CPU stand-ins.)" >&2
  exit 3
}
if [ ${#DRY[@]} -eq 0 ]; then
  # Fast test first (no torch import): no driver, no GPU.
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    no_gpu "nvidia-smi not found"
  fi
  if ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    no_gpu "nvidia-smi lists no GPU"
  fi
  if ! timeout 60 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    no_gpu "torch.cuda.is_available() is False for $PY"
  fi
fi

OUT=$(realpath -m -- "$1")  # before the cd: OUT_DIR is relative to the caller's folder
cd "$ROOT" || exit 2
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" scripts/gpu_check.py "${DRY[@]}" "$OUT"
