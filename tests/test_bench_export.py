"""benchmarks/bench_export.py at a tiny size, so that the ORT vs PyTorch benchmark cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_export  # noqa: E402
from lcnet.model import LCNet, LCNetConfig  # noqa: E402

TINY = LCNetConfig(widths=(4, 8), num_res_blocks=1, lcblocks_per_dblock=1)


@pytest.mark.slow  # the ONNX export of even a tiny LCNet takes ~45 s on 2 cores
def test_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": LCNet(TINY).state_dict(), "model_config": TINY.to_dict()}, ckpt)
    out, kept = tmp_path / "r.json", tmp_path / "kept.onnx"
    argv = ["--checkpoint", str(ckpt), "--height", "36", "--width", "44", "--reps", "1"]
    argv += ["--threads", "1", "--json", str(out), "--keep-onnx", str(kept)]
    bench_export.main(argv)
    result = json.loads(out.read_text())
    env = result["environment"]
    assert env["input"] == [1, 3, 36, 44]
    assert env["opset"]["ai.onnx"] == 18 and env["custom_ops"] == []
    assert kept.stat().st_size == env["onnx_bytes"]
    assert [(r["threads"], r["impl"]) for r in result["rows"]] == [
        (1, "ort"),
        (1, "fused"),
        (1, "decomposed"),
    ]
    for row in result["rows"]:
        assert len(row["samples_ms"]) == 1 and row["median_ms"] > 0
    # ONNX Runtime and the decomposition compute what the fused op does (36x44: padded to 40x48)
    assert env["max_abs_diff_vs_fused"]["ort"] < 1e-4
    assert env["max_abs_diff_vs_fused"]["decomposed"] < 1e-4
    report = capsys.readouterr().out
    assert "| 1 | ort |" in report and "onnxruntime " in report

    # --onnx re-times a kept file without exporting ...
    again = bench_export.main(argv[:-4] + ["--onnx", str(kept)])
    assert again["environment"]["export_s"] is None
    assert again["environment"]["max_abs_diff_vs_fused"]["ort"] < 1e-4
    # ... and refuses one that is not an export of the model it compares with
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save({"model": LCNet(TINY).state_dict(), "model_config": TINY.to_dict()}, other)
    with pytest.raises(SystemExit, match="is not an export of this model"):
        bench_export.main(["--checkpoint", str(other), *argv[2:-4], "--onnx", str(kept)])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--height", "8"], "--height 8"),
        (["--threads", "0"], "--threads expects a positive integer, got 0"),
        (["--reps", "x"], "--reps expects a positive integer, got 'x'"),
        (["--keep-onnx", "m.pt2"], "--keep-onnx m.pt2"),
        (["--checkpoint", "/nonexistent/c.pt"], "--checkpoint /nonexistent/c.pt"),
        (["--onnx", "/nonexistent/m.onnx"], "--onnx /nonexistent/m.onnx"),
    ],
)
def test_bad_arguments(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_export.parse_args(argv)
    assert fragment in capsys.readouterr().err
