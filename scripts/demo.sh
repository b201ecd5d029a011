#!/usr/bin/env bash
# The main job: set up .venv, then train LCNet with the quick recipe on the bundled synthetic
# GOPRO-style set (made on first use under ${LCNET_CACHE:-~/.cache/lcnet}), evaluate it on the
# test split and draw the training curve. About 10 minutes on a 2-core CPU. Each run gets a
# fresh folder under runs/; nothing is overwritten. Extra arguments go to `lcnet train`
# (e.g. --device cuda, or --max-steps 600 for a shorter run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source "${LCBLOCK_VENV:-.venv}/bin/activate"

# OpenMP threads that spin while they wait make a shared 2-core machine (DataLoader workers,
# other jobs) many times slower: measured 4.1 s per step spinning vs 0.38 s passive next to
# another process. Passive waiting is the default here unless OMP_WAIT_POLICY is set.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

RUN="runs/demo-$(date +%Y%m%d-%H%M%S)"
# --recipe quick: warm-up + cosine, gradient clipping, identity init, L1 + FFT loss,
# batch 8 of 96x96 crops, its own number of steps (README, "departs from the paper").
lcnet train --recipe quick --out "$RUN" "$@"
lcnet eval --checkpoint "$RUN/last.pt" --out "$RUN/results.json" --save-images "$RUN/images"
lcnet plot "$RUN"
echo "demo: results in $RUN/results.json, strips in $RUN/images/strips, curve in $RUN/curve.png"
