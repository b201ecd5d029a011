"""The independent test generator (lcnet.shake), lcnet eval --sharp-identity, and the
evaluator's figures recomputed from outside with scikit-image on the images it saved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lcnet import scenes, shake, synth
from lcnet.cli import main
from lcnet.io import list_pairs, read_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shake_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shake") / "set"
    assert main(["synth", "--generator", "shake", "--out", str(root), "--test-pairs", "6",
                 "--size", "48x64"]) == 0  # fmt: skip
    return root


def test_shake_photos_are_used_by_no_training_set() -> None:
    training = {*synth.TRAIN_SOURCES, *scenes.TRAIN_PHOTOS, *scenes.TRAIN_TEXTURES}
    assert training.isdisjoint(shake.SHAKE_PHOTOS)


def test_shake_set_layout_manifest_and_blur(shake_set: Path) -> None:
    manifest = json.loads((shake_set / "synth.json").read_text())
    assert manifest["generator"] == "lcnet.shake" and manifest["pairs"] == {"test": 6}
    for blur_dir in ("blur", "blur_gamma"):
        pairs = list_pairs(shake_set, "test", blur_dir)
        assert len(pairs) == 6
    for record, pair in zip(manifest["images"]["test"], pairs, strict=True):
        blurry, sharp = read_image(pair.blur), read_image(pair.sharp)
        assert blurry.shape == sharp.shape == (48, 64, 3)
        assert record["source"] in shake.SHAKE_PHOTOS
        if record["family"] != "near_sharp":
            assert record["psnr_blur_gamma"] < 40.0, record  # really blurred


def test_shake_set_is_reproducible(shake_set: Path, tmp_path: Path) -> None:
    again = shake.make_shake_set(tmp_path / "again", pairs=6, size=(48, 64))
    files = sorted(p.relative_to(shake_set) for p in shake_set.rglob("*.png"))
    assert files and all((shake_set / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_kernels_are_normalised_and_have_the_drawn_extent() -> None:
    rng = np.random.default_rng(0)
    kernel = shake.shake_kernel(rng, 12.0, 1.0)
    assert kernel.min() >= 0 and abs(kernel.sum() - 1) < 1e-12
    support = np.argwhere(kernel > 0)
    assert 10 <= np.ptp(support, axis=0).max() <= 15
    line = shake.linear_kernel(9.0, 0.0)
    assert abs(line.sum() - 1) < 1e-12 and np.count_nonzero(line.sum(axis=1)) <= 2
    x = np.linspace(0, 1, 101)
    np.testing.assert_allclose(shake.linear_to_srgb(shake.srgb_to_linear(x)), x, atol=1e-12)


def test_shake_refuses_train_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["synth", "--generator", "shake", "--out", str(tmp_path / "x"), "--train-pairs", "3"]
    assert main(argv) == 2
    assert "--train-pairs 3" in capsys.readouterr().err


def test_eval_figures_match_scikit_image_on_saved_images(
    tiny_run: Path, tiny_gopro: Path, tmp_path: Path
) -> None:
    out, images = tmp_path / "r.json", tmp_path / "img"
    assert main(["eval", "--checkpoint", str(tiny_run / "last.pt"), "--data", str(tiny_gopro),
                 "--out", str(out), "--save-images", str(images)]) == 0  # fmt: skip
    results = json.loads(out.read_text())
    pairs = {p.name: p for p in list_pairs(tiny_gopro, "test", "blur")}
    for record in results["images"]:
        pair = pairs[record["name"]]
        sharp, blurry = read_image(pair.sharp), read_image(pair.blur)
        deblurred = read_image(images / "deblurred" / record["name"])
        for key, image in (("", deblurred), ("blurry_", blurry)):
            psnr = peak_signal_noise_ratio(sharp, image, data_range=255)
            ssim = structural_similarity(sharp, image, data_range=255, channel_axis=-1,
                                         gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)  # fmt: skip
            assert record[f"{key}psnr"] == pytest.approx(psnr, abs=1e-9)
            assert record[f"{key}ssim"] == pytest.approx(ssim, abs=1e-9)
            assert record[f"{key}ssim_matlab"] == pytest.approx(
                _matlab_ssim(image, sharp), abs=1e-9
            )


def _matlab_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB's ssim(A, ref) of uint8 RGB images, written with scipy only: the image as one
    H x W x 3 volume, an 11x11x11 Gaussian (sigma 1.5, normalised), replicated borders
    (imgaussfilt3's default), the mean of the whole map."""
    x, y = x.astype(np.float64), y.astype(np.float64)

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, 1.5, mode="nearest", truncate=5 / 1.5)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim.mean())


def test_sharp_identity_feeds_sharp_images(
    tiny_run: Path, tiny_gopro: Path, tmp_path: Path
) -> None:
    out = tmp_path / "id.json"
    assert main(["eval", "--checkpoint", str(tiny_run / "last.pt"), "--data", str(tiny_gopro),
                 "--out", str(out), "--sharp-identity"]) == 0  # fmt: skip
    summary = json.loads(out.read_text())["summary"]
    assert summary["sharp_identity"] is True
    assert summary["psnr_min"] <= summary["psnr"] <= 100.0
    records = json.loads(out.read_text())["images"]
    assert all(r["blurry_psnr"] == float("inf") for r in records)  # input == reference
