"""Evaluation as in Table 1 of the paper, on GOPRO, HIDE and RealBlur.

:func:`evaluate` runs a checkpoint over an evaluation set (:mod:`lcnet.layouts`: a GOPRO-layout
split, HIDE's test set or RealBlur-J / -R's) and reports per image PSNR and SSIM, the blurry
input's own PSNR / SSIM as a baseline, the model's parameter count and size, and its runtime
per image after a warm-up. GOPRO and HIDE are scored on the full images (:mod:`lcnet.metrics`,
protocols ``gopro`` and ``hide``); RealBlur with its own protocol (:mod:`lcnet.realblur`:
intensity matching, ECC alignment, PSNR / SSIM over the valid region; ``realblur-ecc``), the
blurry baseline too. docs/evaluation.md describes the layouts and protocols.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LCNetError, check_int
from .inference import check_tile, load_model, read_user_image, resolve_overlap, run_timed
from .io import check_output_folder, write_json, write_png
from .layouts import EvalPair, list_eval_pairs
from .metrics import SSIM_MIN_SIZE, psnr, ssim, ssim_matlab
from .runtime import data_root, describe_device, resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "PAPER_ROWS",
    "PROTOCOL_NOTES",
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

#: What each protocol of results.json's summary "protocol" means (printed under the table).
PROTOCOL_NOTES = {
    "gopro": "GOPRO protocol: per-image PSNR and SSIM of the full images (output vs sharp).",
    "hide": "HIDE, scored as GOPRO: per-image PSNR and SSIM of the full images.",
    "realblur-ecc": "RealBlur protocol (realblur-ecc): output and blurry input intensity-matched "
    "to the sharp image, aligned to it by ECC (homography), PSNR and SSIM over the valid "
    "region (official evaluation_RealBlur_ecc.py); not comparable with GOPRO-protocol numbers.",
}
#: Per-image keys of the realblur-ecc protocol, for the output and (blurry_*) the input.
REALBLUR_KEYS = ("psnr", "ssim", "psnr_unaligned", "warp", "valid_fraction", "ecc_failed")


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
    protocol: str = "gopro",
) -> list[dict[str, Any]]:
    """Per-pair metrics of ``model`` (already on ``device``) on ImagePairs or EvalPairs, scored
    with ``protocol`` (``gopro`` and ``hide``: :mod:`lcnet.metrics`; ``realblur-ecc``:
    :func:`lcnet.realblur.score`); see :func:`evaluate`."""
    if protocol == "realblur-ecc":
        from . import realblur

        realblur.require_cv2()  # before the first image, not after it
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
        record: dict[str, Any] = {"name": pair.name}
        subset = getattr(pair, "subset", None)
        if subset is not None:
            record["subset"] = subset
        if protocol == "realblur-ecc":
            record.update(_realblur_record(pair, deblurred, blur, sharp))
        else:
            record.update(
                {
                    "psnr": psnr(deblurred, sharp),
                    "ssim": ssim(deblurred, sharp),
                    "ssim_matlab": ssim_matlab(deblurred, sharp),
                    "blurry_psnr": psnr(blur, sharp),
                    "blurry_ssim": ssim(blur, sharp),
                    "blurry_ssim_matlab": ssim_matlab(blur, sharp),
                }
            )
        record.update(
            {"runtime_s": seconds, "height": int(blur.shape[0]), "width": int(blur.shape[1])}
        )
        records.append(record)
        if save_dir is not None:
            name = Path(pair.name).with_suffix(".png")
            write_png(save_dir / "deblurred" / name, deblurred)
            write_png(save_dir / "strips" / name, _strip(blur, deblurred, sharp))
    return records


def _realblur_record(
    pair: Any, deblurred: np.ndarray, blur: np.ndarray, sharp: np.ndarray
) -> dict[str, Any]:
    """The realblur-ecc scores of the output and of the blurry input (same protocol)."""
    from . import realblur

    record: dict[str, Any] = {}
    for prefix, image in (("", deblurred), ("blurry_", blur)):
        scores = realblur.score(image, sharp)
        for key in REALBLUR_KEYS:
            record[prefix + key] = scores[key]
        if scores["ecc_failed"]:
            record[prefix + "ecc_error"] = scores["ecc_error"]
            what = "output" if not prefix else "blurry input"
            log.warning(
                "%s: ECC did not converge on the %s (%s); scored with the identity warp",
                pair.name,
                what,
                scores["ecc_error"],
            )
    return record


# --------------------------------------------------------------------------------------------
# lcnet eval


@dataclass
class EvalConfig:
    """Arguments of ``lcnet eval``."""

    checkpoint: str
    data: str | None = None  # None: the bundled synthetic set
    layout: str = "auto"  # one of lcnet.layouts.LAYOUTS
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


def _means(images: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in images])) for k in keys if k in images[0]}


#: Per-image figures whose means the summary (and each subset) reports.
MEAN_KEYS = (
    "psnr",
    "ssim",
    "ssim_matlab",
    "psnr_unaligned",
    "blurry_psnr",
    "blurry_ssim",
    "blurry_ssim_matlab",
    "blurry_psnr_unaligned",
)


def _set_summary(images: list[dict[str, Any]], sharp_identity: bool) -> dict[str, Any]:
    """Means, gain and (realblur-ecc) ECC failures of a set of image records."""
    summary: dict[str, Any] = {"images": len(images), **_means(images, MEAN_KEYS)}
    gains = [r["psnr"] - r["blurry_psnr"] for r in images]
    summary["improved"] = sum(g > 0 for g in gains)
    summary["gain_db"] = float(np.mean(gains)) if not sharp_identity else None
    if "ecc_failed" in images[0]:
        summary["ecc_failures"] = sum(bool(r["ecc_failed"]) for r in images)
        summary["blurry_ecc_failures"] = sum(bool(r["blurry_ecc_failed"]) for r in images)
    if sharp_identity:
        capped = [min(r["psnr"], IDENTITY_PSNR_CAP_DB) for r in images]
        summary["psnr"] = float(np.mean(capped))
        summary["psnr_min"] = float(min(capped))
    return summary


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on an evaluation set; writes ``cfg.out`` atomically when given.

    Returns ``{"summary": {...}, "images": [{...}, ...]}`` (the results.json content). The
    summary's ``protocol`` and ``dataset`` say how the figures were computed; for HIDE and
    RealBlur ``subsets`` holds the same figures per subset.
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
    root = data_root(cfg.data)
    # The data are checked before the model is loaded: a wrong --data fails at once.
    eval_set = list_eval_pairs(root, cfg.layout, cfg.split, cfg.blur_dir or "blur")
    if eval_set.layout != "gopro" and cfg.blur_dir is not None:
        raise LCNetError(
            f"--blur-dir {cfg.blur_dir}: applies to the GOPRO layout only, and --data {root} "
            f"is read as {eval_set.dataset}"
        )
    if eval_set.protocol == "realblur-ecc":
        from .realblur import require_cv2

        require_cv2()
    device = resolve_device(cfg.device)
    model, ckpt = load_model(cfg.checkpoint, device, cfg.lc_backend)
    blur_dir = None
    if eval_set.layout == "gopro":
        blur_dir = cfg.blur_dir or _trained_blur_dir(ckpt)
        if blur_dir != "blur":  # listed with "blur" above
            eval_set = list_eval_pairs(root, "gopro", cfg.split, blur_dir)
    pairs = eval_set.pairs[: cfg.limit] if cfg.limit else eval_set.pairs
    if cfg.sharp_identity:  # the sharp image is the input and the reference
        pairs = [EvalPair(p.name, p.sharp, p.sharp, p.subset) for p in pairs]
    images = evaluate_pairs(
        model,
        pairs,
        device,
        cfg.tile,
        save_dir,
        warmup=True,
        overlap=cfg.tile_overlap,
        protocol=eval_set.protocol,
    )

    sizes = sorted({(r["width"], r["height"]) for r in images})
    whole = _set_summary(images, cfg.sharp_identity)
    summary: dict[str, Any] = {
        "protocol": eval_set.protocol,
        "protocol_note": PROTOCOL_NOTES[eval_set.protocol],
        "dataset": eval_set.dataset,
        "layout": eval_set.layout,
        **{k: whole[k] for k in MEAN_KEYS if k in whole},
        "params": model.num_parameters(),
        "size_mib": model.size_mib(),
        "runtime_s": float(np.mean([r["runtime_s"] for r in images])),
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
    for key in ("improved", "gain_db", "ecc_failures", "blurry_ecc_failures", "psnr_min"):
        if key in whole:
            summary[key] = whole[key]
    if eval_set.protocol == "realblur-ecc":
        summary["ssim_variants"] = {"ssim": REALBLUR_SSIM}
        summary["ecc_fallback"] = ECC_FALLBACK
    if eval_set.subsets:
        summary["subsets"] = {
            name: _set_summary(chosen, cfg.sharp_identity)
            for name in eval_set.subsets
            if (chosen := [r for r in images if r.get("subset") == name])
        }
    summary["sharp_identity"] = cfg.sharp_identity
    if cfg.sharp_identity:
        summary["identity_psnr_cap_db"] = IDENTITY_PSNR_CAP_DB
    results = {"summary": summary, "images": images}
    if out is not None:
        write_json(out, results)
    return results


REALBLUR_SSIM = (
    "RealBlur protocol: scikit-image structural_similarity (Gaussian window sigma 1.5, "
    "population covariance, data range 1) of the aligned output and sharp image in [0, 1], per "
    "RGB channel, the map masked by the valid region, 5-pixel borders cropped, channels averaged"
)
ECC_FALLBACK = (
    "where cv2.findTransformECC raises (no convergence), the image is scored with the identity "
    "warp and its record says ecc_failed (the official script stops instead)"
)


def _format_runtime(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 60 else f"{seconds / 60:.1f}min"


def _render(header: Sequence[str], blocks: Sequence[Sequence[Sequence[str]]]) -> list[str]:
    """Rows in aligned columns (first left, the rest right), a rule between blocks."""
    rows = [r for block in blocks for r in block]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))

    def line(cells: Iterable[str]) -> str:
        cells = list(cells)
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "   ".join([first, *rest])

    lines = [line(header)]
    for block in blocks:
        lines += [rule, *(line(r) for r in block)]
    return [*lines, rule]


def _run_line(s: dict[str, Any]) -> str:
    blur = f"{s['blur_dir']}, " if s.get("blur_dir") else ""
    return (
        f"This run: {s['images']} {s['split']} image(s) of {s['data']} ({blur}"
        f"{', '.join(s['image_sizes'])}), {s['params']} parameters, {s['size_mib']:.1f} MiB, "
        f"runtime per image {_format_runtime(s['runtime_s'])} on {s['device']}"
        + (f" with {s['tile']}-px tiles" if s["tile"] else "")
        + "."
    )


def _format_sets(s: dict[str, Any]) -> str:
    """HIDE / RealBlur: one block per set (whole, then each subset), blurry input and output."""
    realblur = s["protocol"] == "realblur-ecc"
    if realblur:
        header = ("Set", "Images", "Method", "PSNR (aligned)", "SSIM (aligned)", "PSNR (plain)")
        keys = ("psnr", "ssim", "psnr_unaligned")
    else:
        header = ("Set", "Images", "Method", "PSNR", "SSIM (MATLAB 3-D)", "SSIM (skimage)")
        keys = ("psnr", "ssim_matlab", "ssim")
    sets = [("all", s)] + list(s.get("subsets", {}).items())
    if len(sets) == 2 and sets[1][1]["images"] == s["images"]:
        sets = sets[1:]  # one subset only: it is the whole set
    digits = {"psnr": 2, "psnr_unaligned": 2}
    blocks = []
    for name, figures in sets:
        rows = []
        for first, method, prefix in ((True, "Blurry input", "blurry_"), (False, "This run", "")):
            cells = [f"{figures[prefix + k]:.{digits.get(k, 4)}f}" for k in keys]
            lead = (name, str(figures["images"])) if first else ("", "")
            rows.append((*lead, method, *cells))
        blocks.append(rows)
    lines = [
        f"{s['dataset']}, protocol {s['protocol']!r} (--data {s['data']}, layout {s['layout']})",
        *_render(header, blocks),
        s["protocol_note"],
        _run_line(s),
        f"Gain over the blurry input: {s['gain_db']:+.2f} dB, {s['improved']}/{s['images']} "
        "image(s) improved.",
    ]
    if realblur:
        lines.append(
            f"ECC did not converge on {s['ecc_failures']} output(s) and "
            f"{s['blurry_ecc_failures']} blurry input(s) (scored with the identity warp)."
        )
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """GOPRO: Table 1 of the paper with this run's rows added; the paper's SSIM column came
    from MATLAB, so it stands in the "SSIM (MATLAB 3-D)" column beside ours of that convention.
    HIDE and RealBlur: this run and the blurry input per set, labelled with the protocol (the
    paper's rows are GOPRO figures and are not shown)."""
    s = results["summary"]
    protocol = s.get("protocol", "gopro")
    if s.get("sharp_identity"):
        ssims = f"SSIM (skimage) {s['ssim']:.4f}"
        if "ssim_matlab" in s:
            ssims = f"SSIM (MATLAB 3-D) {s['ssim_matlab']:.4f}, " + ssims
        return (
            f"Sharp images in ({s['images']} {s['split']} image(s) of {s['data']}, protocol "
            f"{protocol!r}): output vs input PSNR mean {s['psnr']:.2f} dB (each capped at "
            f"{s['identity_psnr_cap_db']:.0f}), lowest {s['psnr_min']:.2f} dB; {ssims}."
        )
    if protocol != "gopro":
        return _format_sets(s)
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
    lines = _render(header, [rows[:4], rows[4:]])
    lines += [
        PAPER_NOTE,
        PROTOCOL_NOTES["gopro"],
        f"This run: {s['images']} {s['split']} image(s) of {s['data']} ({s['blur_dir']}, "
        f"{', '.join(s['image_sizes'])}), {s['params']} parameters, runtime per image on "
        f"{s['device']}" + (f" with {s['tile']}-px tiles" if s["tile"] else "") + ".",
        f"Gain over the blurry input: {s['gain_db']:+.2f} dB, {s['improved']}/{s['images']} "
        "image(s) improved.",
    ]
    return "\n".join(lines)
