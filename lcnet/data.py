"""GOPRO-layout deblurring data: pair listing, image I/O, the training/evaluation dataset and
the embedded default (synthetic) data set.

Layout (GOPRO_Large, Nah et al. 2017)::

    ROOT/{train,test}/<sequence>/{blur,blur_gamma,sharp}/NNNNNN.png

where the blurry and sharp images of a pair share their file name. Nah et al. report on
``blur_gamma``; most later papers use ``blur``: both are supported via ``blur_dir``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import skimage.io
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "BLUR_DIRS",
    "CACHE_ENV",
    "DEFAULT_DATASET_NAME",
    "SPLITS",
    "GoproDataset",
    "ImagePair",
    "ImageReadError",
    "default_data_root",
    "ensure_default_dataset",
    "list_pairs",
    "read_image",
    "write_png",
]

SPLITS = ("train", "test")
BLUR_DIRS = ("blur", "blur_gamma")
SHARP_DIR = "sharp"
IMAGE_SUFFIXES = (".png",)
#: Environment variable naming the cache folder (default ``~/.cache/lcnet``).
CACHE_ENV = "LCNET_CACHE"
#: Sub-folder of the cache that holds the embedded default set; the suffix is bumped with
#: ``lcnet.synth.FORMAT_VERSION`` so an old set is never mistaken for a new one.
DEFAULT_DATASET_NAME = "synthetic-gopro-v2"
UINT8_MAX = 255
UINT16_TO_UINT8 = 257  # 65535 / 255
RGB = 3
#: zlib level for :func:`write_png` (Pillow's default).
PNG_COMPRESS_LEVEL = 6
MAX_COMPRESS_LEVEL = 9


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded as an RGB image."""


@dataclass(frozen=True)
class ImagePair:
    """One blurry/sharp pair: ``name`` is ``"<sequence>/<file>"``, e.g.
    ``"GOPR0372_07_00/000047.png"``."""

    name: str
    blur: Path
    sharp: Path


