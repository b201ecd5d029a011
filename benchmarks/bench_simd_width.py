"""Do 512-bit vectors or AVX-512 BF16 dot products pay for the CPU kernels' inner loop here?

Builds ``benchmarks/simd_width.cpp`` (the loop of ``dot_rows<4, 2>`` in csrc/cpu/simd.h, in
256-bit floats, 512-bit floats and ``_mm512_dpbf16_ps`` on bfloat16 pairs) with the C++ compiler
and ``-march`` the extension uses, runs it for each channels × width, and prints a table of
GFLOP/s (best of its timed batches, operands in L1/L2) with each variant's largest difference
from sums computed in double. docs/cpu_kernels.md, "Vector width and bf16", has the figures.

Usage::

    python benchmarks/bench_simd_width.py --channels 9,18,36 --widths 32,128 --seconds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "simd_width.cpp"


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError as err:
        raise SystemExit(
            f"bench_simd_width: {name} must be comma-separated integers, got {text!r}"
        ) from err
    if not values:
        raise SystemExit(f"bench_simd_width: {name} is empty")
    return values


def build(out_dir: Path, arch: str) -> Path:
    """Compiles simd_width.cpp into out_dir; returns the executable."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise SystemExit("bench_simd_width: no C++ compiler (set CXX)")
    exe = out_dir / "simd_width"
    cmd = [cxx, "-O3", f"-march={arch}", "-std=c++17", "-o", str(exe), str(SOURCE)]
    subprocess.run(cmd, check=True)
    return exe


def run(exe: Path, channels: int, width: int, seconds: float) -> list[dict]:
    done = subprocess.run(
        [str(exe), str(channels), str(width), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", default="9,18,36", help="channels per pixel, comma-separated")
    ap.add_argument("--widths", default="32,128", help="row widths (multiples of 32)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing per variant and row")
    ap.add_argument("--arch", default=os.environ.get("LCBLOCK_CPU_ARCH", "native"))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    channels, widths = _ints(args.channels, "--channels"), _ints(args.widths, "--widths")
    bad = [w for w in widths if w < 32 or w % 32]
    if bad or min(channels) < 1:
        raise SystemExit(
            f"bench_simd_width: --widths must be multiples of 32 and --channels >= 1, got "
            f"{args.widths!r} / {args.channels!r}"
        )
    if not args.seconds > 0:
        raise SystemExit(f"bench_simd_width: --seconds must be > 0, got {args.seconds}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp), args.arch)
        for c in channels:
            for w in widths:
                rows.extend(run(exe, c, w, args.seconds))
    print("| channels | width | variant | ns per call | GFLOP/s | × f32x8 | max abs error |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    base = {}
    for r in rows:
        if r.get("unsupported"):
            print(f"| – | – | {r['variant']} | not supported by this CPU or compiler | | | |")
            continue
        key = (r["channels"], r["width"])
        if r["variant"] == "f32x8":
            base[key] = r["gflops"]
        speed = r["gflops"] / base[key] if key in base else float("nan")
        print(
            f"| {r['channels']} | {r['width']} | {r['variant']} | {r['ns']:.1f} | "
            f"{r['gflops']:.1f} | {speed:.2f} | {r['max_abs_error']:.2g} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
