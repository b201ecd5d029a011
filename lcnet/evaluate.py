"""Evaluation as in Table 1 of the paper, deblurring of any images, and tiled inference.

* :func:`evaluate` runs a checkpoint over a GOPRO-layout split and reports per image PSNR and
  SSIM (:mod:`lcnet.metrics`), the blurry input's own PSNR / SSIM as a baseline, the model's
  parameter count and size, and its runtime per image after a warm-up.
* :func:`deblur_files` deblurs files or folders of images and writes PNGs of the same size.
* :func:`deblur_tensor` is the inference itself; with ``tile`` it runs on overlapping tiles
  blended by raised-cosine ramps (a partition of unity), so a 1280×720 image fits in little
  memory and the seams do not show.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import list_pairs, read_image, write_png
from .metrics import psnr, ssim, to_uint8
from .model import LCNet
from .train import (
    LCNetError,
    check_backend,
    data_root,
    describe_device,
    load_checkpoint,
    model_from_checkpoint,
    resolve_device,
    write_json,
)

__all__ = [
    "DEFAULT_OVERLAP",
    "DeblurConfig",
    "EvalConfig",
    "PAPER_ROWS",
    "deblur_files",
    "deblur_tensor",
    "evaluate",
    "evaluate_pairs",
    "format_table",
    "tile_spans",
]

DEFAULT_OVERLAP = 32  # pixels shared by neighbouring tiles
MIN_TILE = 16
WARMUP_RUNS = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
STRIP_GAP = 4  # white pixels between the panels of a comparison strip

#: Table 1 of the paper: (method, PSNR, SSIM, size in MiB or None, runtime as printed).
PAPER_ROWS: tuple[tuple[str, float, float, float | None, str], ...] = (
    ("Kim et al.", 23.64, 0.8239, None, "1h"),
    ("Sun et al.", 24.64, 0.8429, 51.5, "20min"),
    ("Nah et al.", 29.08, 0.9135, 289.5, "3.1s"),
    ("LCNet (paper)", 28.69, 0.9204, 2.7, "0.02s"),
)
PAPER_NOTE = (
    "Paper rows: GOPRO test set (1111 pairs, 1280x720), SSIM from MATLAB, GTX 1080 Ti. "
    "This run: SSIM from scikit-image (Gaussian window, sigma 1.5)."
)


# --------------------------------------------------------------------------------------------
# Inference


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


def _overlap(tile: int | None, overlap: int | None) -> int | None:
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
    overlap = _overlap(tile, overlap)
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
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return tensor.unsqueeze(0).to(device).float().div_(255)


def _run_timed(
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


def _read(path: Path) -> np.ndarray:
    """read_image, with every failure turned into a one-line user error naming the file."""
    try:
        return read_image(path)
    except (ValueError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if str(path) not in message:
            message = f"{path}: {message}"
        raise LCNetError(message) from exc


def _strip(*panels: np.ndarray) -> np.ndarray:
    gap = np.full((panels[0].shape[0], STRIP_GAP, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for panel in panels:
        parts += [panel, gap]
    return np.concatenate(parts[:-1], axis=1)


def evaluate_pairs(
    model: torch.nn.Module,
    pairs: Sequence[Any],
    device: torch.device,
    tile: int | None = None,
    save_dir: Path | None = None,
    warmup: bool = False,
    overlap: int | None = None,
) -> list[dict[str, Any]]:
    """Per-pair metrics of ``model`` (already on ``device``) on ImagePairs; see :func:`evaluate`."""
    model.eval()
    records = []
    for index, pair in enumerate(pairs):
        blur, sharp = _read(Path(pair.blur)), _read(Path(pair.sharp))
        if blur.shape != sharp.shape:
            raise LCNetError(
                f"{pair.blur} is {blur.shape[1]}x{blur.shape[0]} but {pair.sharp} is "
                f"{sharp.shape[1]}x{sharp.shape[0]}"
            )
        if warmup and index == 0:  # first calls pay for allocation and kernel selection
            for _ in range(WARMUP_RUNS):
                _run_timed(model, blur, device, tile, overlap)
        deblurred, seconds = _run_timed(model, blur, device, tile, overlap)
        records.append(
            {
                "name": pair.name,
                "psnr": psnr(deblurred, sharp),
                "ssim": ssim(deblurred, sharp),
                "blurry_psnr": psnr(blur, sharp),
                "blurry_ssim": ssim(blur, sharp),
                "runtime_s": seconds,
                "height": int(blur.shape[0]),
                "width": int(blur.shape[1]),
            }
        )
        if save_dir is not None:
            name = Path(pair.name).with_suffix(".png")
            write_png(save_dir / "deblurred" / name, deblurred)
            write_png(save_dir / "strips" / name, _strip(blur, deblurred, sharp))
    return records


# --------------------------------------------------------------------------------------------
# lcnet eval


@dataclass
class EvalConfig:
    """Arguments of ``lcnet eval``."""

    checkpoint: str
    data: str | None = None  # None: the bundled synthetic set
    split: str = "test"
    blur_dir: str | None = None  # None: the one the checkpoint was trained on, else "blur"
    out: str | None = None  # results.json
    save_images: str | None = None
    device: str = "auto"
    tile: int | None = None
    tile_overlap: int | None = None  # None: min(32, tile // 4)
    limit: int | None = None
    lc_backend: str | None = None  # None: the checkpoint's
    overwrite: bool = False


def _check_tile(tile: int | None, overlap: int | None) -> None:
    if tile is not None and tile < MIN_TILE:
        raise LCNetError(f"--tile must be an integer >= {MIN_TILE}, got {tile}")
    if overlap is not None:
        if tile is None:
            raise LCNetError("--tile-overlap needs --tile")
        if not 0 <= 2 * overlap <= tile:
            raise LCNetError(
                f"--tile-overlap must be between 0 and half of --tile {tile}, got {overlap}"
            )


def _load_model(
    checkpoint: str, device: torch.device, lc_backend: str | None
) -> tuple[LCNet, dict[str, Any]]:
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint, lc_backend)
    check_backend(model.config.lc_backend, device)
    return model.to(device).eval(), ckpt


def _trained_blur_dir(ckpt: dict[str, Any]) -> str:
    train_args = ckpt.get("train_args")
    blur_dir = train_args.get("blur_dir") if isinstance(train_args, dict) else None
    return blur_dir if blur_dir in ("blur", "blur_gamma") else "blur"


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes ``cfg.out`` atomically when given.

    Returns ``{"summary": {...}, "images": [{...}, ...]}`` (the results.json content).
    """
    _check_tile(cfg.tile, cfg.tile_overlap)
    if cfg.limit is not None and cfg.limit <= 0:
        raise LCNetError(f"--limit must be a positive integer, got {cfg.limit}")
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        if out.is_dir():
            raise LCNetError(f"--out {out} is a folder; give the path of a .json file")
        if out.exists() and not cfg.overwrite:
            raise LCNetError(f"--out {out} already exists; pass --overwrite to replace it")
    save_dir = Path(cfg.save_images) if cfg.save_images else None
    if save_dir is not None:
        if save_dir.exists() and not save_dir.is_dir():
            raise LCNetError(f"--save-images {save_dir} exists and is not a folder")
        if save_dir.is_dir() and any(save_dir.iterdir()) and not cfg.overwrite:
            raise LCNetError(
                f"--save-images {save_dir} already exists and is not empty; "
                "pass --overwrite to write into it"
            )
    device = resolve_device(cfg.device)
    model, ckpt = _load_model(cfg.checkpoint, device, cfg.lc_backend)
    blur_dir = cfg.blur_dir or _trained_blur_dir(ckpt)
    root = data_root(cfg.data)
    try:
        pairs = list_pairs(root, cfg.split, blur_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise LCNetError(f"--data {root}: {exc}") from exc
    pairs = pairs[: cfg.limit] if cfg.limit else pairs
    images = evaluate_pairs(
        model, pairs, device, cfg.tile, save_dir, warmup=True, overlap=cfg.tile_overlap
    )

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in images]))

    sizes = sorted({(r["width"], r["height"]) for r in images})
    summary = {
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "blurry_psnr": mean("blurry_psnr"),
        "blurry_ssim": mean("blurry_ssim"),
        "params": model.num_parameters(),
        "size_mib": model.size_mib(),
        "runtime_s": mean("runtime_s"),
        "runtime_median_s": float(statistics.median(r["runtime_s"] for r in images)),
        "device": describe_device(device),
        "blur_dir": blur_dir,
        "split": cfg.split,
        "images": len(images),
        "image_sizes": [f"{w}x{h}" for w, h in sizes],
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_step": ckpt.get("step"),
        "data": str(root),
        "tile": cfg.tile,
        "tile_overlap": _overlap(cfg.tile, cfg.tile_overlap),
        "lc_backend": model.config.lc_backend,
        "model_config": model.config.to_dict(),
        "ssim_variant": "scikit-image, Gaussian window sigma 1.5, RGB channels averaged",
        "torch": str(torch.__version__),
    }
    results = {"summary": summary, "images": images}
    if out is not None:
        write_json(out, results)
    return results


