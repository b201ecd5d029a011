"""Tests of lcnet.metrics against hand-computed values and direct scikit-image calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from lcnet.metrics import (
    SSIM_MIN_SIZE,
    psnr,
    psnr_tensor,
    ssim,
    ssim_matlab,
    ssim_tensor,
    to_uint8,
)


def random_image(seed: int, shape: tuple[int, int, int] = (24, 31, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------- PSNR


def test_psnr_constant_offset() -> None:
    target = np.full((8, 9, 3), 100, dtype=np.uint8)
    pred = target + np.uint8(5)
    assert psnr(pred, target) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)


def test_psnr_hand_computed_single_error() -> None:
    target = np.zeros((4, 5, 3), dtype=np.uint8)
    pred = target.copy()
    pred[1, 2, 0] = 255  # MSE = 255**2 / 60: no uint8 wrap-around in the difference
    assert psnr(pred, target) == pytest.approx(10 * math.log10(60), abs=1e-12)
    assert psnr(target, pred) == pytest.approx(10 * math.log10(60), abs=1e-12)


def test_psnr_identical_is_infinite() -> None:
    image = random_image(0)
    assert psnr(image, image.copy()) == float("inf")


# --------------------------------------------------------------------------- SSIM


def test_ssim_identical_is_one() -> None:
    image = random_image(1)
    assert ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_skimage_call() -> None:
    pred, target = random_image(2), random_image(3)
    expected = structural_similarity(
        pred,
        target,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )
    assert ssim(pred, target) == pytest.approx(expected, abs=1e-12)
    assert ssim(pred, target) < 0.5  # unrelated noise images are far from similar


def test_ssim_minimum_size() -> None:
    small = random_image(4, (SSIM_MIN_SIZE - 1, 20, 3))
    with pytest.raises(ValueError, match=r"at least 11x11 pixels .* shape \(10, 20, 3\)"):
        ssim(small, small)
    edge = random_image(4, (SSIM_MIN_SIZE, SSIM_MIN_SIZE, 3))
    assert ssim(edge, edge) == pytest.approx(1.0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_argument_validation(metric) -> None:
    good = random_image(5)
    with pytest.raises(ValueError, match="expected pred to have dtype uint8, got float32"):
        metric(good.astype(np.float32), good)
    with pytest.raises(ValueError, match="expected target to have dtype uint8, got int64"):
        metric(good, good.astype(np.int64))
    with pytest.raises(ValueError, match=r"expected pred of shape \(H, W, 3\), got \(24, 31\)"):
        metric(good[..., 0], good)
    with pytest.raises(
        ValueError, match=r"expected target of shape \(H, W, 3\), got \(3, 24, 31\)"
    ):
        metric(good, np.ascontiguousarray(good.transpose(2, 0, 1)))
    with pytest.raises(ValueError, match="expected target to be a numpy array, got Tensor"):
        metric(good, torch.from_numpy(good))
    with pytest.raises(ValueError, match=r"same shape, got pred \(24, 31, 3\) and target"):
        metric(good, good[:-1])


# --------------------------------------------------------------------------- to_uint8


def test_to_uint8_rounding_boundaries_and_clamping() -> None:
    levels = torch.tensor([0.0, 0.49, 0.51, 1.49, 1.51, 127.49, 127.51, 254.49, 254.51, 255.0])
    values = torch.cat([levels / 255, torch.tensor([-0.3, 1.7])])
    expected = np.array([0, 0, 1, 1, 2, 127, 128, 254, 255, 255, 0, 255], dtype=np.uint8)
    image = values.view(1, -1, 1).expand(3, -1, 1)  # (C, H, W) = (3, 12, 1)
    out = to_uint8(image)
    assert out.dtype == np.uint8 and out.shape == (12, 1, 3)
    np.testing.assert_array_equal(out[:, 0, 0], expected)
    np.testing.assert_array_equal(out[:, 0, 2], expected)


def test_to_uint8_layouts_agree() -> None:
    chw = torch.rand(3, 5, 7)
    expected = to_uint8(chw)
    assert expected.shape == (5, 7, 3)
    np.testing.assert_array_equal(expected[2, 4], np.round(chw[:, 2, 4].numpy() * 255))
    np.testing.assert_array_equal(to_uint8(chw.unsqueeze(0)), expected)
    np.testing.assert_array_equal(to_uint8(chw.permute(1, 2, 0)), expected)
    np.testing.assert_array_equal(to_uint8(chw.double()), expected)
    assert to_uint8(chw.requires_grad_(True)).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (torch.zeros(2, 3, 4, 4), r"expected t of shape .* got \(2, 3, 4, 4\)"),
        (torch.zeros(4, 4), r"got \(4, 4\)"),
        (torch.zeros(1, 4, 4), r"got \(1, 4, 4\)"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), "floating-point dtype, got torch.uint8"),
        (torch.full((3, 2, 2), float("nan")), "contains NaN"),
    ],
)
def test_to_uint8_validation(tensor: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_uint8(tensor)


def test_tensor_helpers_use_uint8_conventions() -> None:
    target = torch.full((3, 16, 16), 100 / 255)
    pred = target + 5.2 / 255  # rounds to an offset of exactly 5 levels
    assert psnr_tensor(pred, target) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    assert psnr_tensor(target + 0.1 / 255, target) == float("inf")  # rounds away
    noisy = target + 0.05 * torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim_tensor(noisy, target) == pytest.approx(ssim(to_uint8(noisy), to_uint8(target)))
    assert ssim_tensor(target, target) == pytest.approx(1.0)


# --------------------------------------------------------------------------- MATLAB-style SSIM
# MATLAB's ssim(A, ref) on uint8 RGB arrays (the paper's Table 1): the image is one H x W x 3
# volume, filtered with an 11x11x11 Gaussian (sigma 1.5, normalised) with replicated borders,
# also along the channel axis; C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2; the mean of the whole
# map (same size as the image, no border cropped).

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _gauss_taps() -> np.ndarray:
    x = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * 1.5**2))
    return g / g.sum()


def _scipy_ssim_3d(a: np.ndarray, b: np.ndarray) -> float:
    """An independent implementation: scipy.ndimage's Gaussian filter over the 3-D volume."""
    from scipy import ndimage

    def blur(v: np.ndarray) -> np.ndarray:  # truncate * sigma = 5 taps each side: 11 wide
        return ndimage.gaussian_filter(v, sigma=1.5, truncate=5 / 1.5, mode="nearest")

    x, y = a.astype(np.float64), b.astype(np.float64)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    return float(ssim_map.mean())


