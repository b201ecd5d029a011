"""lcnet export (issue 17): .pt2 and .onnx files from a checkpoint, ONNX checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lcnet.cli import main
from lcnet.model import LCNet, LCNetConfig

# A small LCNet (multiple of 4) with random (xavier) weights: export takes seconds, not minutes.
TINY = LCNetConfig(widths=(4, 8), num_res_blocks=1, lcblocks_per_dblock=1)


def _checkpoint(tmp_path: Path, config: LCNetConfig = TINY) -> tuple[Path, LCNet]:
    torch.manual_seed(0)
    model = LCNet(config).eval()
    path = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict(), "model_config": config.to_dict()}, path)
    return path, model


def test_pt2_dynamic_sizes(tmp_path: Path) -> None:
    ckpt, model = _checkpoint(tmp_path)
    out = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    program = torch.export.load(str(out)).module()
    for height, width in [(16, 16), (17, 23), (33, 20), (64, 61)]:
        x = torch.rand(1, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=0, atol=0)


@pytest.mark.slow
def test_onnx_matches_fused_in_onnxruntime(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    ckpt, model = _checkpoint(tmp_path)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    graph = onnx.load(str(out))
    custom = [n.op_type for n in graph.graph.node if n.domain not in ("", "ai.onnx")]
    assert custom == []
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, height, width in [(1, 16, 16), (2, 17, 23), (1, 35, 20), (3, 21, 61)]:
        x = torch.rand(batch, 3, height, width)
        (got,) = session.run(None, {"blurry": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()  # the fused op
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("out", "fragment"),
    [("m.onx", "expected a file ending in .onnx or .pt2"), ("m", "no suffix")],
)
def test_bad_suffix(tmp_path: Path, capsys: Any, out: str, fragment: str) -> None:
    ckpt, _ = _checkpoint(tmp_path)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and fragment in err


def test_missing_checkpoint(tmp_path: Path, capsys: Any) -> None:
    absent = tmp_path / "absent.pt"
    assert main(["export", "--checkpoint", str(absent), "--out", str(tmp_path / "m.pt2")]) == 2
    assert f"checkpoint not found: {absent}" in capsys.readouterr().err


def test_existing_out_needs_overwrite(tmp_path: Path, capsys: Any) -> None:
    ckpt, _ = _checkpoint(tmp_path)
    out = tmp_path / "m.pt2"
    out.write_bytes(b"old")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