def _check_choice(arg: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{arg}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def list_pairs(
    root: str | os.PathLike, split: str = "train", blur_dir: str = "blur"
) -> list[ImagePair]:
    """All (blur, sharp) pairs of ``root/split``, sorted by name.

    Raises ``ValueError`` for a bad ``split`` / ``blur_dir`` or when no pair is found, and
    ``FileNotFoundError`` naming the path when the root, the split folder, a sequence's
    ``blur_dir`` or ``sharp`` folder, or a blurry image's sharp twin is missing.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("blur_dir", blur_dir, BLUR_DIRS)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split folder {split_dir} does not exist (split={split!r})")
    pairs = []
    sequences = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for sequence in sequences:
        blur_folder, sharp_folder = sequence / blur_dir, sequence / SHARP_DIR
        for folder in (blur_folder, sharp_folder):
            if not folder.is_dir():
                raise FileNotFoundError(f"sequence {sequence} has no {folder.name}/ folder")
        for blur in sorted(blur_folder.iterdir()):
            if blur.suffix.lower() not in IMAGE_SUFFIXES or blur.name.startswith("."):
                continue
            sharp = sharp_folder / blur.name
            if not sharp.is_file():
                raise FileNotFoundError(f"blurry image {blur} has no sharp twin {sharp}")
            pairs.append(ImagePair(f"{sequence.name}/{blur.name}", blur, sharp))
    if not pairs:
        raise ValueError(f"no image pairs found under {split_dir} (blur_dir={blur_dir!r})")
    return pairs


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as uint8 HxWx3 RGB: grey is repeated to 3 channels, alpha dropped,
    16-bit scaled to 8-bit.

    Raises ``FileNotFoundError`` for a missing file and :class:`ImageReadError` (a
    ``ValueError``) naming the path for a file that cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        image = np.asarray(skimage.io.imread(path))
    except Exception as error:  # decoders raise anything from OSError to SyntaxError
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or image.size == 0:
        raise ImageReadError(f"image {path}: expected HxW or HxWxC (C<=4), got {image.shape}")
    if image.shape[2] in (1, 2):  # grey (+ alpha)
        image = np.repeat(image[:, :, :1], RGB, axis=2)
    image = image[:, :, :RGB]
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + UINT16_TO_UINT8 // 2) // UINT16_TO_UINT8).astype(
            np.uint8
        )
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * UINT8_MAX
    elif np.issubdtype(image.dtype, np.floating):
        image = np.clip(np.rint(image * UINT8_MAX), 0, UINT8_MAX).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"image {path}: unsupported pixel type {image.dtype}")
    return np.ascontiguousarray(image)


def write_png(
    path: str | os.PathLike, array: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL
) -> Path:
    """Write an HxW or HxWx3 image atomically (temporary file in the same folder, then
    ``os.replace``); parent folders are created. ``array`` is uint8, or floating point in
    [0, 1] (clamped and rounded to uint8). ``compress_level`` is zlib's 0-9 (1 is about 4x
    faster than 6 for ~10% larger files). Returns the path."""
    path = Path(path)
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * UINT8_MAX), 0, UINT8_MAX).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"array: expected uint8 or float in [0, 1], got dtype {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, RGB))):
        raise ValueError(f"array: expected HxW, HxWx1 or HxWx3, got shape {array.shape}")
    if not 0 <= compress_level <= MAX_COMPRESS_LEVEL:
        raise ValueError(f"compress_level: expected 0-9, got {compress_level!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        # Pillow directly (skimage.io.imsave deprecates passing compress_level through).
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        PIL.Image.fromarray(np.ascontiguousarray(array)).save(
            tmp, format="PNG", compress_level=compress_level
        )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> float32 CxHxW in [0, 1]."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(chw).to(torch.float32).div_(UINT8_MAX)


class GoproDataset(Dataset):
    """GOPRO-layout pairs as ``(blur, sharp)`` float32 tensors, 3xHxW, in [0, 1].

    Training (the paper's recipe): a random ``patch_size`` x ``patch_size`` crop, random
    horizontal and vertical flips and a random permutation of the RGB channels, the same draw
    for blur and sharp. ``patch_size=None`` returns full images (evaluation; use
    ``augment=False`` too).

    The draw for item ``index`` comes from ``np.random.default_rng([seed, epoch, index])``
    only, so it does not depend on the order items are fetched, the number of workers or a
    resume; :meth:`set_epoch` selects the epoch.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        blur_dir: str = "blur",
        patch_size: int | None = 200,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if patch_size is not None and (not isinstance(patch_size, int) or patch_size < 1):
            raise ValueError(f"patch_size: expected a positive integer or None, got {patch_size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        self.root = Path(root)
        self.split = split
        self.blur_dir = blur_dir
        self.patch_size = patch_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.pairs = list_pairs(self.root, split, blur_dir)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws :meth:`__getitem__` uses."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        return index % len(self)

    def name(self, index: int) -> str:
        """The pair name ``"<sequence>/<file>"`` of item ``index``."""
        return self.pairs[self._check_index(index)].name

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._check_index(index)
        pair = self.pairs[index]
        blur, sharp = read_image(pair.blur), read_image(pair.sharp)
        if blur.shape != sharp.shape:
            raise ValueError(
                f"pair {pair.name}: blurry image {pair.blur} is {blur.shape[1]}x{blur.shape[0]} "
                f"but sharp image {pair.sharp} is {sharp.shape[1]}x{sharp.shape[0]}"
            )
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.patch_size is not None:
            height, width = blur.shape[:2]
            p = self.patch_size
            if height < p or width < p:
                raise ValueError(
                    f"image {pair.blur} is {width}x{height} (WxH), smaller than patch_size={p}"
                )
            top = int(rng.integers(0, height - p + 1))
            left = int(rng.integers(0, width - p + 1))
            blur = blur[top : top + p, left : left + p]
            sharp = sharp[top : top + p, left : left + p]
        if self.augment:
            flip_h, flip_v = rng.random(2) < 0.5
            order = rng.permutation(RGB)
            blur, sharp = (
                _augment(image, bool(flip_h), bool(flip_v), order) for image in (blur, sharp)
            )
        return _to_tensor(blur), _to_tensor(sharp)


def _augment(image: np.ndarray, flip_h: bool, flip_v: bool, order: np.ndarray) -> np.ndarray:
    if flip_h:
        image = image[:, ::-1]
    if flip_v:
        image = image[::-1]
    return image[:, :, order]


# ------------------------------------------------------------------------- default data
def default_data_root() -> Path:
    """Where the embedded default set lives: ``$LCNET_CACHE/synthetic-gopro-v2``, or
    ``~/.cache/lcnet/synthetic-gopro-v2`` when ``LCNET_CACHE`` is unset."""
    cache = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lcnet"
    return Path(cache).expanduser() / DEFAULT_DATASET_NAME


def ensure_default_dataset(
    root: str | os.PathLike | None = None,
    *,
    train_pairs: int | None = None,
    test_pairs: int | None = None,
    size: Sequence[int] | None = None,
    seed: int | None = None,
) -> Path:
    """Return the root of the default synthetic set, building it first if it is missing.

    ``root`` defaults to :func:`default_data_root`. The set counts as present when its
    manifest (``synth.json``, written last) exists; it is built in a temporary sibling folder
    and renamed into place, so an interrupted or concurrent build never leaves a half set
    that looks complete. The keyword arguments override the ``lcnet.synth`` defaults (tests
    use them for tiny sets); they are not compared with an existing set.
    """
    # Imported here: lcnet.synth imports this module for read_image / write_png.
    from . import synth

    root = Path(root) if root is not None else default_data_root()
    manifest = root / synth.MANIFEST_NAME
    if manifest.is_file():
        logger.debug("default data set found at %s", root)
        return root
    if root.exists():
        leftovers = {p.name for p in root.iterdir()}
        if leftovers - {*SPLITS}:
            raise FileExistsError(
                f"{root} exists without {synth.MANIFEST_NAME} and holds other files "
                f"({', '.join(sorted(leftovers)[:5])}); remove it to rebuild the default set"
            )
        logger.warning("default data set at %s is incomplete; rebuilding it", root)
        shutil.rmtree(root)
    logger.info("building the default synthetic data set at %s (runs once)", root)
    kwargs = {
        "train_pairs": train_pairs,
        "test_pairs": test_pairs,
        "size": synth.DEFAULT_SIZE if size is None else size,
        "seed": synth.DEFAULT_SEED if seed is None else seed,
    }
    try:
        synth.make_synthetic_gopro(root, **kwargs)
    except OSError:
        # Another process finished the same build first: its set is complete, use it.
        if manifest.is_file():
            logger.info("default data set was built concurrently at %s; using it", root)
            return root
        raise
    return root