def _format_runtime(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 60 else f"{seconds / 60:.1f}min"


def format_table(results: dict[str, Any]) -> str:
    """Table 1 of the paper with this run's rows added."""
    s = results["summary"]
    rows: list[tuple[str, str, str, str, str]] = [
        (name, f"{p:.2f}", f"{q:.4f}", "-" if size is None else f"{size:.1f}", runtime)
        for name, p, q, size, runtime in PAPER_ROWS
    ]
    rows.append(("Blurry input", f"{s['blurry_psnr']:.2f}", f"{s['blurry_ssim']:.4f}", "-", "-"))
    rows.append(
        (
            "This run",
            f"{s['psnr']:.2f}",
            f"{s['ssim']:.4f}",
            f"{s['size_mib']:.1f}",
            _format_runtime(s["runtime_s"]),
        )
    )
    header = ("Methods", "PSNR", "SSIM", "Size (MiB)", "Runtime")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))

    def line(cells: Iterable[str]) -> str:
        cells = list(cells)
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "   ".join([first, *rest])

    lines = [line(header), rule, *(line(r) for r in rows[:4]), rule, *(line(r) for r in rows[4:])]
    lines += [
        rule,
        PAPER_NOTE,
        f"This run: {s['images']} {s['split']} image(s) of {s['data']} ({s['blur_dir']}, "
        f"{', '.join(s['image_sizes'])}), {s['params']} parameters, runtime per image on "
        f"{s['device']}" + (f" with {s['tile']}-px tiles" if s["tile"] else "") + ".",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# lcnet deblur


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
    """Files as given; folders expand to the images directly inside them (sorted)."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
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
    """Deblur every input image into ``cfg.out/<stem>.png``; returns the written paths."""
    _check_tile(cfg.tile, cfg.tile_overlap)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise LCNetError(f"--out {out} exists and is not a folder")
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
    model, _ = _load_model(cfg.checkpoint, device, cfg.lc_backend)
    written = []
    for target, path in targets.items():
        image = _read(path)
        deblurred, _ = _run_timed(model, image, device, cfg.tile, cfg.tile_overlap)
        write_png(target, deblurred)
        written.append(target)
    return written
