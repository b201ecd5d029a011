"""A synthetic GOPRO-layout deblurring set made from the colour photographs bundled with
scikit-image, blurred the way GOPRO was made.

Three generator versions (``version``): 3 (the default, ``synthetic-gopro-v3``) is version 2's
generator with a training split that also shows still cameras, blur down to half a pixel and
more noise (docs/training.md, "Training data"; its test split is version 2's, byte for byte);
2 (``synthetic-gopro-v2``) draws dead-leaves scenes and photographs at several scales with
moving objects over a moving camera (:mod:`lcnet.scenes`); 1 (``synthetic-gopro-v1``,
described below) is kept byte for byte. Versions 1 and 2: ``lcnet synth --version N``.

GOPRO (Nah et al., 2017) averaged 7-13 consecutive 240 fps frames of a hand-held camera and
kept the middle frame as the sharp target. Here each pair simulates such a burst: a random
camera trajectory (a drifting path whose heading wanders, i.e. shake plus drift, and a little
rotation) is applied to a crop of a source photograph with sub-pixel warps; the middle frame
(no displacement) is the sharp image;

- ``blur_gamma`` is the average of the frames in linear light (decode gamma 2.2, average,
  re-encode), as GOPRO's ``blur_gamma``;
- ``blur`` is the plain average of the sRGB frame values, as GOPRO's ``blur``;

both get mild Gaussian sensor noise and are quantised to uint8. The train and test splits are
drawn from disjoint source photographs (see :data:`TRAIN_SOURCES` and :data:`TEST_SOURCES`), so
no test content is seen in training. Every pair's random draw depends only on
``(seed, split, pair index)``, so a seed gives byte-identical PNGs.

Crops are taken at the photos' native scale (300-1000 px photos, so a 256x256 crop shows a
good part of a scene, as a 1280x720 GOPRO frame does) and camera paths are 3-18 px long.

The default set (:data:`DEFAULT_TRAIN_PAIRS` = 96 train and :data:`DEFAULT_TEST_PAIRS` = 16
test pairs of :data:`DEFAULT_SIZE` = 256x256, 39 MB) costs about 15 s of CPU time to build.
With seed 0 its mean blurry PSNR vs sharp is 26.7 dB (``blur``) / 26.1 dB (``blur_gamma``) on
train and 26.1 / 25.6 dB on test, per image 19-33 dB (GOPRO's mean is about 25.6 dB); the
per-image numbers are in ``synth.json`` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import skimage
import torch
from skimage.transform import AffineTransform, warp

from . import metrics, scenes
from .io import BLUR_DIRS as BLUR_DIRS  # noqa: F401 (lcnet.synth.BLUR_DIRS, as before)
from .io import PNG_COMPRESS_LEVEL, SHARP_DIR, check_new_folder, read_image, write_png
from .scenes import (
    GAMMA,
    HEADING_JITTER_RAD,
    MAX_FRAMES,
    MAX_PATH_PX,
    MAX_ROTATION_DEG,
    MIN_FRAMES,
    MIN_PATH_PX,
    SPEED_JITTER,
    UINT8_MAX,
    quantise,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_SIZE",
    "DEFAULT_TEST_PAIRS",
    "DEFAULT_TRAIN_PAIRS",
    "MANIFEST_NAME",
    "TEST_SOURCES",
    "TRAIN_SOURCES",
    "BlurParams",
    "add_synth_arguments",
    "make_synthetic_gopro",
    "parse_size",
    "run_synth",
]

# ----------------------------------------------------------------------------- defaults
DEFAULT_TRAIN_PAIRS = 96
DEFAULT_TEST_PAIRS = 16
DEFAULT_SIZE = (256, 256)  # (height, width)
DEFAULT_SEED = 0

#: Written last into the output folder: its presence marks a complete set.
MANIFEST_NAME = "synth.json"
#: Generator versions: 1 = camera shake over 5 photographs (``synthetic-gopro-v1``, kept
#: byte-for-byte reproducible), 2 = dead leaves + photographs at several scales, moving objects
#: over a moving camera (:mod:`lcnet.scenes`, ``synthetic-gopro-v2``), 3 = version 2 with still
#: cameras, blur from half a pixel and more noise in the training split (``synthetic-gopro-v3``,
#: the default; docs/training.md).
VERSIONS = (1, 2, 3, 4)
DEFAULT_VERSION = 3
#: Version written by default (kept for callers of version 1's name).
FORMAT_VERSION = DEFAULT_VERSION
#: Version 2's default pair counts: train half dead leaves, half photographs; test photographs
#: of the test sources only.
V2_TRAIN_PAIRS = 128
V2_TEST_PAIRS = 24

#: Colour photographs shipped inside scikit-image's ``data`` folder (no download needed).
#: The two motorcycle views show the same scene, so both stay in the same split.
TRAIN_SOURCES = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "ihc.png",
    "hubble_deep_field.jpg",
)
TEST_SOURCES = ("chelsea.png", "motorcycle_left.png", "motorcycle_right.png")

#: Pairs per synthetic "video" folder (GOPRO has 33 sequences of ~100 frames).
PAIRS_PER_SEQUENCE = 8
#: ``lcnet synth --generator``: this module's generator, or the independent test generator
#: (:mod:`lcnet.shake`).
GENERATORS = ("lcnet", "shake")
#: Smallest image side accepted for ``size``.
MIN_SIZE = 16

# -------------------------------------------------------------------- blur simulation
# The camera-blur constants (GAMMA, frames, path length, jitter, rotation) are shared with
# version 2 and live in lcnet.scenes. Version 1 crops at the photos' native scale, so its path
# length is in pixels of the source photo and the blur per pixel does not depend on ``size``.
#: Sensor noise added to the blurry images, standard deviation in 8-bit grey levels.
MIN_NOISE_LEVELS, MAX_NOISE_LEVELS = 1.0, 2.0
#: Crop positions tried per pair; the one with the most texture (mean absolute gradient)
#: is kept unless an earlier one already reaches MIN_TEXTURE (skips black sky / borders).
CROP_TRIES = 8
MIN_TEXTURE = 0.03
#: Interpolation order of the sub-pixel warps (1 = bilinear).
WARP_ORDER = 1
#: Threads generating pairs (warps, numpy maths and PNG encoding release the GIL).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class BlurParams:
    """What was drawn for one pair (recorded per image in the manifest)."""

    name: str
    source: str
    crop_top: int
    crop_left: int
    n_frames: int
    path_length_px: float
    rotation_deg: float
    noise_levels: float
    psnr_blur: float
    psnr_blur_gamma: float


def _source_dir() -> Path:
    return Path(skimage.data.__file__).parent


def _load_source(name: str) -> np.ndarray:
    """A bundled photograph as float32 HxWx3 in [0, 1] (float32 halves the cost of the
    gamma maths; the rounding to uint8 hides the difference)."""
    return read_image(_source_dir() / name).astype(np.float32) / np.float32(UINT8_MAX)


def _trajectory(
    rng: np.random.Generator, n_frames: int, path_length: float
) -> tuple[np.ndarray, np.ndarray]:
    """Camera offsets (n_frames, 2) as (x, y) pixels and rotations (n_frames,) in radians,
    both zero at the middle frame."""
    heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(
        rng.normal(0.0, HEADING_JITTER_RAD, n_frames - 1)
    )
    speed = np.clip(rng.normal(1.0, SPEED_JITTER, n_frames - 1), 0.1, None)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * speed[:, None]
    steps *= path_length / speed.sum()
    offsets = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    mid = n_frames // 2
    offsets -= offsets[mid]
    total_rotation = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    rotations = total_rotation * (np.arange(n_frames) - mid) / max(n_frames - 1, 1)
    return offsets, rotations


def _frame_transform(
    offset: np.ndarray, rotation: float, centre_xy: tuple[float, float], half_xy: np.ndarray
) -> AffineTransform:
    """Maps output (x, y) to source (x, y): rotate about the crop centre, then shift."""
    cos, sin = math.cos(rotation), math.sin(rotation)
    rot = np.array([[cos, -sin], [sin, cos]])
    shift = np.asarray(centre_xy) + offset - rot @ half_xy
    matrix = np.eye(3)
    matrix[:2, :2] = rot
    matrix[:2, 2] = shift
    return AffineTransform(matrix=matrix)


def _texture(gray: np.ndarray) -> float:
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def _choose_crop(
    rng: np.random.Generator,
    source: np.ndarray,
    size: tuple[int, int],
    corner_offsets: np.ndarray,
) -> tuple[int, int]:
    """Top-left corner of a crop such that every frame's footprint (corner offsets relative
    to the crop, (k, 2) as (x, y)) stays inside the photograph where possible."""
    height, width = size
    src_h, src_w = source.shape[:2]
    lo = np.ceil(-corner_offsets.min(axis=0)).astype(int)  # (x, y)
    hi = np.floor(corner_offsets.max(axis=0)).astype(int)
    left_range = (lo[0], src_w - 1 - (width - 1) - hi[0])
    top_range = (lo[1], src_h - 1 - (height - 1) - hi[1])
    best: tuple[float, int, int] | None = None
    for _ in range(CROP_TRIES):
        corner = []
        for low, high, side, src_side in (
            (*top_range, height, src_h),
            (*left_range, width, src_w),
        ):
            # A footprint wider than the photograph: centre it and let "reflect" fill in.
            corner.append(
                int(rng.integers(low, high + 1)) if high >= low else (src_side - side) // 2
            )
        top, left = corner
        texture = _texture(source[top : top + height, left : left + width].mean(axis=2))
        if best is None or texture > best[0]:
            best = (texture, top, left)
        if texture >= MIN_TEXTURE:
            break
    assert best is not None  # CROP_TRIES >= 1
    return best[1], best[2]


def _make_pair(
    source: np.ndarray, source_name: str, name: str, size: tuple[int, int], seed_key: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, BlurParams]:
    """(blur, blur_gamma, sharp) uint8 HxWx3 and the parameters drawn for one pair."""
    rng = np.random.default_rng(seed_key)
    height, width = size
    n_frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    path_length = math.exp(rng.uniform(math.log(MIN_PATH_PX), math.log(MAX_PATH_PX)))
    offsets, rotations = _trajectory(rng, n_frames, path_length)

    half_xy = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], float)
    footprints = []
    for offset, rotation in zip(offsets, rotations, strict=True):
        tform = _frame_transform(offset, rotation, (half_xy[0], half_xy[1]), half_xy)
        footprints.append(tform(corners) - corners)
    top, left = _choose_crop(rng, source, size, np.concatenate(footprints))

    centre_xy = (left + half_xy[0], top + half_xy[1])
    linear_sum = np.zeros((height, width, 3), np.float32)
    srgb_sum = np.zeros((height, width, 3), np.float32)
    for offset, rotation in zip(offsets, rotations, strict=True):
        tform = _frame_transform(offset, rotation, centre_xy, half_xy)
        frame = warp(
            source,
            tform,
            output_shape=(height, width),
            order=WARP_ORDER,
            mode="reflect",
            preserve_range=True,
        )
        frame = np.clip(frame, 0.0, 1.0, out=frame)
        srgb_sum += frame
        linear_sum += frame**GAMMA
    noise_levels = float(rng.uniform(MIN_NOISE_LEVELS, MAX_NOISE_LEVELS))
    sigma = noise_levels / UINT8_MAX
    noise = rng.normal(0.0, sigma, (2, *srgb_sum.shape)).astype(np.float32)
    blur = quantise(srgb_sum / n_frames + noise[0])
    blur_gamma = quantise((linear_sum / n_frames) ** (1.0 / GAMMA) + noise[1])
    # The middle frame has no displacement: it is exactly the crop.
    sharp = quantise(source[top : top + height, left : left + width])
    params = BlurParams(
        name=name,
        source=source_name,
        crop_top=top,
        crop_left=left,
        n_frames=n_frames,
        path_length_px=round(path_length, 3),
        rotation_deg=round(float(np.rad2deg(rotations[-1] - rotations[0])), 4),
        noise_levels=round(noise_levels, 3),
        psnr_blur=round(metrics.psnr(blur, sharp), 3),
        psnr_blur_gamma=round(metrics.psnr(blur_gamma, sharp), 3),
    )
    return blur, blur_gamma, sharp, params


def _pair_names(
    split_sources: Sequence[str], n_pairs: int, source_ids: dict[str, int]
) -> Iterator[tuple[str, str]]:
    """(source name, pair name) per pair: round-robin over the photos, grouped into
    sequence folders ``SYNTH<photo>_<chunk>_00`` of PAIRS_PER_SEQUENCE files."""
    counts = dict.fromkeys(split_sources, 0)
    for index in range(n_pairs):
        source = split_sources[index % len(split_sources)]
        k = counts[source]
        counts[source] += 1
        chunk, frame = divmod(k, PAIRS_PER_SEQUENCE)
        yield source, f"SYNTH{source_ids[source]:04d}_{chunk:02d}_00/{frame + 1:06d}.png"


def _validate_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) for s in size):
        raise ValueError(f"size: expected (height, width) integers, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"size: expected both sides >= {MIN_SIZE}, got {height}x{width}")
    return height, width


def dataset_name(version: int) -> str:
    """Cache folder name of the bundled set of a generator version."""
    return f"synthetic-gopro-v{version}"


def default_pairs(version: int) -> tuple[int, int]:
    """(train, test) default pair counts of a generator version."""
    return (
        (DEFAULT_TRAIN_PAIRS, DEFAULT_TEST_PAIRS)
        if version == 1
        else (V2_TRAIN_PAIRS, V2_TEST_PAIRS)
    )


def _build_v2(
    out: Path,
    train_pairs: int,
    test_pairs: int,
    seed: int,
    size: tuple[int, int],
    workers: int,
    version: int = 2,
) -> None:
    """Version 2 (:mod:`lcnet.scenes`): train pairs alternate dead leaves and photographs,
    test pairs are photographs of the test sources; the manifest comes last."""
    jobs = []
    for split_code, (split, n_pairs) in enumerate((("train", train_pairs), ("test", test_pairs))):
        for index in range(n_pairs):
            kind = "photo" if split == "test" or index % 2 else "dead_leaves"
            chunk, frame = divmod(index, PAIRS_PER_SEQUENCE)
            name = f"SYNTH{2000 + split_code * 100 + chunk:04d}_00_00/{frame + 1:06d}.png"
            jobs.append((split_code, split, index, kind, name))

    def run(job: tuple[int, str, int, str, str]) -> tuple[str, dict]:
        split_code, split, index, kind, name = job
        # Each pair's draw depends only on (seed, split, index, version). Version 3 changes
        # the training split only: its test split is version 2's, byte for byte.
        drawn = 2 if split == "test" else version
        rng = np.random.default_rng([seed, split_code, index, drawn])
        blur, blur_gamma, sharp, draw = scenes.make_pair(rng, size, split, kind, drawn)
        sequence, file = name.split("/")
        for folder, image in (("blur", blur), ("blur_gamma", blur_gamma), (SHARP_DIR, sharp)):
            write_png(out / split / sequence / folder / file, image, PNG_COMPRESS_LEVEL)
        record = {"name": name, **asdict(draw)}
        record["psnr_blur"] = round(metrics.psnr(blur, sharp), 3)
        record["psnr_blur_gamma"] = round(metrics.psnr(blur_gamma, sharp), 3)
        return split, record

    # torch's own threads would compete with the pool's.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, jobs))
    finally:
        torch.set_num_threads(threads)
    manifest: dict = {
        "generator": "lcnet.synth",
        "format_version": version,
        "seed": seed,
        "size": list(size),
        "pairs": {"train": train_pairs, "test": test_pairs},
        "sources": {
            "train": list(scenes.TRAIN_PHOTOS) + list(scenes.TRAIN_TEXTURES),
            "test": list(scenes.TEST_PHOTOS),
        },
        "source_folder": "skimage/data",
        "scenes": {"train": "dead leaves and photographs, alternating", "test": "photographs"},
        "blur_model": {
            "frames": [scenes.MIN_FRAMES, scenes.MAX_FRAMES],
            "camera_path_px": [scenes.MIN_PATH_PX, scenes.MAX_PATH_PX],
            "max_rotation_deg": scenes.MAX_ROTATION_DEG,
            "objects": [0, scenes.MAX_OBJECTS],
            "object_path_px": [scenes.MIN_OBJECT_PATH_PX, scenes.MAX_OBJECT_PATH_PX],
            "noise_levels_uint8": [scenes.MIN_NOISE_LEVELS, scenes.MAX_NOISE_LEVELS],
            "gamma": scenes.GAMMA,
        },
        "mean_psnr": {},
        "images": {},
    }
    if version == 4:
        manifest["blur_model"].update(
            {
                "still_camera": scenes.V4_STILL_CAMERA,
                "short_path": scenes.V4_SHORT_PATH,
                "camera_path_px": [
                    0.0,
                    *scenes.V4_SHORT_PATH_PX,
                    scenes.MIN_PATH_PX,
                    scenes.MAX_PATH_PX,
                ],
                "frames": [
                    scenes.MIN_FRAMES,
                    scenes.V3_MAX_FRAMES if scenes.V4_ONE_FRAME_PER_PX else scenes.MAX_FRAMES,
                ],
                "one_frame_per_px": scenes.V4_ONE_FRAME_PER_PX,
                "noise_levels_uint8": [scenes.V4_MIN_NOISE_LEVELS, scenes.V4_MAX_NOISE_LEVELS],
                "noise": "on the blurry images only",
            }
        )
    if version == 3:
        manifest["blur_model"].update(
            {
                "still_camera": scenes.V3_STILL_CAMERA,
                "camera_path_px": [0.0, scenes.V3_MIN_PATH_PX, scenes.V3_MAX_PATH_PX],
                "frames": [scenes.MIN_FRAMES, scenes.V3_MAX_FRAMES],
                "noise_levels_uint8": [scenes.V3_MIN_NOISE_LEVELS, scenes.V3_MAX_NOISE_LEVELS],
                "noise": "on every frame, the sharp (middle) frame included",
            }
        )
    _summarise(manifest, results, train_pairs, test_pairs)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")


def _summarise(manifest: dict, results: list, train_pairs: int, test_pairs: int) -> None:
    for split, n_pairs in (("train", train_pairs), ("test", test_pairs)):
        records = [record for s, record in results if s == split]
        manifest["images"][split] = records
        manifest["mean_psnr"][split] = {
            key: round(float(np.mean([r[key] for r in records])), 3)
            for key in ("psnr_blur", "psnr_blur_gamma")
        }
        logger.info(
            "synth: %d %s pairs, mean PSNR vs sharp: blur %.2f dB, blur_gamma %.2f dB",
            n_pairs,
            split,
            manifest["mean_psnr"][split]["psnr_blur"],
            manifest["mean_psnr"][split]["psnr_blur_gamma"],
        )


def _build(
    out: Path, train_pairs: int, test_pairs: int, seed: int, size: tuple[int, int], workers: int
) -> None:
    """Version 1: write the whole set into ``out`` (an existing empty folder); the manifest
    comes last."""
    source_ids = {name: i for i, name in enumerate(TRAIN_SOURCES + TEST_SOURCES)}
    manifest: dict = {
        "generator": "lcnet.synth",
        "format_version": 1,
        "seed": seed,
        "size": list(size),
        "pairs": {"train": train_pairs, "test": test_pairs},
        "sources": {"train": list(TRAIN_SOURCES), "test": list(TEST_SOURCES)},
        "source_folder": "skimage/data",
        "blur_model": {
            "frames": [MIN_FRAMES, MAX_FRAMES],
            "path_length_px": [MIN_PATH_PX, MAX_PATH_PX],
            "heading_jitter_rad": HEADING_JITTER_RAD,
            "speed_jitter": SPEED_JITTER,
            "max_rotation_deg": MAX_ROTATION_DEG,
            "noise_levels_uint8": [MIN_NOISE_LEVELS, MAX_NOISE_LEVELS],
            "gamma": GAMMA,
            "blur": "mean of sRGB frames",
            "blur_gamma": "mean of frames in linear light (x**2.2), re-encoded (x**(1/2.2))",
        },
        "mean_psnr": {},
        "images": {},
    }
    jobs = [
        (split_code, split, index, source_name, name)
        for split_code, (split, n_pairs, sources) in enumerate(
            (("train", train_pairs, TRAIN_SOURCES), ("test", test_pairs, TEST_SOURCES))
        )
        for index, (source_name, name) in enumerate(_pair_names(sources, n_pairs, source_ids))
    ]
    photos = {name: _load_source(name) for name in sorted({job[3] for job in jobs})}
    for name, photo in photos.items():
        if photo.shape[0] < size[0] or photo.shape[1] < size[1]:
            raise ValueError(
                f"size: source photo {name} is {photo.shape[0]}x{photo.shape[1]} (HxW), smaller "
                f"than the requested image size {size[0]}x{size[1]}"
            )

    def run(job: tuple[int, str, int, str, str]) -> tuple[str, dict]:
        # Each pair's draw depends only on (seed, split, index): the thread schedule
        # cannot change the output.
        split_code, split, index, source_name, name = job
        blur, blur_gamma, sharp, params = _make_pair(
            photos[source_name], source_name, name, size, [seed, split_code, index]
        )
        sequence, file = name.split("/")
        for folder, image in (("blur", blur), ("blur_gamma", blur_gamma), (SHARP_DIR, sharp)):
            write_png(out / split / sequence / folder / file, image, PNG_COMPRESS_LEVEL)
        return split, asdict(params)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(run, jobs))  # in job order
    _summarise(manifest, results, train_pairs, test_pairs)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")


def make_synthetic_gopro(
    out: str | os.PathLike,
    train_pairs: int | None = None,
    test_pairs: int | None = None,
    seed: int = DEFAULT_SEED,
    size: Sequence[int] = DEFAULT_SIZE,
    overwrite: bool = False,
    workers: int = DEFAULT_WORKERS,
    version: int = DEFAULT_VERSION,
) -> Path:
    """Build a synthetic GOPRO-layout set at ``out`` and return its path.

    Layout: ``out/{train,test}/SYNTH<photo>_<chunk>_00/{blur,blur_gamma,sharp}/NNNNNN.png``
    (uint8 RGB, ``size`` = (height, width)), plus ``out/synth.json`` (seed, sizes, source
    photos per split, blur parameters and PSNR per image). The set is built in a temporary
    sibling folder and renamed into place, so ``out`` is either absent or complete.

    ``workers`` threads generate pairs; the output does not depend on it (each pair's draw
    comes from ``np.random.default_rng([seed, split, index])``, version 2 appends 2).

    ``version`` 1 is the original set (camera shake over 5 photographs; 96 + 16 pairs by
    default), byte-for-byte as before; version 2 (the default) adds dead-leaves scenes,
    photographs at several scales and moving objects (:mod:`lcnet.scenes`; 128 + 24 pairs).
    ``train_pairs`` / ``test_pairs`` default to the version's counts (:func:`default_pairs`).

    Raises ``FileExistsError`` if ``out`` exists and is not empty (unless ``overwrite``), and
    ``ValueError`` for a bad pair count, seed, size (sides >= 16 and no larger than any
    source photo: 300 px high for chelsea.png) or worker count.
    """
    out = Path(out)
    if version not in VERSIONS:
        raise ValueError(f"version: expected one of {VERSIONS}, got {version!r}")
    train_default, test_default = default_pairs(version)
    train_pairs = train_default if train_pairs is None else train_pairs
    test_pairs = test_default if test_pairs is None else test_pairs
    for arg, value in (("train_pairs", train_pairs), ("test_pairs", test_pairs)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{arg}: expected a positive integer, got {value!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    size = _validate_size(size)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    check_new_folder(out, overwrite)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        logger.info(
            "synth: building version %d, %d train + %d test pairs of %dx%d (seed %d) in %s",
            version,
            train_pairs,
            test_pairs,
            *size,
            seed,
            out,
        )
        if version == 1:
            _build(tmp, int(train_pairs), int(test_pairs), int(seed), size, workers)
        else:
            _build_v2(tmp, int(train_pairs), int(test_pairs), int(seed), size, workers, version)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if out.is_dir() and overwrite:
            shutil.rmtree(out)
        os.replace(tmp, out)  # atomic; fails if another process filled ``out`` meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------- CLI
def parse_size(text: str) -> tuple[int, int]:
    """``"256"``, ``"192x256"`` or ``"192,256"`` -> (height, width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size: expected H W, HxW or N, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    return _validate_size(values)


class _SizeAction(argparse.Action):
    """``--size H W``, ``--size HxW`` or ``--size N`` (square)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            if len(values) == 1:
                size = parse_size(values[0])
            elif len(values) == 2:
                size = parse_size("x".join(values))
            else:
                raise ValueError(f"size: expected H W or HxW, got {' '.join(values)!r}")
        except ValueError as error:
            raise argparse.ArgumentError(self, str(error)) from None
        setattr(namespace, self.dest, size)


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``lcnet synth`` options to ``parser`` (returned for chaining)."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (GOPRO layout)")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="lcnet",
        help="lcnet: the training generator (train and test splits); shake: the independent "
        "test generator (lcnet.shake: camera-shake and linear-motion kernels on photographs "
        "no training set uses; a test split only)",
    )
    parser.add_argument(
        "--version",
        type=int,
        choices=VERSIONS,
        default=DEFAULT_VERSION,
        dest="synth_version",
        help=f"generator version (default {DEFAULT_VERSION}; 1 rebuilds synthetic-gopro-v1)",
    )
    parser.add_argument(
        "--train-pairs",
        type=int,
        default=None,
        help=f"training pairs (default {V2_TRAIN_PAIRS}; {DEFAULT_TRAIN_PAIRS} for version 1)",
    )
    parser.add_argument(
        "--test-pairs",
        type=int,
        default=None,
        help=f"test pairs (default {V2_TEST_PAIRS}; {DEFAULT_TEST_PAIRS} for version 1)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument(
        "--size",
        nargs="+",
        action=_SizeAction,
        default=DEFAULT_SIZE,
        metavar="H W|HxW",
        help="image size, height width (default {}x{})".format(*DEFAULT_SIZE),
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists and is not empty"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"threads generating pairs (default {DEFAULT_WORKERS})",
    )
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Run ``lcnet synth`` with parsed ``args``; returns the exit status (0)."""
    if getattr(args, "generator", "lcnet") == "shake":
        return _run_shake(args)
    out = make_synthetic_gopro(
        args.out,
        train_pairs=args.train_pairs,
        test_pairs=args.test_pairs,
        seed=args.seed,
        size=args.size,
        overwrite=args.overwrite,
        workers=getattr(args, "workers", DEFAULT_WORKERS),
        version=getattr(args, "synth_version", DEFAULT_VERSION),
    )
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    for split, psnr in manifest["mean_psnr"].items():
        logger.info(
            "%s: %d pairs, blurry PSNR %.2f dB (blur), %.2f dB (blur_gamma)",
            split,
            manifest["pairs"][split],
            psnr["psnr_blur"],
            psnr["psnr_blur_gamma"],
        )
    logger.info("wrote %s", out)
    return 0


def _run_shake(args: argparse.Namespace) -> int:
    """``lcnet synth --generator shake``: the independent test split (:mod:`lcnet.shake`)."""
    from . import shake  # test-only generator: imported only when asked for

    if args.train_pairs is not None:
        raise ValueError(
            f"--train-pairs {args.train_pairs}: --generator shake writes a test split only"
        )
    if getattr(args, "synth_version", DEFAULT_VERSION) != DEFAULT_VERSION:
        raise ValueError(
            f"--version {args.synth_version}: versions are lcnet's generator's; "
            "--generator shake has one"
        )
    out = shake.make_shake_set(
        args.out,
        pairs=shake.DEFAULT_PAIRS if args.test_pairs is None else args.test_pairs,
        seed=args.seed,
        size=args.size,
        overwrite=args.overwrite,
    )
    logger.info("wrote %s", out)
    return 0
