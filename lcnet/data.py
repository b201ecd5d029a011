"""GOPRO-layout deblurring data: the training/evaluation dataset (pairs listed and images read
by :mod:`lcnet.io`) and the embedded default (synthetic) data set.

Layout (GOPRO_Large, Nah et al. 2017)::

    ROOT/{train,test}/<sequence>/{blur,blur_gamma,sharp}/NNNNNN.png

where the blurry and sharp images of a pair share their file name. Nah et al. report on
``blur_gamma``; most later papers use ``blur``: both are supported via ``blur_dir``. For
training, ``blur_dir="both"`` draws one of the two per crop (:data:`BOTH_BLUR_DIRS`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import synth
from .io import (
    BLUR_DIRS,
    SPLITS,
    ImagePair,
    ImageReadError,
    list_pairs,
    read_image,
    write_png,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BLUR_DIRS",
    "BOTH_BLUR_DIRS",
    "CACHE_ENV",
    "DEFAULT_DATASET_NAME",
    "SPLITS",
    "TRAIN_BLUR_DIRS",
    "GoproDataset",
    "ImagePair",
    "ImageReadError",
    "default_data_root",
    "ensure_default_dataset",
    "list_pairs",
    "read_image",
    "write_png",
]

#: Environment variable naming the cache folder (default ``~/.cache/lcnet``).
CACHE_ENV = "LCNET_CACHE"
#: Sub-folder of the cache that holds the embedded default set; the suffix is bumped with
#: ``lcnet.synth.FORMAT_VERSION`` so an old set is never mistaken for a new one.
DEFAULT_DATASET_NAME = "synthetic-gopro-v3"
#: Decoded pairs a GoproDataset keeps in memory, per process (the bundled set needs ~60 MB;
#: GOPRO's 2103 training pairs ~11 GB, so only part of it is cached).
DEFAULT_CACHE_BYTES = 1 << 30
UINT8_MAX = 255
RGB = 3
#: ``blur_dir`` of a training set that takes each crop's blurry image from ``blur`` or
#: ``blur_gamma`` (one draw per item and epoch, half and half): the two ways of averaging frames
#: (in sRGB, in linear light). Trained on both, the main job gains as much on its own split
#: (``blur``) and more on an independent generator's ``blur_gamma`` (docs/recipes.md).
BOTH_BLUR_DIRS = "both"
#: What a training set's ``blur_dir`` may be.
TRAIN_BLUR_DIRS = (*BLUR_DIRS, BOTH_BLUR_DIRS)


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
    resume; :meth:`set_epoch` selects the epoch. With ``blur_dir="both"`` the item's blurry image
    is its ``blur`` or its ``blur_gamma`` one, by a draw of ``default_rng([seed, epoch, index,
    1])``, so the crops are the same as with either folder alone.

    Decoded pairs are kept in memory (per process, so once per DataLoader worker) up to
    ``cache_bytes`` (default :data:`DEFAULT_CACHE_BYTES`; 0 disables the cache): a small set
    such as the bundled one is decoded once instead of once per crop. Pairs beyond the budget
    are decoded on every use, as before.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        blur_dir: str = "blur",
        patch_size: int | None = 200,
        augment: bool = True,
        seed: int = 0,
        cache_bytes: int | None = None,
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
        if blur_dir == BOTH_BLUR_DIRS:
            # Both lists hold exactly the sharp images' names (list_pairs names any image
            # without its twin), so item i is the same pair in both.
            self.pairs = list_pairs(self.root, split, "blur")
            self.gamma_pairs: list[ImagePair] | None = list_pairs(self.root, split, "blur_gamma")
        else:
            self.pairs = list_pairs(self.root, split, blur_dir)
            self.gamma_pairs = None
        self.cache_bytes = DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes
        if not isinstance(self.cache_bytes, int) or self.cache_bytes < 0:
            raise ValueError(f"cache_bytes: expected an integer >= 0, got {cache_bytes!r}")
        self._cache: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0

    def _listed(self, gamma: bool) -> list[ImagePair]:
        """The pairs whose blurry image is the ``blur_gamma`` one (``gamma``), else the others."""
        return self.gamma_pairs if gamma and self.gamma_pairs is not None else self.pairs

    def _decoded(self, index: int, gamma: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The pair's uint8 images (its ``blur_gamma`` one with ``gamma``), from the cache when
        they are in it."""
        hit = self._cache.get((index, gamma))
        if hit is not None:
            return hit
        pair = self._listed(gamma)[index]
        blur, sharp = read_image(pair.blur), read_image(pair.sharp)
        size = blur.nbytes + sharp.nbytes
        if self._cached_bytes + size <= self.cache_bytes:
            blur.setflags(write=False)  # crops and flips are views: keep the cache intact
            sharp.setflags(write=False)
            self._cache[(index, gamma)] = (blur, sharp)
            self._cached_bytes += size
        return blur, sharp

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
        gamma = False
        if self.gamma_pairs is not None:  # its own stream: the crop draws stay as without it
            gamma = bool(np.random.default_rng([self.seed, self.epoch, index, 1]).random() < 0.5)
        pair = self._listed(gamma)[index]
        blur, sharp = self._decoded(index, gamma)
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
    """Where the embedded default set lives: ``$LCNET_CACHE/synthetic-gopro-v3``, or
    ``~/.cache/lcnet/synthetic-gopro-v3`` when ``LCNET_CACHE`` is unset."""
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
