"""How far can a perfect deblurrer get on the synthetic-gopro-v2 test split?

GOPRO-style pairs take the *middle* frame as the sharp image, but a blurry image only tells
where the exposure's centroid was: a deblurrer that restores the scene perfectly still places it
at the centroid of the camera path, not at the middle frame. This script redraws every test pair
exactly as ``lcnet synth`` does (same seeds), records its camera path, and scores the sharp
image moved to that centroid (cubic spline shift) against the sharp image itself: the PSNR of
an otherwise perfect deblurrer that guesses the centroid. Moving objects and the (<= 1 degree)
rotation are ignored, and ``--border`` pixels are left out on every side, so it is an estimate,
not a bound.

    python benchmarks/synthetic_ceiling.py            # 24 test pairs, seed 0, 256x256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lcnet import metrics, scenes, synth  # noqa: E402


def centroid_oracle(
    index: int, seed: int, size: tuple[int, int], border: int
) -> tuple[float, float, float]:
    """(|centroid - middle frame| px, blurry PSNR, centroid-oracle PSNR) of test pair ``index``."""
    paths: list[np.ndarray] = []
    real_path = scenes._path

    def recording_path(*args: object, **kwargs: object) -> np.ndarray:
        path = real_path(*args, **kwargs)  # type: ignore[arg-type]
        paths.append(path)
        return path

    scenes._path = recording_path  # type: ignore[assignment]
    try:
        rng = np.random.default_rng([seed, 1, index, 2])  # split code 1: test (lcnet.synth)
        blur, _, sharp, _ = scenes.make_pair(rng, size, "test", "photo")
    finally:
        scenes._path = real_path  # type: ignore[assignment]
    mu_x, mu_y = paths[0].mean(axis=0)  # the first path drawn is the camera's, (x, y)
    s = sharp.astype(np.float64)
    # Output pixel q of frame f samples the scene at q + camera[f]: the centroid image is S(q + mu).
    moved = np.stack(
        [ndi.shift(s[..., k], (-mu_y, -mu_x), order=3, mode="nearest") for k in range(3)], -1
    )
    inner = (slice(border, -border), slice(border, -border))
    return (
        float(np.hypot(mu_x, mu_y)),
        metrics.psnr(blur[inner], sharp[inner]),
        metrics.psnr(scenes.quantise(moved[inner] / 255.0), sharp[inner]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=synth.V2_TEST_PAIRS, help="test pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    ap.add_argument("--border", type=int, default=24, help="pixels left out on every side")
    args = ap.parse_args()
    rows = [centroid_oracle(i, args.seed, tuple(args.size), args.border) for i in range(args.pairs)]
    print("pair  |centroid - middle| px  blurry dB  centroid oracle dB")
    for i, (offset, blurry, oracle) in enumerate(rows):
        print(f"{i:4d}  {offset:21.2f}  {blurry:9.2f}  {oracle:18.2f}")
    arr = np.array(rows)
    print(
        f"mean  {arr[:, 0].mean():21.2f}  {arr[:, 1].mean():9.2f}  {arr[:, 2].mean():18.2f}  "
        f"(oracle below the blurry input on {int((arr[:, 2] < arr[:, 1]).sum())} of {len(arr)})"
    )


if __name__ == "__main__":
    main()
