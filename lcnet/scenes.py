"""Scenes and non-uniform motion blur for the synthetic GOPRO-style sets, versions 2 and 3
(``synthetic-gopro-v2``, ``synthetic-gopro-v3``, see :mod:`lcnet.synth`).

Two kinds of scene, both offline:

- **dead leaves** (Matheron; Lee, Mumford and Huang 2001; used to pre-train restoration
  networks, e.g. Achddou et al. 2021): occluding discs, ellipses and rotated rectangles with
  radii drawn from a power law (density ~ r^-3, scale-invariant like natural images), each
  filled with a flat colour, a colour gradient or a texture cut from a source photograph;
- **photographs** bundled with scikit-image, cropped at several scales (100 %, 75 %, 55 %).

Motion (closer to GOPRO than one camera path per image): the whole scene moves with a hand-held
camera path (drift plus shake plus a small rotation, as in version 1), and 0-3 foreground
objects move on their own straight-ish paths on top of it, so the blur differs between object
and background and the objects' borders mix both. The sharp image is the middle frame.

All warps are bilinear (:func:`_warp`, ``grid_sample``): a frame costs about a millisecond per
256x256 layer.

Every draw comes from the ``np.random.Generator`` passed in, so a seed reproduces a pair
exactly. Train and test scenes use disjoint source photographs (:data:`TRAIN_PHOTOS`,
:data:`TEST_PHOTOS`; the grey textures are train-only) and independent random streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL.Image
import skimage
import torch
import torch.nn.functional as F

from .io import read_image

__all__ = [
    "SCENE_KINDS",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "TRAIN_TEXTURES",
    "PairDraw",
    "camera_path_length",
    "dead_leaves",
    "make_pair",
]

#: Colour photographs per split (the two motorcycle views show one scene: both are test).
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "ihc.png", "hubble_deep_field.jpg")
TEST_PHOTOS = ("chelsea.png", "motorcycle_left.png", "motorcycle_right.png")
#: Grey photographs used only as textures of training dead-leaves shapes (tinted).
TRAIN_TEXTURES = ("brick.png", "grass.png", "gravel.png", "camera.png", "moon.png", "coins.png")
SCENE_KINDS = ("dead_leaves", "photo")
#: Scales at which photographs are cropped (a scale is used when the scaled photo still holds
#: the crop).
PHOTO_SCALES = (1.0, 0.75, 0.55)

# ------------------------------------------- camera blur, shared with version 1 (lcnet.synth)
GAMMA = 2.2
UINT8_MAX = 255
#: Frames averaged per blurry image (GOPRO: 7-13 frames at 240 fps).
MIN_FRAMES, MAX_FRAMES = 7, 15
#: Length of the camera path over the exposure, in output pixels, drawn log-uniformly (GOPRO:
#: roughly 5-30 px at 1280x720).
MIN_PATH_PX, MAX_PATH_PX = 3.0, 18.0
#: Standard deviation (radians) of the per-frame change of heading: shake on top of drift.
HEADING_JITTER_RAD = 0.35
#: Relative standard deviation of the per-frame step length (the camera speeds up, slows).
SPEED_JITTER = 0.3
#: Largest total in-plane rotation over the exposure, degrees.
MAX_ROTATION_DEG = 1.0
#: Moving objects per pair and the length of their own path (relative to the background).
MIN_OBJECTS, MAX_OBJECTS = 0, 3
MIN_OBJECT_PATH_PX, MAX_OBJECT_PATH_PX = 2.0, 20.0
OBJECT_HEADING_JITTER_RAD = 0.15
MIN_OBJECT_RADIUS, MAX_OBJECT_RADIUS = 14.0, 56.0
#: Sensor noise of the blurry images, in 8-bit grey levels.
MIN_NOISE_LEVELS, MAX_NOISE_LEVELS = 1.0, 2.0
#: Version 3 (docs/training.md, "Training data v3"): share of pairs with a still camera,
#: camera path range (log-uniform), frames cap (one frame per pixel of path, up to this), and
#: per-frame sensor noise in 8-bit grey levels.
V3_STILL_CAMERA = 0.25
V3_MIN_PATH_PX, V3_MAX_PATH_PX = 0.5, 20.0
V3_MAX_FRAMES = 25
V3_MIN_NOISE_LEVELS, V3_MAX_NOISE_LEVELS = 0.5, 3.0
#: Version 3's noise: False (the default set) adds it to the blurry images only, so the sharp
#: targets are clean and the network learns to denoise, not to copy noise; True puts it on
#: every frame, the sharp one included (measured in docs/training.md: that network sharpens
#: noise and loses 3.7 dB on a nearly sharp image of the shake split).
V3_FRAME_NOISE = False
#: Version 4 (docs/training.md, "Training data v4"): version 3 with fewer pairs that have
#: nothing to deblur (in v3 about 60 % had less than 3 px of camera path): a still camera in
#: :data:`V4_STILL_CAMERA` of the pairs, a short path (log-uniform over
#: :data:`V4_SHORT_PATH_PX`) in :data:`V4_SHORT_PATH`, and v2's 3-18 px range
#: (:data:`MIN_PATH_PX`, :data:`MAX_PATH_PX`) in the rest; frames and noise as version 3.
V4_STILL_CAMERA = 0.10
V4_SHORT_PATH = 0.15
V4_SHORT_PATH_PX = (0.5, 3.0)
#: Version 4's frames: True, one frame per pixel of path as version 3 (up to
#: :data:`V3_MAX_FRAMES`); False, version 2's 7-15 frames whatever the path (long paths then
#: ghost, as in the test split, which is version 2's).
V4_ONE_FRAME_PER_PX = True
#: Version 4's noise on the blurry images, 8-bit grey levels (version 3's by default).
V4_MIN_NOISE_LEVELS, V4_MAX_NOISE_LEVELS = V3_MIN_NOISE_LEVELS, V3_MAX_NOISE_LEVELS
#: Dead leaves: shape count and radius range (density ~ r^-3 between them), in pixels.
MIN_LEAVES, MAX_LEAVES = 300, 600
MIN_LEAF_RADIUS, MAX_LEAF_RADIUS = 4.0, 120.0
#: Canvas margin around the output: no displacement reaches outside it.
MARGIN = 48
#: Extra pixels around a moving object's box for the camera rotation (<= 1 degree).
ROTATION_PAD = 4


@dataclass(frozen=True)
class PairDraw:
    """What was drawn for one pair (recorded per image in the manifest)."""

    kind: str
    source: str
    scale: float
    n_frames: int
    path_length_px: float
    rotation_deg: float
    n_objects: int
    object_path_px: tuple[float, ...]
    noise_levels: float


# ---------------------------------------------------------------------------------- sources
def _source_dir() -> Path:
    return Path(skimage.data.__file__).parent


@lru_cache(maxsize=64)
def _photo(name: str, scale: float = 1.0) -> np.ndarray:
    """A bundled image as float32 HxWx3 in [0, 1] (grey repeated), resized by ``scale``
    (Lanczos, anti-aliased). Cached: callers must not modify it."""
    image = read_image(_source_dir() / name)
    if scale != 1.0:
        height, width = image.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.LANCZOS))
    out = image.astype(np.float32) / np.float32(UINT8_MAX)
    out.setflags(write=False)
    return out


def _texture(gray: np.ndarray) -> float:
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


# ------------------------------------------------------------------------------------ warps
def _warp(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear sample of ``image`` (H, W, C) float32 at float coordinates ``ys``, ``xs``
    (same shape, (h, w)); points outside read the nearest edge pixel. Uses
    ``torch.nn.functional.grid_sample`` (deterministic on the CPU, ~1 ms per 256x256 RGB)."""
    height, width = image.shape[:2]
    source = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    grid = torch.from_numpy(
        np.stack(
            [xs * (2.0 / max(width - 1, 1)) - 1.0, ys * (2.0 / max(height - 1, 1)) - 1.0], -1
        ).astype(np.float32)
    )[None]
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0].permute(1, 2, 0).numpy()


