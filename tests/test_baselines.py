"""The benchmark's pure-PyTorch baselines agree with the reference, and the benchmark runs.

A benchmark compares like with like only if every implementation computes the same thing:
``shifted`` and ``flex`` are checked against :func:`lcblock_cuda.reference.local_correlation`
(forward, and ``shifted``'s autograd gradients) on small float64 inputs that exercise the
borders, dilation, windows larger than the image and Cp != Cc.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_lcblock  # noqa: E402
from benchmarks.baselines import (  # noqa: E402
    flex_backward_unavailable,
    flex_local_correlation,
    shifted_local_correlation,
    window_block_mask,
    window_mask_mod,
)
from lcblock_cuda.reference import local_correlation as reference  # noqa: E402

# (batch, Cp, Cc, H, W, kernel_size, dilation): borders, dilation 2, k = 1/3/5/7, Cp != Cc,
# windows wider than the image, non-square images.
CASES = [
    (2, 3, 5, 7, 9, 3, 1),
    (1, 4, 2, 6, 5, 5, 1),
    (2, 5, 3, 8, 7, 5, 2),
    (1, 2, 3, 5, 6, 3, 2),
    (1, 3, 3, 4, 3, 7, 1),
    (2, 4, 6, 5, 5, 1, 1),
    (1, 1, 1, 1, 1, 5, 1),
]
SCALES = (1.0, 0.37)
FLOAT64_TOL = {"rtol": 1e-10, "atol": 1e-12}
LOW_PRECISION_TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 8e-3, "atol": 8e-3},  # one bfloat16 step at 1
}
FLEX_TOL = {"rtol": 1e-5, "atol": 1e-5}  # flex_attention computes in float32 on CPU


def _inputs(
    case: tuple[int, ...], dtype: torch.dtype = torch.float64, requires_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, cp, cc, height, width, _, _ = case
    generator = torch.Generator().manual_seed(sum(case))
    pattern = torch.randn(batch, cp, height, width, generator=generator, dtype=dtype)
    content = torch.randn(batch, cc, height, width, generator=generator, dtype=dtype)
    return pattern.requires_grad_(requires_grad), content.requires_grad_(requires_grad)


def _case_id(case: tuple[int, ...]) -> str:
    b, cp, cc, h, w, k, d = case
    return f"{b}x{cp}/{cc}x{h}x{w}k{k}d{d}"


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_shifted_matches_reference(case: tuple[int, ...], scale: float) -> None:
    pattern, content = _inputs(case, requires_grad=True)
    kernel_size, dilation = case[5], case[6]
    out = shifted_local_correlation(pattern, content, kernel_size, dilation, scale)
    expected = reference(pattern, content, kernel_size, dilation, scale)
    torch.testing.assert_close(out, expected, **FLOAT64_TOL)

    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (pattern, content), grad_out)
    expected_grads = torch.autograd.grad(expected, (pattern, content), grad_out)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **FLOAT64_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_shifted_low_precision_matches_reference(dtype: torch.dtype) -> None:
    # Both promote to float32 and round once at the end: equal up to that one rounding.
    case = (2, 6, 3, 9, 8, 5, 1)
    pattern, content = _inputs(case, dtype=dtype)
    out = shifted_local_correlation(pattern, content, 5)
    assert out.dtype == dtype
    expected = reference(pattern, content, 5)
    torch.testing.assert_close(out, expected, **LOW_PRECISION_TOL[dtype])


def test_shifted_gradcheck() -> None:
    pattern, content = _inputs((1, 2, 3, 4, 5, 3, 1), requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, c: shifted_local_correlation(x, c, 3, 1, 0.5), (pattern, content)
    )


def test_shifted_k1_is_identity_and_keeps_dtype() -> None:
    pattern, content = _inputs((2, 3, 4, 5, 6, 1, 1), dtype=torch.float32)
    out = shifted_local_correlation(pattern, content, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, content)


def test_shifted_corner_weights_only_in_image_neighbours() -> None:
    # Constant pattern: equal logits, so a corner pixel of a 5x5 window averages exactly its
    # 9 in-image neighbours (zero padding would dilute it with 16 zeros).
    pattern = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    content = torch.arange(36, dtype=torch.float64).view(1, 1, 6, 6)
    out = shifted_local_correlation(pattern, content, 5)
    torch.testing.assert_close(out[0, 0, 0, 0], content[0, 0, :3, :3].mean())


def test_shifted_rejects_bad_arguments() -> None:
    pattern, content = _inputs((1, 2, 2, 4, 4, 3, 1))
    with pytest.raises(ValueError, match="kernel_size"):
        shifted_local_correlation(pattern, content, 4)
    with pytest.raises(ValueError, match="4-D"):
        shifted_local_correlation(pattern[0], content[0], 3)


@pytest.mark.parametrize(
    ("height", "width", "kernel_size", "dilation", "block_size"),
    [(16, 16, 5, 1, 128), (20, 30, 3, 2, 128), (13, 11, 5, 1, 16), (12, 12, 7, 3, 32)],
)
def test_window_block_mask_equals_create_block_mask(
    height: int, width: int, kernel_size: int, dilation: int, block_size: int
) -> None:
    from torch.nn.attention.flex_attention import create_block_mask

    ours = window_block_mask(height, width, kernel_size, dilation, "cpu", block_size)
    theirs = create_block_mask(
        window_mask_mod(width, kernel_size, dilation),
        None,
        None,
        height * width,
        height * width,
        "cpu",
        BLOCK_SIZE=block_size,
    )
    for name in (
        "kv_num_blocks",
        "kv_indices",
        "full_kv_num_blocks",
        "full_kv_indices",
        "q_num_blocks",
        "q_indices",
        "full_q_num_blocks",
        "full_q_indices",
    ):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("case", CASES[:5], ids=_case_id)
def test_flex_matches_reference(case: tuple[int, ...]) -> None:
    # Eager flex_attention: the same mask and math as the compiled kernel, and fast to start
    # on tiny inputs (the compiled path is covered by the slow test below).
    pattern, content = _inputs(case, dtype=torch.float32)
    kernel_size, dilation = case[5], case[6]
    out = flex_local_correlation(pattern, content, kernel_size, dilation, 0.37, compiled=False)
    expected = reference(pattern, content, kernel_size, dilation, 0.37)
    torch.testing.assert_close(out, expected, **FLEX_TOL)


def _cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would use on CPU, if any."""
    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return next((path for name in names if name and (path := shutil.which(name))), None)


