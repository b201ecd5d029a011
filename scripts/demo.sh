#!/usr/bin/env bash
# The main job: set up .venv, then train LCNet briefly on the bundled synthetic GOPRO-style set
# (made on first use under ${LCNET_CACHE:-~/.cache/lcnet}) and evaluate it on the test split.
# About 10 minutes on a 2-core CPU. Each run gets a fresh folder under runs/; nothing is
# overwritten. Extra arguments go to `lcnet train` (e.g. --device cuda --amp).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source "${LCBLOCK_VENV:-.venv}/bin/activate"

RUN="runs/demo-$(date +%Y%m%d-%H%M%S)"
# A short CPU schedule: L1 loss only (VGG-19 weights cannot be downloaded here), 96-pixel
# patches, a higher learning rate with a faster decay than the paper's 1500-epoch recipe.
lcnet train --out "$RUN" --max-steps 1000 --batch-size 8 --patch-size 96 \
  --content-weight 0 --lr 2e-3 --lr-step-epochs 60 --workers 1 --log-every 50 "$@"
lcnet eval --checkpoint "$RUN/last.pt" --out "$RUN/results.json" --save-images "$RUN/images"
echo "demo: results in $RUN/results.json, images in $RUN/images"
