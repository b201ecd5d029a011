"""An independent test generator (``lcnet synth --generator shake``): spatially uniform blur
by camera-shake and linear-motion point-spread functions, for testing only.

Written apart from :mod:`lcnet.synth` and :mod:`lcnet.scenes` (it imports none of their blur
code), so that a gain measured on its pairs is not a gain on one generator's quirks
(docs/training.md, "Independent test split"). Where the training generators warp whole frames
along a camera path and average them, this one convolves each photograph with one kernel:

- **camera shake**: a trajectory after Boracchi & Foi (2012, "Modeling the performance of
  image restoration from motion blur"): a random walk with inertia (each velocity step adds a
  Gaussian kick, a pull back towards the start and, now and then, an impulsive jerk), scaled to
  a drawn extent, of which the first ``exposure`` fraction (0.25-1) is sampled onto the kernel
  grid with sub-pixel bilinear splatting;
- **linear motion**: a straight segment of drawn length and angle, splatted the same way;
- **near-sharp**: a segment of at most :data:`NEAR_SHARP_PX` pixels.

The convolution is done in linear light (the sRGB curve decoded, convolved, re-encoded; the
gamma-correct average of GOPRO's ``blur_gamma``) and, for ``blur``, on the sRGB values (as
GOPRO's ``blur``). Noise is Poisson-Gaussian in linear light (shot noise and read noise, as a
sensor makes it) and is added to the blurry images only. There are no moving objects.

Sources: colour photographs bundled with scikit-image that no training set uses
(:data:`SHAKE_PHOTOS`), taken at random scales so the image statistics differ from the
training generators' too. Every pair's draw depends only on ``(seed, index)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import skimage
from scipy.signal import fftconvolve

from .io import PNG_COMPRESS_LEVEL, SHARP_DIR, check_new_folder, read_image, write_png
from .metrics import psnr

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PAIRS",
    "FAMILIES",
    "SHAKE_PHOTOS",
    "ShakeDraw",
    "linear_kernel",
    "make_shake_set",
    "shake_kernel",
    "srgb_to_linear",
    "linear_to_srgb",
]

#: Colour photographs of scikit-image's data folder used by no training set (lcnet.synth v1-v3
#: train on astronaut, coffee, rocket, ihc, hubble and grey textures; see tests/test_shake.py).
SHAKE_PHOTOS = ("chelsea.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg")
#: Scales at which a photograph is resized (Lanczos) before cropping.
SCALES = (1.0, 0.8, 0.6)
#: Blur families and how often each is drawn (shake, linear, near-sharp).
FAMILIES = ("shake", "linear", "near_sharp")
FAMILY_WEIGHTS = (0.6, 0.3, 0.1)
DEFAULT_PAIRS = 24
DEFAULT_SIZE = (256, 256)
#: Kernel extent (largest side of the trajectory) in pixels, drawn uniformly.
MIN_SHAKE_PX, MAX_SHAKE_PX = 4.0, 20.0
MIN_LINEAR_PX, MAX_LINEAR_PX = 3.0, 18.0
NEAR_SHARP_PX = 1.5
#: Trajectory samples (Boracchi & Foi use 2000 over the whole exposure).
TRAJECTORY_SAMPLES = 2000
#: Random walk with inertia: Gaussian kick, pull to the origin, impulse probability.
ANXIETY = 0.02
CENTRIPETAL = 0.0003
IMPULSE_PROBABILITY = 0.002
MIN_EXPOSURE, MAX_EXPOSURE = 0.25, 1.0
#: Sensor noise in linear light: read noise sigma and photons at full scale (shot noise).
MIN_READ_SIGMA, MAX_READ_SIGMA = 0.0005, 0.002
MIN_FULL_WELL, MAX_FULL_WELL = 3000.0, 20000.0
MANIFEST = "synth.json"
PAIRS_PER_SEQUENCE = 8


@dataclass(frozen=True)
class ShakeDraw:
    """What was drawn for one pair (recorded in the manifest)."""

    name: str
    source: str
    scale: float
    family: str
    extent_px: float
    exposure: float
    kernel_size: int
    read_sigma: float
    full_well: float
    psnr_blur: float
    psnr_blur_gamma: float


# ------------------------------------------------------------------------------ colour
def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """The sRGB decoding curve (IEC 61966-2-1), [0, 1] -> [0, 1]."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The sRGB encoding curve, [0, 1] -> [0, 1] (clipped)."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ kernels
def _splat(points: np.ndarray) -> np.ndarray:
    """Sum of bilinear splats of (n, 2) (x, y) points onto the smallest odd square grid that
    holds them centred on their centroid; normalised to sum 1."""
    points = points - points.mean(axis=0)
    radius = int(math.ceil(np.abs(points).max() + 1.0))
    size = 2 * radius + 1
    kernel = np.zeros((size, size), np.float64)
    xs, ys = points[:, 0] + radius, points[:, 1] + radius
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return kernel / kernel.sum()


