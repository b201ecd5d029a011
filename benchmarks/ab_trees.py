"""Before/after timing of the fused op between two source trees, on a noisy shared machine.

Two builds of the op cannot load into one process (they register the same op names), so each
sample is its own short process: for every shape, layout and thread count the two trees
alternate A B A B ... ``--pairs`` times, and each process times the forward (``torch.no_grad``)
and the forward + backward (``torch.autograd.grad`` of both inputs, as bench_lcblock.py does) in
interleaved batches of calls for ``--seconds``. A process reports the median and the minimum
of its batches; this script reports, per tree, the median over processes of both, and the
fwd+bwd / fwd ratio of each. The minimum is the figure least moved by other load.

Usage::

    python benchmarks/ab_trees.py --before /path/to/old/tree --after . \\
        --shapes 2x32x128x128k7,8x36x12x12k5 --threads 1,2 --pairs 4 --json ab.json

A tree is a folder whose ``lcblock_cuda`` package (with its built extension) is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time, torch
import lcblock_cuda
shape, threads, layout, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
torch.set_num_threads(threads)
b, c, h, w, k = (int(v) for v in shape.replace("k", "x").split("x"))
fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
gen = torch.Generator().manual_seed(0)
x = torch.randn(b, c, h, w, generator=gen).contiguous(memory_format=fmt).requires_grad_()
y = torch.randn(b, c, h, w, generator=gen).contiguous(memory_format=fmt).requires_grad_()
g = torch.randn(b, c, h, w, generator=gen).contiguous(memory_format=fmt)

def fwd():
    with torch.no_grad():
        lcblock_cuda.local_correlation(x, y, k)

def fwd_bwd():
    torch.autograd.grad(lcblock_cuda.local_correlation(x, y, k), (x, y), g)

def batch(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3

for fn in (fwd, fwd_bwd):
    batch(fn, 3)
n = max(1, int(0.02 / (batch(fwd_bwd, 2) / 1e3)))
f, fb = [], []
start = time.perf_counter()
while time.perf_counter() - start < seconds or len(f) < 3:
    f.append(batch(fwd, n))
    fb.append(batch(fwd_bwd, n))
med = statistics.median
print(json.dumps({"fwd": [med(f), min(f)], "fwd_bwd": [med(fb), min(fb)]}))
"""


def sample(tree: Path, shape: str, threads: int, layout: str, seconds: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()), OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, shape, str(threads), layout, str(seconds)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--shapes", default="2x32x128x128k7,8x9x48x48k5,8x18x24x24k5,8x36x12x12k5")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--layouts", default="contiguous,channels_last")
    ap.add_argument("--pairs", type=int, default=4, help="A B alternations per row")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per process")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    for tree in (args.before, args.after):
        if not (tree / "lcblock_cuda").is_dir():
            ap.error(f"--before/--after: {tree} has no lcblock_cuda package")
    if args.pairs < 1 or args.seconds <= 0:
        ap.error(f"--pairs must be >= 1 and --seconds > 0, got {args.pairs}, {args.seconds}")
    rows = []
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs; "
          f"before {args.before}, after {args.after}; medians over {args.pairs} processes each "
          "of (median / min of batches)")  # fmt: skip
    print("| shape | layout | threads | fwd ms before → after | fwd+bwd ms before → after "
          "| fwd+bwd / fwd before → after |\n|---|---|---:|---|---|---|")  # fmt: skip
    for threads in (int(t) for t in args.threads.split(",")):
        for shape in args.shapes.split(","):
            for layout in args.layouts.split(","):
                got: dict[str, list[dict]] = {"before": [], "after": []}
                for _ in range(args.pairs):
                    for side in ("before", "after"):
                        tree = getattr(args, side)
                        got[side].append(sample(tree, shape, threads, layout, args.seconds))
                row = {"shape": shape, "layout": layout, "threads": threads}
                for side, samples in got.items():
                    for key in ("fwd", "fwd_bwd"):
                        row[f"{key}_ms_{side}"] = [
                            statistics.median(s[key][i] for s in samples) for i in (0, 1)
                        ]
                rows.append(row)

                def cell(key: str, i: int, row: dict = row) -> str:
                    return f"{row[f'{key}_ms_before'][i]:.2f} → {row[f'{key}_ms_after'][i]:.2f}"

                ratio = [
                    f"{row['fwd_bwd_ms_' + s][i] / row['fwd_ms_' + s][i]:.2f}"
                    for i in (0, 1)
                    for s in ("before", "after")
                ]
                print(
                    f"| {shape} | {layout} | {threads} | {cell('fwd', 0)} (min {cell('fwd', 1)}) "
                    f"| {cell('fwd_bwd', 0)} (min {cell('fwd_bwd', 1)}) "
                    f"| {ratio[0]} → {ratio[1]} (min {ratio[2]} → {ratio[3]}) |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"before": str(args.before),
                                         "after": str(args.after), "json": str(args.json)},
                                         "rows": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
