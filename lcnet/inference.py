"""Inference: a model on tensors (whole or tiled), and ``lcnet deblur`` on image files.

:func:`deblur_tensor` is the inference itself; with ``tile`` it runs on overlapping tiles
blended by raised-cosine ramps (a partition of unity), so a 1280x720 image fits in little
memory and the seams do not show. :func:`deblur_files` deblurs files or folders of images and
writes PNGs of the same size.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint, model_from_checkpoint, non_finite_parameters
from .errors import LCNetError, one_line
from .io import IMAGE_SUFFIXES, check_output_folder, is_hidden, read_image, write_png
from .metrics import to_uint8
from .model import LCNet
from .runtime import check_backend, resolve_device

__all__ = [
    "DEFAULT_OVERLAP",
    "MIN_TILE",
    "DeblurConfig",
    "check_tile",
    "collect_inputs",
    "deblur_files",
    "deblur_tensor",
    "load_model",
    "read_user_image",
    "resolve_overlap",
    "run_timed",
    "tile_spans",
]

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 32  # pixels shared by neighbouring tiles
MIN_TILE = 16


def tile_spans(size: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of tiles that cover ``range(size)``, neighbours sharing >= ``overlap``.

    Starts are multiples of ``align``: a network that downsamples by ``align`` then sees every
    tile on the same pixel grid as the whole image. Tiles are ``tile`` long except the last,
    which runs to the end (at most ``align - 1`` longer).
    """
    if size <= tile:
        return [(0, size)]
    stride = max(align, (tile - overlap) // align * align)
    last = (size - tile) // align * align
    if last == 0:  # longer than the tile by less than the grid step: one tile
        return [(0, size)]
    count = math.ceil(last / stride) + 1  # fewest tiles whose starts are <= stride apart
    # Evenly spread, rounded down to the grid: consecutive starts stay <= stride apart.
    starts = [i * last // (count - 1) // align * align for i in range(count)]
    return [(a, a + tile) for a in starts[:-1]] + [(last, size)]


def _ramp(length: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1-D blending weights of a tile, on the sides that meet a neighbour (``fade_in``: the
    start, ``fade_out``: the end): over the ``overlap`` shared pixels, 0 for the outer quarter
    (pixels that the tile's own border padding spoils), a raised-cosine ramp over the middle
    half, 1 for the inner quarter. The ramps of two tiles that meet sum to exactly 1."""
    weights = torch.ones(length)
    n = min(overlap, length)
    margin = n // 4
    core = n - 2 * margin
    if n > 0:
        ramp = torch.zeros(n)
        ramp[margin:] = 1
        ramp[margin : margin + core] = 0.5 - 0.5 * torch.cos(
            math.pi * torch.arange(1, core + 1) / (core + 1)
        )
        if fade_in:
            weights[:n] = torch.minimum(weights[:n], ramp)
        if fade_out:
            weights[-n:] = torch.minimum(weights[-n:], ramp.flip(0))
    return weights


def resolve_overlap(tile: int | None, overlap: int | None) -> int | None:
    if tile is None:
        return None
    return min(DEFAULT_OVERLAP, tile // 4) if overlap is None else overlap


@torch.no_grad()
def deblur_tensor(
    model: torch.nn.Module,
    x: torch.Tensor,
    tile: int | None = None,
    overlap: int | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``x`` (B×3×H×W in [0, 1]) and clamp to [0, 1].

    With ``tile``, the image is processed in ``tile``×``tile`` pieces overlapping by ``overlap``
    pixels (default: min(32, tile // 4)) and blended with smooth weights. Tiles start on
    multiples of ``model.config.size_multiple``, so each sees the image's own pixel grid; far
    enough from the tile borders (more than the network's reach) the result is the untiled
    one. A tile at least as large as the image gives exactly the untiled result.
    """
    height, width = x.shape[-2:]
    if tile is None or (tile >= height and tile >= width):
        return model(x).clamp_(0, 1)
    if tile < MIN_TILE:
        raise ValueError(f"deblur_tensor: tile must be >= {MIN_TILE}, got {tile}")
    overlap = resolve_overlap(tile, overlap)
    if not 0 <= 2 * overlap <= tile:
        raise ValueError(f"deblur_tensor: overlap must be in [0, tile/2], got {overlap}")
    align = getattr(getattr(model, "config", None), "size_multiple", 1)
    out = torch.zeros_like(x, dtype=torch.float32)
    total = torch.zeros((1, 1, height, width), dtype=torch.float32, device=x.device)
    for top, bottom in tile_spans(height, tile, overlap, align):
        wy = _ramp(bottom - top, overlap, top > 0, bottom < height)
        for left, right in tile_spans(width, tile, overlap, align):
            wx = _ramp(right - left, overlap, left > 0, right < width)
            window = torch.outer(wy, wx).to(x.device)
            piece = model(x[..., top:bottom, left:right]).float()
            out[..., top:bottom, left:right] += piece * window
            total[..., top:bottom, left:right] += window
    return (out / total).clamp_(0, 1).to(x.dtype)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 H×W×3 -> float 1×3×H×W in [0, 1] on ``device``."""
    tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)  # writable copy
    tensor = tensor.unsqueeze(0).to(device).float().div_(255)
    return tensor.contiguous(memory_format=torch.channels_last)


def run_timed(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    tile: int | None,
    overlap: int | None = None,
) -> tuple[np.ndarray, float]:
    """Deblur a uint8 image; returns the uint8 result and the seconds the network took."""
    x = _to_tensor(image, device)
    _synchronize(device)
    start = time.perf_counter()
    y = deblur_tensor(model, x, tile, overlap)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return to_uint8(y[0]), seconds


def read_user_image(path: Path) -> np.ndarray:
    """read_image, with every failure turned into a one-line user error naming the file."""
    try:
        return read_image(path)
    except (ValueError, OSError) as exc:
        message = one_line(exc)
        if str(path) not in message:
            message = f"{path}: {message}"
        raise LCNetError(message) from exc


def check_tile(tile: int | None, overlap: int | None) -> None:
    if tile is not None and tile < MIN_TILE:
        raise LCNetError(f"--tile must be an integer >= {MIN_TILE}, got {tile}")
    if overlap is not None:
        if tile is None:
            raise LCNetError("--tile-overlap needs --tile")
        if not 0 <= 2 * overlap <= tile:
            raise LCNetError(
                f"--tile-overlap must be between 0 and half of --tile {tile}, got {overlap}"
            )


def load_model(
    checkpoint: str, device: torch.device, lc_backend: str | None
) -> tuple[LCNet, dict[str, Any]]:
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint, lc_backend)
    bad = non_finite_parameters(model)
    if bad:
        raise LCNetError(
            f"{checkpoint}: its weights are not finite ({', '.join(bad[:3])}): it comes from a "
            "diverged run; train again with a lower --lr or with --recipe quick"
        )
    check_backend(model.config.lc_backend, device)
    # channels_last: same results as NCHW, faster convolutions on CPU and CUDA.
    return model.to(device, memory_format=torch.channels_last).eval(), ckpt


@dataclass
class DeblurConfig:
    """Arguments of ``lcnet deblur``."""

    checkpoint: str
    inputs: Sequence[str]
    out: str
    tile: int | None = None
    tile_overlap: int | None = None
    device: str = "auto"
    lc_backend: str | None = None
    overwrite: bool = False


def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders expand to the images directly inside them (sorted), without
    hidden files (dotfiles, macOS's ``._*`` resource forks)."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p)
            )
            if not found:
                raise LCNetError(f"{path}: no images in this folder ({' '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise LCNetError(f"input not found: {path}")
    if not files:
        raise LCNetError("no input images given")
    return files


def deblur_files(cfg: DeblurConfig) -> list[Path]:
    """Deblur every input image into ``cfg.out/<stem>.png``; returns the written paths.

    Everything that can be checked before the work is (flags, inputs, name clashes, existing
    outputs, that --out can be written). An input that cannot be read does not stop the run:
    the others are still deblurred, and at the end one :class:`LCNetError` counts the bad files,
    each of which was logged as it was met.
    """
    check_tile(cfg.tile, cfg.tile_overlap)
    out = check_output_folder(cfg.out, "--out")
    files = collect_inputs(cfg.inputs)
    targets: dict[Path, Path] = {}
    for path in files:
        target = out / f"{path.stem}.png"
        if target in targets:
            raise LCNetError(f"{targets[target]} and {path} would both be written to {target}")
        if target.exists() and not cfg.overwrite:
            raise LCNetError(f"{target} already exists; pass --overwrite to replace it")
        targets[target] = path
    device = resolve_device(cfg.device)
    model, _ = load_model(cfg.checkpoint, device, cfg.lc_backend)
    written, failed = [], []
    for target, path in targets.items():
        try:
            image = read_user_image(path)
        except LCNetError as exc:
            log.error("skipped: %s", one_line(exc))
            failed.append(path)
            continue
        deblurred, _ = run_timed(model, image, device, cfg.tile, cfg.tile_overlap)
        write_png(target, deblurred)
        written.append(target)
    if failed:
        raise LCNetError(
            f"{len(failed)} of {len(targets)} input(s) could not be read ({failed[0]}"
            f"{', ...' if len(failed) > 1 else ''}; all listed above); the other "
            f"{len(written)} were written to {out}"
        )
    return written
