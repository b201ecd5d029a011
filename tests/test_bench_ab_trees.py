"""benchmarks/ab_trees.py: before/after timing between two trees, one process per sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import ab_trees  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_row_per_shape_layout_and_threads_from_both_trees(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ab.json"
    argv = ["--before", str(REPO_ROOT), "--after", str(REPO_ROOT), "--shapes", "1x4x8x8k3",
            "--threads", "1", "--layouts", "contiguous,channels_last", "--pairs", "1",
            "--seconds", "0.05", "--json", str(out)]  # fmt: skip
    assert ab_trees.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["layout"], r["threads"]) for r in rows] == [
        ("1x4x8x8k3", "contiguous", 1),
        ("1x4x8x8k3", "channels_last", 1),
    ]
    for row in rows:
        for key in ("fwd_ms_before", "fwd_ms_after", "fwd_bwd_ms_before", "fwd_bwd_ms_after"):
            median, fastest = row[key]
            assert 0 < fastest <= median
        assert row["fwd_bwd_ms_after"][1] > row["fwd_ms_after"][1]  # a backward was timed
    printed = capsys.readouterr().out
    assert printed.count("| 1x4x8x8k3 |") == 2


def test_a_folder_without_the_package_is_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        ab_trees.main(["--before", str(tmp_path), "--after", str(REPO_ROOT)])
    assert f"{tmp_path} has no lcblock_cuda package" in capsys.readouterr().err
