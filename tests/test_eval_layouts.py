"""`lcnet eval` on HIDE and RealBlur trees (lcnet.layouts, lcnet.realblur; docs/evaluation.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from lcnet.checkpoint import save_checkpoint
from lcnet.cli import main
from lcnet.model import LCNet, LCNetConfig

cv2 = pytest.importorskip("cv2", reason="the [realblur] extra (opencv-python-headless)")

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth(seed: int, shape=(64, 80)) -> np.ndarray:
    """A smooth RGB image in [0, 1] (ECC needs gradients, not white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.random((shape[0] // 8, shape[1] // 8, 3)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(path)


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255


@pytest.fixture(scope="module")
def identity_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An identity-initialised LCNet: its output is its input, so scores are the input's."""
    m = LCNet(LCNetConfig(widths=(8, 16, 32)))
    path = tmp_path_factory.mktemp("ckpt") / "identity.pt"
    save_checkpoint(path, {"model": m.state_dict(), "model_config": m.config.to_dict()})
    return path


def _eval(ckpt: Path, root: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(out),
                 *extra]) == 0  # fmt: skip
    return json.loads(out.read_text())


def test_hide_pairs_by_name_and_reports_each_subset(identity_ckpt: Path, tmp_path: Path) -> None:
    root = tmp_path / "HIDE"
    expected = {}
    for i, sub in enumerate(["test-close-ups"] * 2 + ["test-long-shot"] * 2):
        sharp = _smooth(i)
        blur = np.clip(sharp + 0.02 * (i + 1), 0, 1)  # each pair its own error
        _save(root / "test" / sub / f"{i}.png", blur)
        _save(root / "GT" / f"{i}.png", sharp)
        expected[f"{i}.png"] = (
            sub,
            peak_signal_noise_ratio(
                _load(root / "GT" / f"{i}.png"),
                _load(root / "test" / sub / f"{i}.png"),
                data_range=1,
            ),
        )
    res = _eval(identity_ckpt, root, tmp_path / "r.json")
    s = res["summary"]
    assert s["protocol"] == "hide" and s["images"] == 4
    by_name = {Path(r["name"]).name: r for r in res["images"]}
    for name, (_, want) in expected.items():
        assert by_name[name]["blurry_psnr"] == pytest.approx(want, abs=1e-3)
    for key, sub in (("close-ups", "test-close-ups"), ("long-shot", "test-long-shot")):
        want = np.mean([p for n, (s2, p) in expected.items() if s2 == sub])
        assert s["subsets"][key]["blurry_psnr"] == pytest.approx(want, abs=1e-3)


def test_realblur_alignment_and_intensity_matching(identity_ckpt: Path, tmp_path: Path) -> None:
    """A blurry image that is the sharp one shifted and darkened scores far higher aligned."""
    root = tmp_path / "RealBlur"
    d = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene001"
    sharp = _smooth(7)
    shifted = np.roll(sharp, (3, -2), axis=(0, 1)) * 0.8
    _save(root / d / "gt" / "gt_1.png", sharp)
    _save(root / d / "blur" / "blur_1.png", shifted)
    (root / "RealBlur_J_test_list.txt").write_text(f"{d}/gt/gt_1.png {d}/blur/blur_1.png\n")
    res = _eval(identity_ckpt, root, tmp_path / "r.json")
    s, rec = res["summary"], res["images"][0]
    assert s["protocol"] == "realblur-ecc" and s["dataset"] == "RealBlur-J"
    gt, blur = _load(root / d / "gt" / "gt_1.png"), _load(root / d / "blur" / "blur_1.png")
    plain = peak_signal_noise_ratio(gt, blur, data_range=1)
    assert rec["blurry_psnr_unaligned"] == pytest.approx(plain, abs=0.05)
    assert rec["blurry_psnr"] > plain + 10
    assert not rec["ecc_failed"]


def test_layout_errors_name_the_argument(identity_ckpt: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    assert main(["eval", "--checkpoint", str(identity_ckpt), "--data", empty]) != 0
    assert "--data" in capsys.readouterr().err
    root = tmp_path / "HIDE"
    _save(root / "test" / "test-close-ups" / "0.png", _smooth(0))
    _save(root / "test" / "test-long-shot" / "1.png", _smooth(1))
    _save(root / "GT" / "0.png", _smooth(0))  # 1.png has no sharp image
    assert main(["eval", "--checkpoint", str(identity_ckpt), "--data", str(root)]) != 0
    assert "1.png" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(identity_ckpt), "--data", str(root),
                 "--layout", "realblur"]) != 0  # fmt: skip
    assert "--layout" in capsys.readouterr().err


def test_eval_accepts_the_decomposed_backend(identity_ckpt: Path, tmp_path: Path) -> None:
    root = tmp_path / "HIDE"
    for i, sub in enumerate(["test-close-ups", "test-long-shot"]):
        _save(root / "test" / sub / f"{i}.png", _smooth(i) * 0.9)
        _save(root / "GT" / f"{i}.png", _smooth(i))
    a = _eval(identity_ckpt, root, tmp_path / "a.json")
    b = _eval(identity_ckpt, root, tmp_path / "b.json", "--lc-backend", "decomposed")
    assert b["summary"]["lc_backend"] == "decomposed"
    assert b["summary"]["psnr"] == pytest.approx(a["summary"]["psnr"], abs=0.01)
