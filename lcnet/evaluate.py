"""Evaluation as in Table 1 of the paper.

:func:`evaluate` runs a checkpoint over a GOPRO-layout split and reports per image PSNR and
SSIM (:mod:`lcnet.metrics`), the blurry input's own PSNR / SSIM as a baseline, the model's
parameter count and size, and its runtime per image after a warm-up.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LCNetError, check_int
from .inference import check_tile, load_model, read_user_image, resolve_overlap, run_timed
from .io import ImagePair, check_output_folder, list_pairs, write_json, write_png
from .metrics import SSIM_MIN_SIZE, psnr, ssim, ssim_matlab
from .runtime import data_root, describe_device, resolve_device

__all__ = [
    "EvalConfig",
    "PAPER_ROWS",
    "SSIM_VARIANTS",
    "evaluate",
    "evaluate_pairs",
    "format_table",
]

WARMUP_RUNS = 2
#: --sharp-identity: an output equal to its sharp input has infinite PSNR; the mean counts
#: such an image as this many dB (the PSNR of one grey level off on 1 pixel in 10^5).
IDENTITY_PSNR_CAP_DB = 100.0
STRIP_GAP = 4  # white pixels between the panels of a comparison strip

#: Table 1 of the paper: (method, PSNR, SSIM, size in MiB or None, runtime as printed).
PAPER_ROWS: tuple[tuple[str, float, float, float | None, str], ...] = (
    ("Kim et al.", 23.64, 0.8239, None, "1h"),
    ("Sun et al.", 24.64, 0.8429, 51.5, "20min"),
    ("Nah et al.", 29.08, 0.9135, 289.5, "3.1s"),
    ("LCNet (paper)", 28.69, 0.9204, 2.7, "0.02s"),
)
PAPER_NOTE = (
    "Paper rows: GOPRO test set (1111 pairs, 1280x720), SSIM from MATLAB, GTX 1080 Ti.\n"
    "SSIM (MATLAB 3-D): MATLAB's ssim on the RGB volume, the paper's convention: compare these.\n"
    "SSIM (skimage): scikit-image, per channel, averaged (lower: by 0.01-0.02 on good results)."
)
#: What each SSIM key of results.json means (docs/DESIGN.md, "Metric conventions").
SSIM_VARIANTS = {
    "ssim_matlab": "MATLAB ssim(A, ref) on uint8 RGB: one HxWx3 volume, 11x11x11 Gaussian "
    "window sigma 1.5, replicated borders, mean of the whole map (the paper's Table 1)",
    "ssim": "scikit-image structural_similarity: Gaussian window sigma 1.5 per RGB channel, "
    "channels averaged, 5-pixel borders cropped",
}


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
        blur, sharp = read_user_image(Path(pair.blur)), read_user_image(Path(pair.sharp))
        if blur.shape != sharp.shape:
            raise LCNetError(
                f"{pair.blur} is {blur.shape[1]}x{blur.shape[0]} but {pair.sharp} is "
                f"{sharp.shape[1]}x{sharp.shape[0]}"
            )
        if min(blur.shape[:2]) < SSIM_MIN_SIZE:
            raise LCNetError(
                f"{pair.blur} is {blur.shape[1]}x{blur.shape[0]}: SSIM needs images of at least "
                f"{SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels (its Gaussian window)"
            )
        if warmup and index == 0:  # first calls pay for allocation and kernel selection
            for _ in range(WARMUP_RUNS):
                run_timed(model, blur, device, tile, overlap)
        deblurred, seconds = run_timed(model, blur, device, tile, overlap)
        records.append(
            {
                "name": pair.name,
                "psnr": psnr(deblurred, sharp),
                "ssim": ssim(deblurred, sharp),
                "ssim_matlab": ssim_matlab(deblurred, sharp),
                "blurry_psnr": psnr(blur, sharp),
                "blurry_ssim": ssim(blur, sharp),
                "blurry_ssim_matlab": ssim_matlab(blur, sharp),
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
    sharp_identity: bool = False  # feed the sharp images in: how much does it change them?


def _trained_blur_dir(ckpt: dict[str, Any]) -> str:
    train_args = ckpt.get("train_args")
    blur_dir = train_args.get("blur_dir") if isinstance(train_args, dict) else None
    return blur_dir if blur_dir in ("blur", "blur_gamma") else "blur"


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes ``cfg.out`` atomically when given.

    Returns ``{"summary": {...}, "images": [{...}, ...]}`` (the results.json content).
    """
    check_tile(cfg.tile, cfg.tile_overlap)
    check_int("--limit", cfg.limit, 1, optional=True)
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        check_output_folder(out.parent, "--out")
        if out.is_dir():
            raise LCNetError(f"--out {out} is a folder; give the path of a .json file")
        if out.exists() and not cfg.overwrite:
            raise LCNetError(f"--out {out} already exists; pass --overwrite to replace it")
    save_dir = Path(cfg.save_images) if cfg.save_images else None
    if save_dir is not None:
        check_output_folder(save_dir, "--save-images")
        if save_dir.is_dir() and any(save_dir.iterdir()) and not cfg.overwrite:
            raise LCNetError(
                f"--save-images {save_dir} already exists and is not empty; "
                "pass --overwrite to write into it"
            )
    device = resolve_device(cfg.device)
    model, ckpt = load_model(cfg.checkpoint, device, cfg.lc_backend)
    blur_dir = cfg.blur_dir or _trained_blur_dir(ckpt)
    root = data_root(cfg.data)
    try:
        pairs = list_pairs(root, cfg.split, blur_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise LCNetError(f"--data {root}: {exc}") from exc
    pairs = pairs[: cfg.limit] if cfg.limit else pairs
    if cfg.sharp_identity:  # the sharp image is the input and the reference
        pairs = [ImagePair(p.name, p.sharp, p.sharp) for p in pairs]
    images = evaluate_pairs(
        model, pairs, device, cfg.tile, save_dir, warmup=True, overlap=cfg.tile_overlap
    )

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in images]))

    sizes = sorted({(r["width"], r["height"]) for r in images})
    summary = {
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "ssim_matlab": mean("ssim_matlab"),
        "blurry_psnr": mean("blurry_psnr"),
        "blurry_ssim": mean("blurry_ssim"),
        "blurry_ssim_matlab": mean("blurry_ssim_matlab"),
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
        "tile_overlap": resolve_overlap(cfg.tile, cfg.tile_overlap),
        "lc_backend": model.config.lc_backend,
        "model_config": model.config.to_dict(),
        "ssim_variants": SSIM_VARIANTS,
        "torch": str(torch.__version__),
    }
    gains = [r["psnr"] - r["blurry_psnr"] for r in images]
    summary["improved"] = sum(g > 0 for g in gains)
    summary["gain_db"] = float(np.mean(gains)) if not cfg.sharp_identity else None
    summary["sharp_identity"] = cfg.sharp_identity
    if cfg.sharp_identity:
        capped = [min(r["psnr"], IDENTITY_PSNR_CAP_DB) for r in images]
        summary["psnr"] = float(np.mean(capped))
        summary["psnr_min"] = float(min(capped))
        summary["identity_psnr_cap_db"] = IDENTITY_PSNR_CAP_DB
    results = {"summary": summary, "images": images}
    if out is not None:
        write_json(out, results)
    return results


