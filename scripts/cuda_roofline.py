"""Roofline ESTIMATE of the tiled CUDA kernels (a model, not a measurement).

For each kernel and shape it counts, from the kernels' loop structure (csrc/tiled/
tiled_kernels.h: 8 x 32 pixel tiles, channels staged 8 at a time, window rows cut into groups
of G offsets, OUT output channels per pass):

  * DRAM bytes: every input, output and per-pixel plane read or written once (halos and
    repeated passes are assumed to hit L2);
  * L2 -> SM bytes: what the blocks stage into shared memory (regions of 8 rows x
    (32 + (G-1)·d) columns per window row, group and channel chunk), plus the per-thread loads
    of the pixel's own features;
  * shared-memory loads (4-byte words) and FLOPs (FMA = 2, exp = 1);

and turns each into time with the peak rates of an H100 SXM below (the SM-side rates scaled
down when the grid has fewer blocks than the GPU has SMs), reporting the largest (the bound)
plus a fixed launch latency. Real kernels reach a fraction of these peaks, so the times
are lower bounds to compare against measurements from scripts/gpu_check.sh.

    python scripts/cuda_roofline.py              # markdown table, headline and LCNet shapes
    python scripts/cuda_roofline.py --summary    # one line per shape
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

# H100 SXM5 peaks (NVIDIA datasheet / whitepaper): HBM3 3.35 TB/s; FP32 67 TFLOP/s;
# 132 SMs at 1.98 GHz boost; shared memory 128 B/clock/SM; L2 ~ 2 x 5.5 TB/s read bandwidth
# (commonly quoted microbenchmark figure, the least certain number here); MUFU ex2 16/clk/SM.
H100 = dict(
    dram=3.35e12,
    l2=10e12,
    shared=132 * 1.98e9 * 128,
    flops=67e12,
    exp=132 * 1.98e9 * 16,
    launch_s=4e-6,
    sms=132,
)

TILE_H, TILE_W, STAGE, MAX_COLS = 8, 32, 8, 64
GATHER_G, GATHER_OUT, PATTERN_G, PATTERN_OUT = 7, 16, 4, 16


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    cp: int
    cc: int
    height: int
    width: int
    k: int
    dilation: int = 1


SHAPES = [
    Shape("headline 2x32x128x128 k7", 2, 32, 32, 128, 128, 7),
    Shape("LCNet 4x9x100x100 k5", 4, 9, 9, 100, 100, 5),
    Shape("LCNet 4x18x50x50 k5", 4, 18, 18, 50, 50, 5),
    Shape("LCNet 4x36x25x25 k5", 4, 36, 36, 25, 25, 5),
    Shape("GOPRO 1x9x360x640 k5", 1, 9, 9, 360, 640, 5),
    Shape("GOPRO 1x18x180x320 k5", 1, 18, 18, 180, 320, 5),
    Shape("GOPRO 1x36x90x160 k5", 1, 36, 36, 90, 160, 5),
]


def _group(s: Shape, max_group: int) -> tuple[int, int]:
    group = min(max_group, s.k, 1 + (MAX_COLS - TILE_W) // s.dilation)
    return group, TILE_W + (group - 1) * s.dilation


def estimate(s: Shape, kernel: str, elem: int = 4) -> dict:
    """Counts for one kernel on one shape (interior pixels; the border is ignored)."""
    pixels = s.batch * s.height * s.width
    tiles = s.batch * math.ceil(s.height / TILE_H) * math.ceil(s.width / TILE_W)
    rows = s.k
    if kernel == "grad_pattern":
        group, cols = _group(s, PATTERN_G)
        passes = math.ceil(s.cp / PATTERN_OUT)
    else:
        group, cols = _group(s, GATHER_G)
        passes = math.ceil(max(s.cc, 1) / GATHER_OUT)
    groups = rows * math.ceil(s.k / group)
    taps = groups * group  # offsets computed per pixel (masked tail included)
    region = tiles * groups * TILE_H * cols  # staged pixels per channel, all blocks
    if kernel == "forward":
        dram = (s.cp + 2 * s.cc) * pixels * elem + pixels * 4
        staged = passes * s.cp + s.cc
        own = passes * groups * s.cp
        smem = passes * taps * s.cp + taps * s.cc
        flops = 2 * passes * taps * s.cp + 2 * taps * s.cc
        exps = passes * taps
    elif kernel == "grad_content":
        dram = (s.cp + 2 * s.cc) * pixels * elem + pixels * 4
        staged = passes * (s.cp + 1) + s.cc  # + the lse plane
        own = passes * groups * s.cp
        smem = passes * taps * (s.cp + 1) + taps * s.cc
        flops = 2 * passes * taps * s.cp + 2 * taps * s.cc
        exps = passes * taps
    elif kernel == "grad_pattern":
        dram = (2 * s.cp + 2 * s.cc) * pixels * elem + 2 * pixels * 4
        staged = passes * (2 * s.cp + 2 * s.cc + 2)  # logits, two cross terms, lse/D, gather
        own = passes * groups * (s.cp + 2 * s.cc)
        smem = passes * taps * (2 * s.cp + 2 * s.cc + 2)
        flops = 2 * passes * taps * (2 * s.cp + 2 * s.cc) + 8 * passes * taps
        exps = 2 * passes * taps
    elif kernel == "delta":
        dram = 2 * s.cc * pixels * elem + pixels * 4
        staged, own, smem, flops, exps = 0, 2 * s.cc, 0, 2 * s.cc * pixels, 0
        region = 0
        return _times(kernel, s, tiles, dram, own * pixels * elem, 0, flops, 0)
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    l2 = staged * region * elem + own * pixels * elem
    blocks = tiles * passes  # one block per tile and pass
    return _times(kernel, s, blocks, dram, l2, smem * pixels * 4, flops * pixels, exps * pixels)


def _times(kernel, s, blocks, dram, l2, smem, flops, exps) -> dict:
    # Fewer blocks than SMs leave SMs idle: the SM-side rates scale with the busy fraction.
    busy = min(1.0, blocks / H100["sms"])
    parts = {
        "DRAM": dram / H100["dram"],
        "L2": l2 / (H100["l2"] * busy),
        "shared": smem / (H100["shared"] * busy),
        "FP32": flops / (H100["flops"] * busy),
        "exp": exps / (H100["exp"] * busy),
    }
    bound = max(parts, key=parts.get)
    return {
        "kernel": kernel,
        "shape": s.name,
        "dram_mb": dram / 1e6,
        "l2_mb": l2 / 1e6,
        "shared_mb": smem / 1e6,
        "gflop": flops / 1e9,
        "blocks": blocks,
        "bound": bound,
        "us": 1e6 * (parts[bound] + H100["launch_s"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype-bytes", type=int, default=4, help="4 (float32) or 2 (half)")
    parser.add_argument(
        "--summary", action="store_true", help="one line per shape: forward and backward"
    )
    args = parser.parse_args(argv)
    if args.summary:
        print(
            "| shape | forward: DRAM / L2→SM MB, bound | est. µs | backward (3 kernels): "
            "DRAM / L2→SM MB | est. µs |\n|---|---|---:|---|---:|"
        )
        for s in SHAPES:
            f = estimate(s, "forward", args.dtype_bytes)
            b = [
                estimate(s, k, args.dtype_bytes) for k in ("delta", "grad_content", "grad_pattern")
            ]
            print(
                f"| {s.name} | {f['dram_mb']:.1f} / {f['l2_mb']:.0f}, {f['bound']} | "
                f"{f['us']:.0f} | {sum(r['dram_mb'] for r in b):.1f} / "
                f"{sum(r['l2_mb'] for r in b):.0f} | {sum(r['us'] for r in b):.0f} |"
            )
        return 0
    print(
        "| shape | kernel | blocks | DRAM MB | L2->SM MB | shared MB | GFLOP | bound | est. µs |\n"
        "|---|---|---:|---:|---:|---:|---:|---|---:|"
    )
    for s in SHAPES:
        for kernel in ("forward", "delta", "grad_content", "grad_pattern"):
            r = estimate(s, kernel, args.dtype_bytes)
            print(
                f"| {r['shape']} | {r['kernel']} | {r['blocks']} | {r['dram_mb']:.1f} | "
                f"{r['l2_mb']:.1f} | "
                f"{r['shared_mb']:.1f} | {r['gflop']:.3f} | {r['bound']} | {r['us']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
