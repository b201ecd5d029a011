#!/usr/bin/env bash
# The main job: set up .venv, then train LCNet with the quick recipe on the bundled synthetic
# GOPRO-style set (made on first use under ${LCNET_CACHE:-~/.cache/lcnet}), evaluate it on the
# test split, on the independent generator's split (lcnet.shake) and on sharp images of both
# (a deblurrer should leave them alone), and draw the training curve. About 10 minutes on a
# 2-core CPU. Each run gets a fresh folder under runs/; nothing is overwritten. Extra arguments
# go to `lcnet train` (e.g. --device cuda, or --max-steps 600 for a shorter run).
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
SHAKE="${LCNET_CACHE:-$HOME/.cache/lcnet}/shake-test-v1"
# --recipe quick: warm-up + cosine, gradient clipping, identity init, L1 + FFT loss,
# batch 8 of 96x96 crops, its own number of steps (docs/recipes.md).
lcnet train --recipe quick --out "$RUN" "$@"
[ -f "$SHAKE/synth.json" ] || lcnet synth --generator shake --out "$SHAKE"
CKPT=(--checkpoint "$RUN/last.pt")
lcnet eval "${CKPT[@]}" --out "$RUN/results.json" --save-images "$RUN/images"
lcnet eval "${CKPT[@]}" --data "$SHAKE" --blur-dir blur_gamma --out "$RUN/results_shake.json" \
  --save-images "$RUN/images_shake"
lcnet eval "${CKPT[@]}" --sharp-identity --out "$RUN/results_sharp.json"
lcnet eval "${CKPT[@]}" --data "$SHAKE" --sharp-identity --out "$RUN/results_shake_sharp.json"
lcnet plot "$RUN"
python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
for name, what in (("results", "own test split"), ("results_shake", "shake split (blur_gamma)"),
                   ("results_sharp", "sharp images, own split"),
                   ("results_shake_sharp", "sharp images, shake split")):
    s = json.load(open(f"{run}/{name}.json"))["summary"]
    if s["sharp_identity"]:
        print(f"demo: {what}: {s['psnr']:.2f} dB mean, {s['psnr_min']:.2f} dB lowest vs themselves")
    else:
        print(f"demo: {what}: {s['gain_db']:+.2f} dB over the blurry input, "
              f"{s['improved']}/{s['images']} improved")
PY
echo "demo: results in $RUN/results*.json, strips in $RUN/images*/strips, curve in $RUN/curve.png"
