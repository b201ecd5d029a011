"""benchmarks/bench_simd_width.py: the vector-width and bf16 variants compute the right sums."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_simd_width  # noqa: E402


def test_every_variant_computes_the_sums_it_times(tmp_path: Path, capsys) -> None:
    # A variant that computes something else must not be timed as if it did: with the vector
    # type written as an alias template (which GCC turns into a single float) the float
    # variants' error was 1.37.
    out = tmp_path / "simd.json"
    argv = ["--channels", "9,36", "--widths", "32", "--seconds", "0.02", "--json", str(out)]
    assert bench_simd_width.main(argv) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if not r.get("unsupported")]
    assert {r["variant"] for r in rows} >= {"f32x8", "f32x16"}
    assert {(r["channels"], r["width"]) for r in rows} == {(9, 32), (36, 32)}
    for r in rows:
        assert r["max_abs_error"] < 1e-5, r
        assert r["gflops"] > 0 and r["ns"] > 0, r
    table = capsys.readouterr().out
    assert "| 36 | 32 | f32x16 |" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--widths", "48"], "--widths must be multiples of 32"),
        (["--channels", "0"], "--channels >= 1"),
        (["--channels", "a,b"], "--channels must be comma-separated integers"),
        (["--seconds", "0"], "--seconds must be > 0"),
    ],
)
def test_bad_arguments_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        bench_simd_width.main(argv)
