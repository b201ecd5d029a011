"""``lcnet plot RUN_DIR``: the training curve of a run (loss, validation PSNR, learning rate)
from its ``metrics.jsonl``, drawn to a PNG with Pillow (no plotting library needed).

Three panels share the step axis: training loss (log scale), validation PSNR in dB (when the
run validated) and the learning rate. Lines of other kinds in metrics.jsonl are ignored, and so
are lines that are not JSON (a run killed while writing one).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

__all__ = ["PlotError", "plot_run", "read_metrics"]

METRICS_NAME = "metrics.jsonl"
DEFAULT_NAME = "curve.png"
PANEL_W, PANEL_H = 640, 180
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 20, 26, 30
BACKGROUND, AXIS, GRID = (255, 255, 255), (60, 60, 60), (225, 225, 225)
COLOURS = {"loss": (31, 119, 180), "val_psnr": (214, 39, 40), "lr": (44, 160, 44)}
TICKS = 5


class PlotError(ValueError):
    """A run folder without usable metrics (the command line prints it as one line)."""


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The JSON records of ``RUN_DIR/metrics.jsonl``; unparsable lines are skipped."""
    path = Path(run_dir) / METRICS_NAME
    if not Path(run_dir).is_dir():
        raise PlotError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise PlotError(f"{path} does not exist (is {run_dir} a training run folder?)")
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _series(records: Sequence[dict], kind: str, key: str) -> list[tuple[float, float]]:
    points = []
    for r in records:
        if r.get("kind") != kind:
            continue
        step, value = r.get("step"), r.get(key)
        if isinstance(step, (int, float)) and isinstance(value, (int, float)):
            if math.isfinite(value):
                points.append((float(step), float(value)))
    return points


def _label(value: float, spacing: float) -> str:
    """A tick label with as many decimals as the tick spacing needs."""
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    decimals = max(0, 1 - math.floor(math.log(spacing, 10))) if spacing > 0 else 3
    return f"{value:.{min(decimals, 6)}f}"


def _panel(
    draw: PIL.ImageDraw.ImageDraw,
    top: int,
    title: str,
    points: list[tuple[float, float]],
    colour: tuple[int, int, int],
    x_range: tuple[float, float],
    log_y: bool,
    font: PIL.ImageFont.ImageFont,
) -> None:
    left, right = MARGIN_L, PANEL_W - MARGIN_R
    y_top, y_bottom = top + MARGIN_T, top + PANEL_H - MARGIN_B
    draw.text((left, top + 6), title, fill=AXIS, font=font)
    draw.rectangle((left, y_top, right, y_bottom), outline=AXIS)
    if not points:
        draw.text((left + 10, (y_top + y_bottom) // 2), "no data", fill=AXIS, font=font)
        return
    ys = [math.log(v, 10) if log_y else v for _, v in points if (v > 0 or not log_y)]
    pts = [(s, math.log(v, 10) if log_y else v) for s, v in points if (v > 0 or not log_y)]
    if not pts:
        return
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0) * 0.1, hi + 0.5 * (abs(hi) or 1.0) * 0.1
    x0, x1 = x_range

    def to_px(s: float, v: float) -> tuple[float, float]:
        px = left + (s - x0) / max(x1 - x0, 1e-12) * (right - left)
        py = y_bottom - (v - lo) / (hi - lo) * (y_bottom - y_top)
        return px, py

    for i in range(TICKS + 1):
        v = lo + (hi - lo) * i / TICKS
        _, py = to_px(x0, v)
        draw.line((left, py, right, py), fill=GRID)
        value = 10**v if log_y else v
        spacing = abs(value - (10 ** (v - (hi - lo) / TICKS) if log_y else v - (hi - lo) / TICKS))
        draw.text((4, py - 6), _label(value, spacing), fill=AXIS, font=font)
    for i in range(TICKS + 1):
        s = x0 + (x1 - x0) * i / TICKS
        px, _ = to_px(s, lo)
        draw.line((px, y_bottom, px, y_bottom + 4), fill=AXIS)
        draw.text((px - 10, y_bottom + 6), f"{s:.0f}", fill=AXIS, font=font)
    xy = [to_px(s, v) for s, v in pts]
    if len(xy) == 1:
        px, py = xy[0]
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
    else:
        draw.line(xy, fill=colour, width=2)
        if len(xy) <= 40:
            for px, py in xy:
                draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw ``RUN_DIR/metrics.jsonl`` to ``out`` (default ``RUN_DIR/curve.png``); returns the
    path. Raises :class:`PlotError` when the folder has no metrics or no training records."""
    records = read_metrics(run_dir)
    loss = _series(records, "train", "loss")
    if not loss:
        raise PlotError(f"{Path(run_dir) / METRICS_NAME} holds no training records to plot")
    val = _series(records, "val", "val_psnr")
    lr = _series(records, "train", "lr")
    steps = [s for s, _ in loss + val]
    x_range = (0.0, max(steps))
    panels = [("training loss (log scale)", loss, COLOURS["loss"], True)]
    if val:
        panels.append(("validation PSNR (dB)", val, COLOURS["val_psnr"], False))
    panels.append(("learning rate", lr, COLOURS["lr"], False))
    image = PIL.Image.new("RGB", (PANEL_W, PANEL_H * len(panels) + 16), BACKGROUND)
    draw = PIL.ImageDraw.Draw(image)
    font = PIL.ImageFont.load_default()
    for i, (title, points, colour, log_y) in enumerate(panels):
        _panel(draw, i * PANEL_H, title, points, colour, x_range, log_y, font)
    draw.text((PANEL_W // 2 - 15, PANEL_H * len(panels)), "step", fill=AXIS, font=font)
    path = Path(out) if out is not None else Path(run_dir) / DEFAULT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path