def _brute_force_ssim_3d(a: np.ndarray, b: np.ndarray) -> float:
    """Another one, by the definition: the 11x11x11 window as explicit shifted copies of the
    edge-padded volume (slow: small images only)."""
    g = _gauss_taps()
    pad = [(5, 5)] * 3
    x, y = (np.pad(v.astype(np.float64), pad, mode="edge") for v in (a, b))
    height, width, channels = a.shape
    sums = {key: np.zeros(a.shape) for key in ("x", "y", "xx", "yy", "xy")}
    for i in range(11):
        for j in range(11):
            for k in range(11):
                w = g[i] * g[j] * g[k]
                xs = x[i : i + height, j : j + width, k : k + channels]
                ys = y[i : i + height, j : j + width, k : k + channels]
                for key, value in (("x", xs), ("y", ys), ("xx", xs * xs), ("yy", ys * ys)):
                    sums[key] += w * value
                sums["xy"] += w * xs * ys
    mx, my = sums["x"], sums["y"]
    vx, vy, cxy = sums["xx"] - mx**2, sums["yy"] - my**2, sums["xy"] - mx * my
    ssim_map = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    return float(ssim_map.mean())


def test_ssim_matlab_matches_the_definition() -> None:
    a = random_image(6, (9, 14, 3))
    b = np.clip(a.astype(np.int16) + random_image(7, (9, 14, 3)) // 4 - 32, 0, 255)
    b = b.astype(np.uint8)
    assert ssim_matlab(a, b) == pytest.approx(_brute_force_ssim_3d(a, b), abs=1e-10)


def test_ssim_matlab_identical_is_one() -> None:
    image = random_image(3)
    assert ssim_matlab(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matlab_hand_computed_constant_channels() -> None:
    # Spatially constant channels: only the filter along the channel axis matters. With
    # replicated borders channel 0 sees weights (g[0..5] summed, g[6], g[7..10] summed) on
    # channels (0, 1, 2); the variances are 0, so SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1).
    g = _gauss_taps()
    weights = np.array(
        [
            [g[:6].sum(), g[6], g[7:].sum()],
            [g[:5].sum(), g[5], g[6:].sum()],
            [g[:4].sum(), g[4], g[5:].sum()],
        ]
    )
    a_values, b_values = np.array([100.0, 20.0, 200.0]), np.array([90.0, 60.0, 180.0])
    a = np.broadcast_to(a_values.astype(np.uint8), (13, 12, 3)).copy()
    b = np.broadcast_to(b_values.astype(np.uint8), (13, 12, 3)).copy()
    mx, my = weights @ a_values, weights @ b_values
    # The channel-mixed means have a variance along the channel filter too: compute it.
    vx = weights @ a_values**2 - mx**2
    vy = weights @ b_values**2 - my**2
    cxy = weights @ (a_values * b_values) - mx * my
    expected = np.mean(
        ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    )
    assert ssim_matlab(a, b) == pytest.approx(expected, abs=1e-12)
    # A per-channel SSIM (scikit-image's) is another number for the same pair.
    assert abs(ssim(a, b) - expected) > 1e-3


@pytest.mark.parametrize("shape", [(24, 31, 3), (11, 40, 3), (5, 7, 3)])
def test_ssim_matlab_matches_scipy_3d_gaussian(shape: tuple[int, int, int]) -> None:
    a = random_image(4, shape)
    b = np.clip(a.astype(np.int16) + random_image(5, shape) // 8 - 16, 0, 255).astype(np.uint8)
    assert ssim_matlab(a, b) == pytest.approx(_scipy_ssim_3d(a, b), abs=1e-10)
    if min(shape[:2]) >= SSIM_MIN_SIZE:  # scikit-image's per-channel SSIM differs
        assert abs(ssim_matlab(a, b) - ssim(a, b)) > 1e-5


def test_ssim_matlab_validates_like_the_others() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ssim_matlab(random_image(1), random_image(2, (24, 30, 3)))
    with pytest.raises(ValueError, match="uint8"):
        ssim_matlab(random_image(1).astype(np.float32), random_image(2))
