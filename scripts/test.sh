#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the linter and the whole test suite.
# GPU tests are marked `cuda` and skip where no GPU is visible. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source "${LCBLOCK_VENV:-.venv}/bin/activate"
ruff check .
# pytest exits 5 when it collects no test: with `set -e` that fails this script too.
python -m pytest -q "$@"
