"""Files: image read/write, atomic writes, the GOPRO folder layout.

Layout (GOPRO_Large, Nah et al. 2017; docs/DESIGN.md, "GOPRO protocol")::

    ROOT/{train,test}/<sequence>/{blur,blur_gamma,sharp}/NNNNNN.png

where the blurry and sharp images of a pair share their file name. Every file this package
writes goes through :func:`atomic_write`: a temporary ``.<name>.*.tmp`` next to the target,
fsync, ``os.replace``, so a crash leaves the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import PIL.Image

from .errors import LCNetError, one_line

__all__ = [
    "BLUR_DIRS",
    "GOPRO_LAYOUT",
    "IMAGE_SUFFIXES",
    "PAIR_SUFFIXES",
    "PNG_COMPRESS_LEVEL",
    "SHARP_DIR",
    "SPLITS",
    "ImagePair",
    "ImageReadError",
    "atomic_write",
    "image_names",
    "is_hidden",
    "list_pairs",
    "check_new_folder",
    "check_output_folder",
    "read_image",
    "remove_stale_temp_files",
    "write_json",
    "write_png",
]

SPLITS = ("train", "test")
BLUR_DIRS = ("blur", "blur_gamma")
SHARP_DIR = "sharp"
GOPRO_LAYOUT = "expected ROOT/{train,test}/SEQUENCE/{blur,blur_gamma,sharp}/*.png"
#: Files of a GOPRO-layout tree that count as images (the data set is PNG only).
PAIR_SUFFIXES = (".png",)
#: Files that ``lcnet deblur`` picks up from a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: zlib level of every PNG written: 1 is about 4x faster to write than 6, files ~10% larger.
PNG_COMPRESS_LEVEL = 1
MAX_COMPRESS_LEVEL = 9
UINT8_MAX = 255
UINT16_TO_UINT8 = 257  # 65535 / 255
RGB = 3
#: Files named in one error message at most.
MAX_LISTED = 5


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded as an RGB image."""


@dataclass(frozen=True)
class ImagePair:
    """One blurry/sharp pair: ``name`` is ``"<sequence>/<file>"``, e.g.
    ``"GOPR0372_07_00/000047.png"``."""

    name: str
    blur: Path
    sharp: Path


def is_hidden(path: Path) -> bool:
    """Dotfiles, including macOS's ``._*`` resource forks: never images of ours."""
    return path.name.startswith(".")


