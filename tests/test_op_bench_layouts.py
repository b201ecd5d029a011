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
