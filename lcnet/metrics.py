"""Image quality metrics with the conventions of the project (docs/DESIGN.md, "Metric
conventions").

- Images are compared as RGB ``uint8`` arrays of shape (H, W, 3). Network outputs (float, in
  [0, 1]) are first clamped to [0, 1], scaled by 255 and rounded (``torch.round``: half to
  even) to uint8 by :func:`to_uint8`, as saving them to PNG would.
- PSNR: ``10 * log10(255**2 / MSE)`` over all pixels and channels of one image (peak 255);
  identical images give ``float('inf')``. Datasets report the mean over images.
- SSIM, two conventions (docs/DESIGN.md, "Metric conventions"):

  * :func:`ssim`: :func:`skimage.metrics.structural_similarity` with ``gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1`` (Wang et al.'s
    settings), i.e. the mean of the per-channel SSIM maps, borders of 5 pixels cropped. Images
    need at least ``SSIM_MIN_SIZE`` (11) pixels on each side (the Gaussian window).
  * :func:`ssim_matlab`: what MATLAB's ``ssim(A, ref)`` gives for uint8 RGB arrays, the
    convention of the paper's Table 1 (and of most deblurring papers of its time): the image
    is one H x W x 3 volume filtered by an 11x11x11 Gaussian (sigma 1.5, normalised), with
    replicated borders on all three axes (so each channel's statistics mix in the others),
    C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, and the mean of the whole map (no crop). It is
    0.01-0.02 higher than :func:`ssim` on deblurring results: compare the paper's SSIM column
    with this one only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

__all__ = [
    "MAX_PIXEL_VALUE",
    "SSIM_MIN_SIZE",
    "psnr",
    "psnr_tensor",
    "ssim",
    "ssim_matlab",
    "ssim_tensor",
    "to_uint8",
]

MAX_PIXEL_VALUE = 255  # PSNR peak and SSIM data range for uint8 images
RGB_CHANNELS = 3
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's Gaussian truncation; the window is 2 * r + 1 wide
SSIM_MIN_SIZE = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al.'s constants: C = (K * data range)^2
MATLAB_SSIM_RADIUS = math.ceil(3 * SSIM_SIGMA)  # MATLAB: 2 * ceil(3 sigma) + 1 = 11 taps


def _check_image(name: str, image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected {name} to be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected {name} to have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != RGB_CHANNELS:
        raise ValueError(f"expected {name} of shape (H, W, 3), got {image.shape}")
    return image


def _check_pair(pred: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    pred = _check_image("pred", pred)
    target = _check_image("target", target)
    if pred.shape != target.shape:
        raise ValueError(
            f"expected pred and target of the same shape, got pred {pred.shape} and "
            f"target {target.shape}"
        )
    return pred, target


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of two uint8 (H, W, 3) RGB images, peak 255; ``inf`` if they are equal."""
    pred, target = _check_pair(pred, target)
    mse = float(np.mean((pred.astype(np.float64) - target.astype(np.float64)) ** 2))
    return psnr_from_mse(mse, MAX_PIXEL_VALUE)


def psnr_from_mse(mse: float, peak: float) -> float:
    """``10 log10(peak**2 / mse)`` in dB; ``inf`` for ``mse == 0`` (the one PSNR formula)."""
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(peak**2 / mse)


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two uint8 (H, W, 3) RGB images (scikit-image, Gaussian window, sigma 1.5).

    Both sides must be at least ``SSIM_MIN_SIZE`` (11) pixels. Not MATLAB's 3-D SSIM (see the
    module docstring).
    """
    pred, target = _check_pair(pred, target)
    if min(pred.shape[:2]) < SSIM_MIN_SIZE:
        raise ValueError(
            f"ssim: expected images of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels (the "
            f"Gaussian window), got pred of shape {pred.shape}"
        )
    return float(
        structural_similarity(
            pred,
            target,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            data_range=MAX_PIXEL_VALUE,
            channel_axis=-1,
        )
    )


def _gaussian_taps(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-(x * x) / (2 * sigma * sigma))
    return taps / taps.sum()


def _blur_3d(volume: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable filtering of an (H, W, C) array with ``taps`` along all three axes, borders
    replicated, output of the input's shape (MATLAB's ``imfilter(..., 'replicate')``).

    Along the short channel axis the filter is a C x C matrix: output channel c takes
    ``taps[k]`` from channel clamp(c + k - radius) (the replicated border).
    """
    radius, channels = len(taps) // 2, volume.shape[-1]
    source = np.clip(np.arange(channels)[:, None] + np.arange(-radius, radius + 1), 0, channels - 1)
    mix = np.zeros((channels, channels))
    for c in range(channels):
        np.add.at(mix[c], source[c], taps)
    volume = volume @ mix.T
    for axis in (0, 1):
        volume = ndimage.correlate1d(volume, taps, axis=axis, mode="nearest")
    return volume


def ssim_matlab(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two uint8 (H, W, 3) RGB images as MATLAB's ``ssim`` computes it: the image as
    one 3-D volume, 11x11x11 Gaussian window (sigma 1.5), replicated borders, the mean of the
    whole map (see the module docstring). Any size works (the borders are replicated)."""
    pred, target = _check_pair(pred, target)
    taps = _gaussian_taps(SSIM_SIGMA, MATLAB_SSIM_RADIUS)
    x, y = pred.astype(np.float64), target.astype(np.float64)
    mu_x, mu_y = _blur_3d(x, taps), _blur_3d(y, taps)
    var_x = _blur_3d(x * x, taps) - mu_x * mu_x
    var_y = _blur_3d(y * y, taps) - mu_y * mu_y
    cov = _blur_3d(x * y, taps) - mu_x * mu_y
    c1 = (SSIM_K1 * MAX_PIXEL_VALUE) ** 2
    c2 = (SSIM_K2 * MAX_PIXEL_VALUE) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Float image tensor in [0, 1] -> uint8 numpy array (H, W, 3).

    Accepts (3, H, W), (1, 3, H, W) or (H, W, 3); a (3, H, 3) tensor is read as (C, H, W).
    Values are clamped to [0, 1], multiplied by 255 and rounded with ``torch.round`` (half to
    even). float16/bfloat16 are computed in float32. NaNs raise ``ValueError``.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"to_uint8: expected t to be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"to_uint8: expected t to have a floating-point dtype, got {t.dtype}")
    x = t.detach()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 3 and x.shape[0] == RGB_CHANNELS:
        x = x.permute(1, 2, 0)
    elif x.dim() != 3 or x.shape[-1] != RGB_CHANNELS:
        raise ValueError(
            f"to_uint8: expected t of shape (3, H, W), (1, 3, H, W) or (H, W, 3), "
            f"got {tuple(t.shape)}"
        )
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if torch.isnan(x).any():
        raise ValueError("to_uint8: t contains NaN")
    x = torch.round(x.clamp(0.0, 1.0) * MAX_PIXEL_VALUE)
    return x.to(torch.uint8).contiguous().cpu().numpy()


def psnr_tensor(pred: torch.Tensor, target: torch.Tensor) -> float:
    """:func:`psnr` of two float image tensors in [0, 1], after :func:`to_uint8`."""
    return psnr(to_uint8(pred), to_uint8(target))


def ssim_tensor(pred: torch.Tensor, target: torch.Tensor) -> float:
    """:func:`ssim` of two float image tensors in [0, 1], after :func:`to_uint8`."""
    return ssim(to_uint8(pred), to_uint8(target))