@pytest.mark.slow
@pytest.mark.skipif(_cpp_compiler() is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_flex_matches_reference() -> None:
    # Any failure of the compiled path is a failure: only a missing compiler (a fact about the
    # machine, checked before) skips.
    case = (2, 8, 4, 13, 11, 5, 2)
    pattern, content = _inputs(case, dtype=torch.float32)
    out = flex_local_correlation(pattern, content, 5, 2, 0.37)
    torch.testing.assert_close(out, reference(pattern, content, 5, 2, 0.37), **FLEX_TOL)


def test_flex_backward_probe_on_cpu() -> None:
    # The benchmark's "n/a" for flex fwd+bwd on CPU rests on this probe; if a future torch adds
    # the backward, the probe says None and the benchmark times it.
    reason = flex_backward_unavailable("cpu", torch.float32)
    if reason is not None:
        assert reason.startswith("NotImplementedError") and "backward" in reason
        return
    pattern, content = _inputs((1, 2, 2, 4, 4, 3, 1), dtype=torch.float32, requires_grad=True)
    flex_local_correlation(pattern, content, 3, compiled=False).sum().backward()
    assert pattern.grad is not None and content.grad is not None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("2x32x128x128k7", bench_lcblock.Shape(2, 32, 32, 128, 128, 7, 1)),
        ("1x16/8x64x48k5d2", bench_lcblock.Shape(1, 16, 8, 64, 48, 5, 2)),
    ],
)
def test_shape_spec_round_trip(spec: str, expected: bench_lcblock.Shape) -> None:
    shape = bench_lcblock.Shape.parse(spec)
    assert shape == expected
    assert shape.label == spec


def test_shape_spec_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="cannot parse shape"):
        bench_lcblock.Shape.parse("2x32x128k7")


def test_unknown_impl_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        bench_lcblock.main(["--quick", "--impl", "shifted,nope"])


