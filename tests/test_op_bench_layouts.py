"""The benchmark's --memory-format option: both layouts timed in one run, the layout in each row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_lcblock  # noqa: E402


def test_memory_format_defaults_to_both_and_accepts_a_list() -> None:
    assert bench_lcblock.parse_args([]).memory_format == ["contiguous", "channels_last"]
    assert bench_lcblock.parse_args(["--quick"]).memory_format == ["contiguous"]
    args = bench_lcblock.parse_args(["--memory-format", "channels_last, contiguous"])
    assert args.memory_format == ["channels_last", "contiguous"]


def test_unknown_memory_format_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        bench_lcblock.parse_args(["--memory-format", "nhwc"])


def test_inputs_are_the_same_values_in_either_layout() -> None:
    shape = bench_lcblock.Shape(1, 3, 5, 6, 7, 3)
    nchw = bench_lcblock.make_inputs(shape, torch.device("cpu"), torch.float32, "contiguous")
    nhwc = bench_lcblock.make_inputs(shape, torch.device("cpu"), torch.float32, "channels_last")
    for a, b in zip(nchw, nhwc, strict=True):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
        assert not b.is_contiguous() and torch.equal(a, b)


def test_rows_of_both_layouts_in_one_run() -> None:
    rows = bench_lcblock.run_shape(
        bench_lcblock.Shape(1, 8, 8, 10, 12, 3),
        ["fused", "shifted"],
        torch.device("cpu"),
        torch.float32,
        min_run_time=0.01,
        repeats=1,
        check_outputs=True,
        rounds=2,
        memory_formats=["contiguous", "channels_last"],
    )
    assert [(r.impl, r.memory_format) for r in rows] == [
        ("fused", "contiguous"),
        ("shifted", "contiguous"),
        ("fused", "channels_last"),
        ("shifted", "channels_last"),
    ]
    for row in rows:
        assert row.status == "ok" and len(row.fwd_ms_rounds) == 2
        assert row.max_abs_diff_vs_unfold < 1e-4  # each layout checked on its own inputs
        assert row.speedup_fwd_vs_shifted > 0  # relative to shifted of the same layout
    report = bench_lcblock.format_report(
        bench_lcblock.environment(torch.device("cpu"), torch.float32), rows
    )
    assert "| 1x8x10x12k3 channels_last | fused |" in report
    assert "| 1x8x10x12k3 contiguous | shifted |" in report
    assert "- fused (channels_last):" in report


def test_useful_flops_count_the_in_image_window_offsets() -> None:
    # 3x3 image, k5: every pixel sees all 9 pixels; fwd 2·(1·9·9)·(Cp + Cc), bwd twice the
    # per-offset work plus D_i (2·H·W·Cc).
    assert bench_lcblock.useful_flops(bench_lcblock.Shape(1, 2, 2, 3, 3, 5)) == (648, 648 + 1332)
    # 1x4 row, k3: offsets in the image per column 2, 3, 3, 2; per row 1.
    fwd, fwd_bwd = bench_lcblock.useful_flops(bench_lcblock.Shape(1, 1, 3, 1, 4, 3))
    assert fwd == 2 * 10 * (1 + 3)
    assert fwd_bwd == fwd + 2 * 10 * (2 + 6) + 2 * 4 * 3


def test_roofline_columns_appear_and_are_positive() -> None:
    rows = bench_lcblock.run_shape(
        bench_lcblock.Shape(1, 8, 8, 10, 12, 3),
        ["fused", "shifted"],
        torch.device("cpu"),
        torch.float32,
        min_run_time=0.01,
        repeats=1,
        check_outputs=False,
        memory_formats=["contiguous", "channels_last"],
    )
    sgemm = bench_lcblock.sgemm_gflops(torch.device("cpu"), 0.01, 1, size=64)
    assert sgemm > 0
    bench_lcblock.fill_roofline(rows, sgemm)
    env = bench_lcblock.environment(torch.device("cpu"), torch.float32)
    env.update(sgemm_gflops=[sgemm], sgemm_size=64)
    report = bench_lcblock.format_report(env, rows)
    header = next(line for line in report.splitlines() if line.startswith("| shape"))
    assert header.endswith("| GFLOP/s (fwd / fwd+bwd) | % of sgemm (fwd / fwd+bwd) |")
    assert "- roofline: sgemm (torch.mm, 64² float32" in report
    for row in rows:
        for value in (row.gflops_fwd, row.gflops_fwd_bwd, row.sgemm_pct_fwd, row.sgemm_pct_fwd_bwd):
            assert value is not None and value > 0
        line = next(
            line
            for line in report.splitlines()
            if line.startswith(f"| {row.shape} {row.memory_format} | {row.impl}")
        )
        gflops, share = (cell.strip() for cell in line.strip("|").split("|")[-2:])
        assert [float(v) for v in gflops.split(" / ")] == [
            float(f"{row.gflops_fwd:.1f}"),
            float(f"{row.gflops_fwd_bwd:.1f}"),
        ]
        assert all(float(v.rstrip("%")) >= 0 for v in share.split(" / "))