def shake_kernel(rng: np.random.Generator, extent: float, exposure: float) -> np.ndarray:
    """A camera-shake PSF: Boracchi & Foi's random walk with inertia, scaled so that the whole
    trajectory spans ``extent`` pixels, of which the first ``exposure`` fraction is splatted."""
    v = rng.normal(size=2)
    v = v / (np.linalg.norm(v) + 1e-12)
    x = np.zeros(2)
    path = np.empty((TRAJECTORY_SAMPLES, 2))
    for t in range(TRAJECTORY_SAMPLES):
        path[t] = x
        kick = ANXIETY * rng.normal(size=2)
        impulse = rng.normal(size=2) * 0.5 if rng.random() < IMPULSE_PROBABILITY else np.zeros(2)
        v = v + kick - CENTRIPETAL * x + impulse
        v = v / (np.linalg.norm(v) + 1e-12)  # unit speed: the inertia is in the direction
        x = x + v
    used = path[: max(2, int(round(exposure * TRAJECTORY_SAMPLES)))]
    span = float(np.ptp(path, axis=0).max())
    return _splat(used * (extent / max(span, 1e-9)))


def linear_kernel(length: float, angle: float) -> np.ndarray:
    """A uniform linear-motion PSF of ``length`` pixels at ``angle`` radians."""
    t = np.linspace(-0.5, 0.5, max(2, int(math.ceil(length * 20))))
    points = np.stack([t * length * math.cos(angle), t * length * math.sin(angle)], axis=1)
    return _splat(points)


# ------------------------------------------------------------------------------ pairs
def _photo(name: str, scale: float) -> np.ndarray:
    image = read_image(Path(skimage.data.__file__).parent / name)
    if scale != 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.LANCZOS))
    return image.astype(np.float64) / 255.0