def _warp_zero(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """:func:`_warp` of an RGBA layer padded by one transparent pixel on each side, so
    points outside the layer read as transparent."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    return _warp(padded, ys + 1.0, xs + 1.0)


def _grid(
    shape: tuple[int, int],
    origin: tuple[int, int],
    offset: np.ndarray,
    rotation: float,
    centre: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates of output pixels ``origin + (i, j)`` for i, j in ``shape``: rotate by
    ``rotation`` about ``centre`` (canvas y, x), then shift by ``offset`` (x, y)."""
    height, width = shape
    yy, xx = np.meshgrid(
        np.arange(origin[0], origin[0] + height, dtype=np.float32),
        np.arange(origin[1], origin[1] + width, dtype=np.float32),
        indexing="ij",
    )
    cy, cx = centre
    cos, sin = math.cos(rotation), math.sin(rotation)
    dy, dx = yy - cy, xx - cx
    return cy + sin * dx + cos * dy + offset[1], cx + cos * dx - sin * dy + offset[0]


def _path(
    rng: np.random.Generator, n_frames: int, length: float, jitter: float, speed_jitter: float
) -> np.ndarray:
    """Offsets (n_frames, 2) as (x, y) of a wandering path of total ``length``, zero at the
    middle frame."""
    heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(rng.normal(0.0, jitter, n_frames - 1))
    speed = np.clip(rng.normal(1.0, speed_jitter, n_frames - 1), 0.1, None)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * speed[:, None]
    steps *= length / speed.sum()
    offsets = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return offsets - offsets[n_frames // 2]


# ----------------------------------------------------------------------------------- shapes
def _shape_alpha(
    rng: np.random.Generator, radius: float, kind: str | None = None
) -> tuple[np.ndarray, int]:
    """Anti-aliased mask of a random disc, ellipse or rotated rectangle of about ``radius``
    pixels; returns (mask (s, s) float32, half size)."""
    half = int(math.ceil(radius * 1.5)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    kind = kind or str(rng.choice(("disc", "ellipse", "rect")))
    angle = rng.uniform(0.0, np.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * xx + sin * yy, -sin * xx + cos * yy
    if kind == "disc":
        dist = np.sqrt(u * u + v * v) - radius
    elif kind == "ellipse":
        ratio = rng.uniform(0.4, 1.0)
        a, b = radius, radius * ratio
        # First-order distance to an ellipse: (f - 1) / |grad f| with f the implicit form.
        f = np.sqrt((u / a) ** 2 + (v / b) ** 2) + 1e-6
        grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / f + 1e-6
        dist = (f - 1.0) / grad
    else:
        ratio = rng.uniform(0.3, 1.0)
        a, b = radius * 0.9, radius * 0.9 * ratio
        qx, qy = np.abs(u) - a, np.abs(v) - b
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        dist = outside + np.minimum(np.maximum(qx, qy), 0)
    return np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32), half


def _fill(
    rng: np.random.Generator,
    size: int,
    textures: tuple[str, ...],
    photos: tuple[str, ...],
    kinds: tuple[str, ...] = ("flat", "gradient", "texture", "texture"),
) -> np.ndarray:
    """A (size, size, 3) fill: flat colour, linear gradient or a texture cut from a source
    (one of ``kinds``, uniformly)."""
    kind = kinds[int(rng.integers(len(kinds)))]
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    if kind == "flat":
        return np.broadcast_to(colour, (size, size, 3))
    if kind == "gradient":
        other = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        ramp = np.cos(angle) * np.arange(size)[None, :] + np.sin(angle) * np.arange(size)[:, None]
        ramp = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)).astype(np.float32)
        return colour + (other - colour) * ramp[..., None]
    names = photos + textures
    name = names[int(rng.integers(len(names)))]
    scale = float(rng.choice(PHOTO_SCALES))
    source = _photo(name, scale)
    if source.shape[0] < size or source.shape[1] < size:
        source = _photo(name, 1.0)
    if source.shape[0] < size or source.shape[1] < size:
        return np.broadcast_to(colour, (size, size, 3))
    top = int(rng.integers(0, source.shape[0] - size + 1))
    left = int(rng.integers(0, source.shape[1] - size + 1))
    patch = source[top : top + size, left : left + size]
    if name in textures:  # grey: tint it
        tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        patch = patch * tint + rng.uniform(0.0, 0.3) * (1 - tint)
    else:
        patch = patch[:, :, rng.permutation(3)]
    return patch


def _radius(rng: np.random.Generator, low: float, high: float) -> float:
    """Radius with density ~ r^-3 on [low, high] (inverse CDF)."""
    u = rng.uniform()
    return 1.0 / math.sqrt(u / high**2 + (1.0 - u) / low**2)


def _paste(canvas: np.ndarray, alpha: np.ndarray, fill: np.ndarray, cy: int, cx: int) -> None:
    """Composite ``fill`` through ``alpha`` (both (s, s)) centred at (cy, cx), clipped."""
    half = alpha.shape[0] // 2
    height, width = canvas.shape[:2]
    y0, x0 = cy - half, cx - half
    ya, xa = max(0, -y0), max(0, -x0)
    yb = min(alpha.shape[0], height - y0)
    xb = min(alpha.shape[1], width - x0)
    if ya >= yb or xa >= xb:
        return
    a = alpha[ya:yb, xa:xb, None]
    region = canvas[y0 + ya : y0 + yb, x0 + xa : x0 + xb]
    region[...] = region * (1 - a) + fill[ya:yb, xa:xb] * a


def dead_leaves(
    rng: np.random.Generator,
    shape: tuple[int, int],
    textures: tuple[str, ...] = TRAIN_TEXTURES,
    photos: tuple[str, ...] = TRAIN_PHOTOS,
) -> np.ndarray:
    """A dead-leaves image (H, W, 3) float32 in [0, 1]: shapes painted back to front."""
    height, width = shape
    canvas = np.empty((height, width, 3), np.float32)
    canvas[...] = _fill(rng, max(height, width), textures, photos)[:height, :width]
    for _ in range(int(rng.integers(MIN_LEAVES, MAX_LEAVES + 1))):
        radius = _radius(rng, MIN_LEAF_RADIUS, MAX_LEAF_RADIUS)
        alpha, half = _shape_alpha(rng, radius)
        fill = _fill(rng, alpha.shape[0], textures, photos)
        _paste(canvas, alpha, fill, int(rng.integers(height)), int(rng.integers(width)))
    return np.clip(canvas, 0.0, 1.0)


def _photo_canvas(
    rng: np.random.Generator, photos: tuple[str, ...], shape: tuple[int, int]
) -> tuple[np.ndarray, str, float]:
    """A (H, W, 3) crop of a photo at a random feasible scale, the most textured of a few
    tries; photos smaller than the canvas are reflect-padded."""
    name = photos[int(rng.integers(len(photos)))]
    height, width = shape
    inner = (height - 2 * MARGIN, width - 2 * MARGIN)
    scales = [
        s for s in PHOTO_SCALES
        if min(_photo(name, s).shape[0] - inner[0], _photo(name, s).shape[1] - inner[1]) >= 0
    ]  # fmt: skip
    scale = float(rng.choice(scales)) if scales else 1.0
    source = _photo(name, scale)
    pad_y = max(0, height - source.shape[0])
    pad_x = max(0, width - source.shape[1])
    if pad_y or pad_x:
        source = np.pad(
            source,
            ((pad_y // 2 + 1, pad_y - pad_y // 2 + 1), (pad_x // 2 + 1, pad_x - pad_x // 2 + 1),
             (0, 0)),
            mode="reflect",
        )  # fmt: skip
    best = None
    for _ in range(8):
        top = int(rng.integers(0, source.shape[0] - height + 1))
        left = int(rng.integers(0, source.shape[1] - width + 1))
        crop = source[top : top + height, left : left + width]
        texture = _texture(crop[MARGIN:-MARGIN, MARGIN:-MARGIN].mean(axis=2))
        if best is None or texture > best[0]:
            best = (texture, crop)
        if texture >= 0.03:
            break
    assert best is not None
    return np.ascontiguousarray(best[1]), name, scale


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def camera_path_length(rng: np.random.Generator, version: int) -> float:
    """The camera path's length (px) of one training pair of version 3 or 4; 0.0 is a still
    camera. Version 3: still in :data:`V3_STILL_CAMERA` of the pairs, else log-uniform over
    :data:`V3_MIN_PATH_PX`-:data:`V3_MAX_PATH_PX` (so about 60 % of its pairs move less than
    3 px). Version 4: still in :data:`V4_STILL_CAMERA`, log-uniform over
    :data:`V4_SHORT_PATH_PX` in :data:`V4_SHORT_PATH`, else over v2's range."""
    if version == 3:
        if rng.random() < V3_STILL_CAMERA:
            return 0.0
        return _log_uniform(rng, V3_MIN_PATH_PX, V3_MAX_PATH_PX)
    if version != 4:
        raise ValueError(f"version: expected 3 or 4, got {version!r}")
    share = rng.random()
    if share < V4_STILL_CAMERA:
        return 0.0
    if share < V4_STILL_CAMERA + V4_SHORT_PATH:
        return _log_uniform(rng, *V4_SHORT_PATH_PX)
    return _log_uniform(rng, MIN_PATH_PX, MAX_PATH_PX)


# ------------------------------------------------------------------------------------ pairs
def make_pair(
    rng: np.random.Generator, size: tuple[int, int], split: str, kind: str, version: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, PairDraw]:
    """(blur, blur_gamma, sharp) uint8 (H, W, 3) and what was drawn, for one pair.

    ``split`` selects the sources ("train": :data:`TRAIN_PHOTOS` and :data:`TRAIN_TEXTURES`;
    "test": :data:`TEST_PHOTOS` only); ``kind`` is one of :data:`SCENE_KINDS`.

    ``version`` 2 draws exactly as before (byte-identical sets). Version 3 (docs/training.md,
    "Training data v3") adds what v2 never shows: a still camera in :data:`V3_STILL_CAMERA` of
    the pairs (static regions; with no moving object, a sharp pair), camera paths from
    :data:`V3_MIN_PATH_PX` px, at least one frame per pixel of path (no ghosting gaps), and
    noise of :data:`V3_MIN_NOISE_LEVELS`-:data:`V3_MAX_NOISE_LEVELS` grey levels on the blurry
    images (on every frame, the sharp one included, with :data:`V3_FRAME_NOISE`).
    ``lcnet.synth`` draws version 3's test split with version 2.
    """
    if version not in (2, 3, 4):
        raise ValueError(f"version: expected 2, 3 or 4, got {version!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if kind not in SCENE_KINDS:
        raise ValueError(f"kind: expected one of {SCENE_KINDS}, got {kind!r}")
    photos = TRAIN_PHOTOS if split == "train" else TEST_PHOTOS
    textures = TRAIN_TEXTURES if split == "train" else ()
    height, width = size
    canvas_shape = (height + 2 * MARGIN, width + 2 * MARGIN)
    if kind == "dead_leaves":
        background, source, scale = dead_leaves(rng, canvas_shape, textures, photos), "", 1.0
    else:
        background, source, scale = _photo_canvas(rng, photos, canvas_shape)

    n_frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    path_length = (
        _log_uniform(rng, MIN_PATH_PX, MAX_PATH_PX)
        if version == 2
        else camera_path_length(rng, version)
    )
    still = path_length == 0.0
    if version == 3 or (version == 4 and V4_ONE_FRAME_PER_PX):
        n_frames = max(n_frames, min(V3_MAX_FRAMES, math.ceil(path_length) + 1))
    camera = _path(rng, n_frames, path_length, HEADING_JITTER_RAD, SPEED_JITTER)
    total_rotation = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    if still:
        total_rotation = 0.0
    mid = n_frames // 2
    rotations = total_rotation * (np.arange(n_frames) - mid) / max(n_frames - 1, 1)
    centre = ((canvas_shape[0] - 1) / 2.0, (canvas_shape[1] - 1) / 2.0)

    # Moving objects: shapes filled from the split's sources, each an RGBA layer over the whole
    # canvas (only its bounding box is warped), with its own path on top of the camera's.
    objects = []
    n_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for _ in range(n_objects):
        radius = rng.uniform(MIN_OBJECT_RADIUS, MAX_OBJECT_RADIUS)
        alpha, half = _shape_alpha(rng, radius)
        kinds = ("texture",) if kind == "photo" else ("flat", "gradient", "texture", "texture")
        fill = _fill(rng, alpha.shape[0], textures, photos, kinds)
        cy = int(rng.integers(MARGIN, MARGIN + height))
        cx = int(rng.integers(MARGIN, MARGIN + width))
        length = rng.uniform(MIN_OBJECT_PATH_PX, MAX_OBJECT_PATH_PX)
        path = _path(rng, n_frames, length, OBJECT_HEADING_JITTER_RAD, 0.1)
        layer = np.concatenate([fill * alpha[..., None], alpha[..., None]], axis=2)
        objects.append((np.ascontiguousarray(layer, dtype=np.float32), cy - half, cx - half, path))

    srgb_sum = np.zeros((height, width, 3), np.float32)
    linear_sum = np.zeros((height, width, 3), np.float32)
    sharp = None
    for f in range(n_frames):
        ys, xs = _grid((height, width), (MARGIN, MARGIN), camera[f], rotations[f], centre)
        frame = _warp(background, ys, xs)
        for layer, top, left, path in objects:
            # Output pixel q sees canvas point P = R (q + MARGIN - c) + c + camera; the object
            # sits at canvas (top, left) + path, so q samples its layer at P - (top, left) - path.
            # Its box in output pixels, padded for the small rotation:
            extent = layer.shape[0]
            y0 = max(0, math.floor(top + path[f][1] - camera[f][1]) - MARGIN - ROTATION_PAD)
            x0 = max(0, math.floor(left + path[f][0] - camera[f][0]) - MARGIN - ROTATION_PAD)
            y1 = min(height, y0 + extent + 2 * ROTATION_PAD + 2)
            x1 = min(width, x0 + extent + 2 * ROTATION_PAD + 2)
            if y0 >= y1 or x0 >= x1:
                continue
            oys, oxs = _grid(
                (y1 - y0, x1 - x0), (MARGIN + y0, MARGIN + x0), camera[f], rotations[f], centre
            )
            sample = _warp_zero(layer, oys - top - path[f][1], oxs - left - path[f][0])
            a = sample[..., 3:]
            region = frame[y0:y1, x0:x1]
            region[...] = region * (1 - a) + sample[..., :3]
        frame = np.clip(frame, 0.0, 1.0)
        if version == 3 and V3_FRAME_NOISE:  # every frame a noisy exposure; the sharp one too
            if f == 0:
                noise_levels = float(rng.uniform(V3_MIN_NOISE_LEVELS, V3_MAX_NOISE_LEVELS))
            sigma = noise_levels / UINT8_MAX
            frame = np.clip(frame + rng.normal(0.0, sigma, frame.shape).astype(np.float32), 0, 1)
        if f == mid:
            sharp = frame
        srgb_sum += frame
        linear_sum += frame**GAMMA
    assert sharp is not None
    if version == 3 and V3_FRAME_NOISE:
        noise = np.zeros((2, 1, 1, 1), np.float32)
    else:
        low, high = (
            (MIN_NOISE_LEVELS, MAX_NOISE_LEVELS)
            if version == 2
            else (V3_MIN_NOISE_LEVELS, V3_MAX_NOISE_LEVELS)
            if version == 3
            else (V4_MIN_NOISE_LEVELS, V4_MAX_NOISE_LEVELS)
        )
        noise_levels = float(rng.uniform(low, high))
        noise = rng.normal(0.0, noise_levels / UINT8_MAX, (2, height, width, 3)).astype(np.float32)
    blur = quantise(srgb_sum / n_frames + noise[0])
    blur_gamma = quantise((linear_sum / n_frames) ** (1.0 / GAMMA) + noise[1])
    draw = PairDraw(
        kind=kind,
        source=source,
        scale=scale,
        n_frames=n_frames,
        path_length_px=round(path_length, 3),
        rotation_deg=round(math.degrees(total_rotation), 4),
        n_objects=len(objects),
        object_path_px=tuple(round(float(np.abs(np.diff(o[3], axis=0)).sum()), 2) for o in objects),
        noise_levels=round(noise_levels, 3),
    )
    return blur, blur_gamma, quantise(sharp), draw


def quantise(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8, rounded."""
    return np.clip(np.rint(x * UINT8_MAX), 0, UINT8_MAX).astype(np.uint8)