def test_unavailable_fused_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        bench_lcblock.lcblock_cuda, "extension_error", lambda: ImportError("not built")
    )
    rows = bench_lcblock.run_shape(
        bench_lcblock.Shape(1, 2, 2, 8, 8, 3),
        ["fused", "shifted"],
        torch.device("cpu"),
        torch.float32,
        min_run_time=0.01,
        repeats=1,
        check_outputs=True,
    )
    fused, shifted = rows
    assert fused.status == "n/a" and fused.fwd_ms is None
    assert "not built" in fused.notes[0]
    assert shifted.status == "ok" and shifted.fwd_ms > 0
    report = bench_lcblock.format_report(
        bench_lcblock.environment(torch.device("cpu"), torch.float32), rows
    )
    assert "| fused [1] | n/a |" in report and "[1] fused: compiled kernels not loaded" in report


def test_quick_benchmark_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    bench_lcblock.main(["--quick", "--impl", "unfold,shifted", "--json", str(path)])
    report = capsys.readouterr().out
    assert "| shape | impl |" in report and "shifted" in report

    payload = json.loads(path.read_text())
    env = payload["environment"]
    for key in ("torch", "cuda", "device", "device_name", "cpu_count", "threads", "dtype", "date"):
        assert key in env
    assert env["dtype"] == "float32"
    rows = payload["rows"]
    assert [row["impl"] for row in rows] == ["unfold", "shifted"]
    for row in rows:
        assert row["status"] == "ok"
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0
        assert row["peak_fwd_bwd_mib"] > 0
        assert row["max_abs_diff_vs_unfold"] < 1e-4
        assert row["speedup_fwd_vs_shifted"] > 0 and row["memory_vs_unfold"] > 0
    unfold, shifted = rows
    # The point of the shifted baseline: no unfolded tensors, so less memory than unfold.
    assert shifted["peak_fwd_bwd_mib"] < unfold["peak_fwd_bwd_mib"]


def test_rounds_are_interleaved_and_their_median_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each later round starts with another implementation, and the reported time is the
    # median of an implementation's rounds.
    calls: list[str] = []
    samples = iter(range(1, 100))

    def fake_time_ms(step, device, min_run_time, repeats, warmup_s=0.0):  # noqa: ANN001, ANN202
        calls.append(step.__qualname__)
        return float(next(samples))

    monkeypatch.setattr(bench_lcblock, "time_ms", fake_time_ms)
    rows = bench_lcblock.run_shape(
        bench_lcblock.Shape(1, 2, 2, 8, 8, 3),
        ["unfold", "shifted"],
        torch.device("cpu"),
        torch.float32,
        min_run_time=0.01,
        repeats=1,
        check_outputs=False,
        rounds=3,
    )
    unfold, shifted = rows
    # Round 1: unfold fwd 1, fwd+bwd 2; shifted 3, 4. Round 2 starts with shifted: 5, 6, then
    # unfold 7, 8. Round 3 starts with unfold again: 9, 10; shifted 11, 12.
    assert unfold.fwd_ms_rounds == [1.0, 7.0, 9.0] and unfold.fwd_ms == 7.0
    assert unfold.fwd_bwd_ms_rounds == [2.0, 8.0, 10.0] and unfold.fwd_bwd_ms == 8.0
    assert shifted.fwd_ms_rounds == [3.0, 5.0, 11.0] and shifted.fwd_ms == 5.0
    assert shifted.fwd_bwd_ms_rounds == [4.0, 6.0, 12.0] and shifted.fwd_bwd_ms == 6.0
    assert unfold.speedup_fwd_vs_shifted == pytest.approx(5.0 / 7.0)
    assert len(calls) == 12


def test_rounds_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        bench_lcblock.main(["--quick", "--rounds", "0"])


def test_slow_steps_are_timed_in_the_first_round_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = iter(range(100))

    def fake_time_ms(step, device, min_run_time, repeats, warmup_s=0.0):  # noqa: ANN001, ANN202
        return 1000.0 if next(calls) < 2 else 2.0  # round 1 times unfold first: slow

    monkeypatch.setattr(bench_lcblock, "time_ms", fake_time_ms)
    monkeypatch.setattr(bench_lcblock, "LATER_ROUND_MAX_MS", 500.0)
    seen: dict[str, list[float]] = {}
    rows = bench_lcblock.run_shape(
        bench_lcblock.Shape(1, 2, 2, 8, 8, 3),
        ["unfold", "shifted"],
        torch.device("cpu"),
        torch.float32,
        min_run_time=0.01,
        repeats=1,
        check_outputs=False,
        rounds=3,
    )
    for row in rows:
        seen[row.impl] = row.fwd_ms_rounds
    assert seen == {"unfold": [1000.0], "shifted": [2.0, 2.0, 2.0]}