def _format_runtime(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 60 else f"{seconds / 60:.1f}min"


def format_table(results: dict[str, Any]) -> str:
    """Table 1 of the paper with this run's rows added; the paper's SSIM column came from
    MATLAB, so it stands in the "SSIM (MATLAB 3-D)" column beside ours of that convention."""
    s = results["summary"]
    if s.get("sharp_identity"):
        return (
            f"Sharp images in ({s['images']} {s['split']} image(s) of {s['data']}): output vs "
            f"input PSNR mean {s['psnr']:.2f} dB (each capped at {s['identity_psnr_cap_db']:.0f}), "
            f"lowest {s['psnr_min']:.2f} dB; SSIM (MATLAB 3-D) {s['ssim_matlab']:.4f}, "
            f"SSIM (skimage) {s['ssim']:.4f}."
        )
    rows: list[tuple[str, ...]] = [
        (name, f"{p:.2f}", f"{q:.4f}", "-", "-" if size is None else f"{size:.1f}", runtime)
        for name, p, q, size, runtime in PAPER_ROWS
    ]
    rows.append(
        (
            "Blurry input",
            f"{s['blurry_psnr']:.2f}",
            f"{s['blurry_ssim_matlab']:.4f}",
            f"{s['blurry_ssim']:.4f}",
            "-",
            "-",
        )
    )
    rows.append(
        (
            "This run",
            f"{s['psnr']:.2f}",
            f"{s['ssim_matlab']:.4f}",
            f"{s['ssim']:.4f}",
            f"{s['size_mib']:.1f}",
            _format_runtime(s["runtime_s"]),
        )
    )
    header = ("Methods", "PSNR", "SSIM (MATLAB 3-D)", "SSIM (skimage)", "Size (MiB)", "Runtime")
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
        f"Gain over the blurry input: {s['gain_db']:+.2f} dB, {s['improved']}/{s['images']} "
        "image(s) improved.",
    ]
    return "\n".join(lines)
