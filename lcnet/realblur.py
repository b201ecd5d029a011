"""RealBlur's evaluation protocol (Rim et al., ECCV 2020), as in the official
``evaluation_RealBlur_ecc.py`` of github.com/rimchang/RealBlur (docs/evaluation.md).

Per image, with the output ``z`` and the ground truth ``x`` as float32 in [0, 1]:

1. intensity matching: ``zs = (sum(x * z) / sum(z * z)) * z`` (not clipped, as the script);
2. ECC alignment: ``cv2.findTransformECC`` of the grayscale ``zs`` to the grayscale ``x``
   (``cv2.COLOR_RGB2GRAY``), ``MOTION_HOMOGRAPHY`` from the identity, 100 iterations,
   termination epsilon 0, ``gaussFiltSize=5``;
3. ``zs`` warped with ``cv2.warpPerspective(..., INTER_CUBIC + WARP_INVERSE_MAP,
   BORDER_REFLECT)``; the valid region ``cr`` is an all-ones image warped with
   ``INTER_NEAREST + WARP_INVERSE_MAP`` and a constant 0 border; ``zr = zr * cr``,
   ``xr = x * cr``;
4. PSNR with peak 1 of the MSE over the valid region (``sum((xr - zr)^2) / sum(cr)``);
5. SSIM: scikit-image ``structural_similarity(xr, zr, gaussian_weights=True,
   use_sample_covariance=False, data_range=1, full=True)`` per channel; the map times ``cr``,
   5 pixels cropped on each side, summed and divided by the cropped ``cr``'s sum per channel,
   the channels averaged.

Where ECC raises (it does when the correlation falls, e.g. on uncorrelated images) the
official script stops; :func:`score` instead falls back to the identity warp and says so in
its result (``ecc_failed``, ``ecc_error``).

OpenCV is the optional extra ``[realblur]`` (opencv-python-headless); :func:`require_cv2`
says so when it is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from .errors import LCNetError
from .metrics import psnr_from_mse

__all__ = [
    "ECC_GAUSS_FILT_SIZE",
    "ECC_ITERATIONS",
    "ECC_TERMINATION_EPS",
    "SSIM_CROP",
    "align",
    "masked_psnr",
    "masked_ssim",
    "require_cv2",
    "score",
]

ECC_ITERATIONS = 100
ECC_TERMINATION_EPS = 0
ECC_GAUSS_FILT_SIZE = 5
#: The script's crop of the SSIM map: the radius of skimage's Gaussian window (sigma 1.5,
#: truncate 3.5): int(3.5 * 1.5 + 0.5) = 5.
SSIM_CROP = int(3.5 * 1.5 + 0.5)
UINT8_MAX = 255


def require_cv2() -> Any:
    """The cv2 module, or LCNetError naming the ``[realblur]`` extra."""
    try:
        import cv2
    except ImportError as exc:
        raise LCNetError(
            "the RealBlur protocol needs OpenCV (cv2), which is not installed: "
            "pip install 'lcblock-cuda[realblur]' (or pip install opencv-python-headless)"
        ) from exc
    return cv2


def _float(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [0, 1], as the script's ``io.imread(...) / 255``."""
    return image.astype(np.float32) / UINT8_MAX


def align(
    output: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str | None]:
    """The script's ``image_align``: (zr, xr, cr, warp, error) for float32 HxWx3 images in
    [0, 1]; ``error`` is None, or ECC's message when it raised and the identity warp was used."""
    cv2 = require_cv2()
    z, x = output, gt
    zs = (np.sum(x * z) / np.sum(z * z)) * z  # simple intensity matching
    zs = zs.astype(np.float32)
    warp = np.eye(3, 3, dtype=np.float32)
    criteria = (
        cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT,
        ECC_ITERATIONS,
        ECC_TERMINATION_EPS,
    )
    error = None
    try:
        _, warp = cv2.findTransformECC(
            cv2.cvtColor(x, cv2.COLOR_RGB2GRAY),
            cv2.cvtColor(zs, cv2.COLOR_RGB2GRAY),
            warp,
            cv2.MOTION_HOMOGRAPHY,
            criteria,
            None,
            ECC_GAUSS_FILT_SIZE,
        )
    except cv2.error as exc:
        error = " ".join(str(exc).split())[-300:]
        warp = np.eye(3, 3, dtype=np.float32)
    height, width = x.shape[:2]
    zr = cv2.warpPerspective(
        zs,
        warp,
        (width, height),
        flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT,
    )
    cr = cv2.warpPerspective(
        np.ones_like(zs, dtype=np.float32),
        warp,
        (width, height),
        flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return zr * cr, x * cr, cr, warp, error


def masked_psnr(xr: np.ndarray, zr: np.ndarray, cr: np.ndarray) -> float:
    """The script's ``compute_psnr`` with data range 1: MSE over the valid region ``cr``."""
    err = np.sum((xr - zr) ** 2, dtype=np.float64) / np.sum(cr, dtype=np.float64)
    return psnr_from_mse(float(err), 1.0)


def masked_ssim(xr: np.ndarray, zr: np.ndarray, cr: np.ndarray) -> float:
    """The script's SSIM: the per-channel map times ``cr``, cropped by :data:`SSIM_CROP`,
    normalised by the cropped valid region per channel, channels averaged."""
    _, ssim_map = structural_similarity(
        xr,
        zr,
        channel_axis=-1,
        gaussian_weights=True,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    ssim_map = ssim_map * cr
    p = SSIM_CROP
    cropped, crop_cr = ssim_map[p:-p, p:-p, :], cr[p:-p, p:-p, :]
    per_channel = cropped.sum(axis=(0, 1)) / crop_cr.sum(axis=(0, 1))
    return float(np.mean(per_channel))


def score(output: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """RealBlur's PSNR and SSIM of a uint8 RGB ``output`` against the uint8 RGB ``gt``.

    Returns ``psnr``, ``ssim`` (the protocol's), ``psnr_unaligned`` (plain PSNR of the float
    images, the script's figure for the blurry input), ``warp`` (the 3x3 homography, row major),
    ``valid_fraction`` (of the pixels inside the warped image) and ``ecc_failed`` /
    ``ecc_error`` (see the module docstring).
    """
    z, x = _float(output), _float(gt)
    zr, xr, cr, warp, error = align(z, x)
    return {
        "psnr": masked_psnr(xr, zr, cr),
        "ssim": masked_ssim(xr, zr, cr),
        "psnr_unaligned": masked_psnr(x, z, np.ones_like(z)),
        "warp": [float(v) for v in np.asarray(warp, dtype=np.float64).ravel()],
        "valid_fraction": float(cr[..., 0].mean()),
        "ecc_failed": error is not None,
        "ecc_error": error,
    }