# --------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets one open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write through ``write(fileobj)`` to ``.<name>.*.tmp`` next to ``path``, fsync, rename.

    Parent folders are created. An interrupted write leaves the previous ``path`` untouched
    (and, after SIGKILL, a temporary file that :func:`remove_stale_temp_files` removes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temp_files(folder: Path, names: Iterable[str]) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` files that :func:`atomic_write` left for ``names`` when a
    process was killed mid-write; returns them."""
    removed = []
    if folder.is_dir():
        for name in names:
            for tmp in sorted(folder.glob(f".{name}.*.tmp")):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def check_output_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """Raise a one-line :class:`~lcnet.errors.LCNetError` naming ``what`` (the flag) unless
    ``folder`` exists as a folder, or can be created, and files can be written there.

    Nothing is created: the nearest existing ancestor must be a folder in which a file can be
    created (a temporary one is made and removed), and the missing names must fit the file
    system. Commands call this before any work, so that an unusable output place is reported
    at once, not after the work.
    """
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing):  # False also for a name too long
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == folder else f" ({existing} is a file)"
        raise LCNetError(f"{what} {folder}: not a folder{where}")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        for part in folder.relative_to(existing).parts:
            if len(os.fsencode(part)) > name_max:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), part)
        fd, probe = tempfile.mkstemp(prefix=".lcnet-write-test.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or one_line(exc)
        raise LCNetError(f"{what} {folder}: cannot write there ({reason})") from exc
    return folder


def check_new_folder(out: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` naming ``out`` unless it is absent, an empty folder, or
    ``overwrite`` is given (the data generators' output check, before any work)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out: {out} exists and is not empty (pass overwrite=True)")


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, allow_nan=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------------------------
# Images


#: PIL modes of one channel wider than 8 bits (16-bit PNG / TIFF grey, 32-bit int, float).
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as uint8 HxWx3 RGB, converted the way Pillow converts to ``"RGB"``:
    CMYK and YCbCr are converted (not truncated), palettes expanded, grey repeated, alpha
    dropped (not composited). 16-bit grey is scaled to 8 bits with rounding (x / 257); 16-bit
    RGB PNGs are read by Pillow as their high bytes. Multi-frame files give their first frame;
    the EXIF orientation is not applied (pixels as stored).

    Raises ``FileNotFoundError`` for a missing file and :class:`ImageReadError` (a
    ``ValueError``) naming the path for a file that cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with PIL.Image.open(path) as image:
            image.load()
            if image.mode in _WIDE_GREY_MODES:
                array = _wide_grey_to_uint8(np.asarray(image), image.mode)
            else:
                array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    if array.size == 0:
        raise ImageReadError(f"image {path}: it has no pixels ({array.shape})")
    return np.array(array, order="C")  # a writable copy (Pillow's buffer is read-only)


def _wide_grey_to_uint8(grey: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":  # floating point, taken as [0, 1]
        grey = np.clip(np.rint(np.nan_to_num(grey) * UINT8_MAX), 0, UINT8_MAX)
    else:  # 16-bit range
        grey = np.clip(grey.astype(np.int64), 0, 65535)
        grey = (grey + UINT16_TO_UINT8 // 2) // UINT16_TO_UINT8
    return np.repeat(grey.astype(np.uint8)[:, :, None], RGB, axis=2)


def write_png(
    path: str | os.PathLike, array: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL
) -> Path:
    """Write an HxW or HxWx3 image atomically (:func:`atomic_write`); parent folders are
    created. ``array`` is uint8, or floating point in [0, 1] (clamped and rounded to uint8).
    ``compress_level`` is zlib's 0-9. Returns the path."""
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
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = PIL.Image.fromarray(np.ascontiguousarray(array))
    # Pillow directly (skimage.io.imsave deprecates passing compress_level through).
    return atomic_write(path, lambda f: image.save(f, format="PNG", compress_level=compress_level))


# --------------------------------------------------------------------------------------------
# The GOPRO layout


def _check_choice(arg: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{arg}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def image_names(folder: Path) -> set[str]:
    """Names of the pair images (PAIR_SUFFIXES) in ``folder``, hidden files left out."""
    return {
        p.name
        for p in folder.iterdir()
        if p.suffix.lower() in PAIR_SUFFIXES and not is_hidden(p) and p.is_file()
    }


def list_pairs(
    root: str | os.PathLike, split: str = "train", blur_dir: str = "blur"
) -> list[ImagePair]:
    """All (blur, sharp) pairs of ``root/split``, sorted by name.

    Raises ``ValueError`` for a bad ``split`` / ``blur_dir`` or when no pair is found, and
    ``FileNotFoundError`` naming the path when the root, the split folder, a sequence's
    ``blur_dir`` or ``sharp`` folder is missing, or naming every image without its twin
    (blurry without sharp, sharp without blurry; the first MAX_LISTED).
    """
    _check_choice("split", split, SPLITS)
    _check_choice("blur_dir", blur_dir, BLUR_DIRS)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split folder {split_dir} does not exist (split={split!r})")
    pairs, unpaired = [], []
    sequences = sorted(p for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p))
    for sequence in sequences:
        blur_folder, sharp_folder = sequence / blur_dir, sequence / SHARP_DIR
        for folder in (blur_folder, sharp_folder):
            if not folder.is_dir():
                raise FileNotFoundError(f"sequence {sequence} has no {folder.name}/ folder")
        blurs, sharps = image_names(blur_folder), image_names(sharp_folder)
        for name in sorted(blurs - sharps):
            unpaired.append(
                f"blurry image {blur_folder / name} has no sharp twin {sharp_folder / name}"
            )
        for name in sorted(sharps - blurs):
            unpaired.append(
                f"sharp image {sharp_folder / name} has no blurry twin in {blur_folder}"
            )
        for name in sorted(blurs & sharps):
            pairs.append(
                ImagePair(f"{sequence.name}/{name}", blur_folder / name, sharp_folder / name)
            )
    if unpaired:
        more = f" (and {len(unpaired) - MAX_LISTED} more)" if len(unpaired) > MAX_LISTED else ""
        raise FileNotFoundError("; ".join(unpaired[:MAX_LISTED]) + more)
    if not pairs:
        raise ValueError(f"no image pairs found under {split_dir} (blur_dir={blur_dir!r})")
    return pairs