def _draw_kernel(rng: np.random.Generator, family: str) -> tuple[np.ndarray, float, float]:
    if family == "shake":
        extent = rng.uniform(MIN_SHAKE_PX, MAX_SHAKE_PX)
        exposure = rng.uniform(MIN_EXPOSURE, MAX_EXPOSURE)
        return shake_kernel(rng, extent, exposure), extent, exposure
    length = rng.uniform(*((0.0, NEAR_SHARP_PX) if family == "near_sharp" else (
        MIN_LINEAR_PX, MAX_LINEAR_PX)))  # fmt: skip
    return linear_kernel(length, rng.uniform(0.0, math.pi)), length, 1.0


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'valid' convolution of each channel of (H, W, 3) with a (k, k) kernel."""
    return np.stack([fftconvolve(image[..., c], kernel, mode="valid") for c in range(3)], -1)


def make_pair(
    rng: np.random.Generator, size: tuple[int, int], name: str, sources: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ShakeDraw]:
    """(blur, blur_gamma, sharp) uint8 (H, W, 3) and the draw of one pair."""
    height, width = size
    family = str(rng.choice(FAMILIES, p=FAMILY_WEIGHTS))
    kernel, extent, exposure = _draw_kernel(rng, family)
    r = kernel.shape[0] // 2
    source = sources[int(rng.integers(len(sources)))]
    scales = [s for s in SCALES]
    scale = float(scales[int(rng.integers(len(scales)))])
    photo = _photo(source, scale)
    if photo.shape[0] < height + 2 * r or photo.shape[1] < width + 2 * r:
        scale, photo = 1.0, _photo(source, 1.0)
    if photo.shape[0] < height + 2 * r or photo.shape[1] < width + 2 * r:
        raise ValueError(
            f"size: {height}x{width} plus a {kernel.shape[0]}-px kernel does not fit in "
            f"{source} ({photo.shape[0]}x{photo.shape[1]})"
        )
    best = None
    for _ in range(6):  # prefer a crop with texture (skip flat backgrounds)
        top = int(rng.integers(0, photo.shape[0] - height - 2 * r + 1))
        left = int(rng.integers(0, photo.shape[1] - width - 2 * r + 1))
        crop = photo[top : top + height + 2 * r, left : left + width + 2 * r]
        texture = float(np.abs(np.diff(crop.mean(axis=2), axis=1)).mean())
        if best is None or texture > best[0]:
            best = (texture, crop)
    assert best is not None
    crop = best[1]
    sharp = crop[r : r + height, r : r + width]
    linear = _convolve(srgb_to_linear(crop), kernel)
    srgb = _convolve(crop, kernel)
    read_sigma = float(rng.uniform(MIN_READ_SIGMA, MAX_READ_SIGMA))
    full_well = float(np.exp(rng.uniform(math.log(MIN_FULL_WELL), math.log(MAX_FULL_WELL))))

    def noisy(lin: np.ndarray) -> np.ndarray:
        lin = np.clip(lin, 0.0, 1.0)
        shot = rng.poisson(lin * full_well) / full_well
        return linear_to_srgb(shot + rng.normal(0.0, read_sigma, lin.shape))

    blur_gamma = _to_uint8(noisy(linear))
    blur = _to_uint8(noisy(srgb_to_linear(np.clip(srgb, 0.0, 1.0))))
    sharp8 = _to_uint8(sharp)
    draw = ShakeDraw(
        name=name,
        source=source,
        scale=scale,
        family=family,
        extent_px=round(float(extent), 3),
        exposure=round(float(exposure), 3),
        kernel_size=int(kernel.shape[0]),
        read_sigma=round(read_sigma, 5),
        full_well=round(full_well, 1),
        psnr_blur=round(psnr(blur, sharp8), 3),
        psnr_blur_gamma=round(psnr(blur_gamma, sharp8), 3),
    )
    return blur, blur_gamma, sharp8, draw


def make_shake_set(
    out: str | os.PathLike,
    pairs: int = DEFAULT_PAIRS,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    overwrite: bool = False,
    sources: tuple[str, ...] = SHAKE_PHOTOS,
) -> Path:
    """Write ``pairs`` test pairs at ``out/test/SHAKExxxx_00_00/{blur,blur_gamma,sharp}/`` and
    ``out/synth.json`` (written last; the set is built in a temporary sibling and renamed into
    place, so ``out`` is absent or complete). Raises ``ValueError`` for a bad count, seed or
    size and ``FileExistsError`` when ``out`` is not empty (unless ``overwrite``)."""
    out = Path(out)
    if not isinstance(pairs, (int, np.integer)) or pairs < 1:
        raise ValueError(f"test_pairs: expected a positive integer, got {pairs!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size: expected both sides >= 16, got {size!r}")
    check_new_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        records = []
        for index in range(int(pairs)):
            chunk, frame = divmod(index, PAIRS_PER_SEQUENCE)
            name = f"SHAKE{3000 + chunk:04d}_00_00/{frame + 1:06d}.png"
            rng = np.random.default_rng([int(seed), index, 0x5A4B])
            blur, blur_gamma, sharp, draw = make_pair(rng, tuple(size), name, sources)
            sequence, file = name.split("/")
            for folder, image in (("blur", blur), ("blur_gamma", blur_gamma), (SHARP_DIR, sharp)):
                write_png(tmp / "test" / sequence / folder / file, image, PNG_COMPRESS_LEVEL)
            records.append(asdict(draw))
        manifest = {
            "generator": "lcnet.shake",
            "format_version": 1,
            "seed": int(seed),
            "size": list(size),
            "pairs": {"test": int(pairs)},
            "sources": {"test": list(sources)},
            "source_folder": "skimage/data",
            "blur_model": {
                "families": dict(zip(FAMILIES, FAMILY_WEIGHTS, strict=True)),
                "shake_extent_px": [MIN_SHAKE_PX, MAX_SHAKE_PX],
                "linear_length_px": [MIN_LINEAR_PX, MAX_LINEAR_PX],
                "near_sharp_px": NEAR_SHARP_PX,
                "exposure": [MIN_EXPOSURE, MAX_EXPOSURE],
                "blur": "sRGB values convolved with the PSF",
                "blur_gamma": "linear light (sRGB curve) convolved with the PSF, re-encoded",
                "noise": "Poisson-Gaussian in linear light, blurry images only",
            },
            "mean_psnr": {
                "test": {
                    key: round(float(np.mean([r[key] for r in records])), 3)
                    for key in ("psnr_blur", "psnr_blur_gamma")
                }
            },
            "images": {"test": records},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.chmod(0o755)
        if out.is_dir() and overwrite:
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "synth: %d shake test pairs, mean PSNR vs sharp: blur %.2f dB, blur_gamma %.2f dB",
        pairs,
        manifest["mean_psnr"]["test"]["psnr_blur"],
        manifest["mean_psnr"]["test"]["psnr_blur_gamma"],
    )
    return out
