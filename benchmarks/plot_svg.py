"""The figure of ``bench_lcblock.py --plot PATH.svg``: median times per shape, one series per
implementation, log scale, written as plain SVG text (no plotting library).

Two panels share the layout: the forward (under ``torch.no_grad``) and the forward + backward.
The x axis lists the shapes of the run (with the input layout when the run timed more than one);
the y axis is milliseconds on a log scale. A measurement that is n/a or skipped has no marker,
and the line of its implementation breaks there. Each series is an SVG group
``<g class="series" data-impl="NAME" data-panel="fwd|fwd_bwd">`` so that a test (or a reader
with a text editor) finds them.

It also redraws a saved run: ``python benchmarks/plot_svg.py results.json out.svg`` with the
file ``bench_lcblock.py --json`` wrote.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

__all__ = ["PANELS", "render_svg", "write_svg"]

#: (time field of a row, panel title)
PANELS = (("fwd_ms", "forward (no_grad)"), ("fwd_bwd_ms", "forward + backward"))
COLOURS = {
    "fused": "#d62728",
    "unfold": "#1f77b4",
    "shifted": "#2ca02c",
    "flex": "#9467bd",
}
FALLBACK_COLOURS = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
PANEL_W, PANEL_H = 460, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 56, 110
LEGEND_H = 28
FONT = "font-family='DejaVu Sans, Arial, sans-serif'"


def _fmt_ms(value: float) -> str:
    if value >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values on [lo, hi]: 1, 2, 5 times powers of ten when the range is a few decades,
    powers of ten only when it is wider."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1, 2, 5) if last - first <= 4 else (1,)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in steps]
    return [t for t in ticks if lo <= t <= hi]


def _category(row: Mapping[str, object], several_formats: bool) -> str:
    label = str(row["shape"])
    if several_formats:
        label += " NHWC" if row.get("memory_format") == "channels_last" else " NCHW"
    return label


def render_svg(rows: Sequence[Mapping[str, object]], env: Mapping[str, object]) -> str:
    """The SVG document for the rows (dicts with the fields of ``bench_lcblock.Row``)."""
    if not rows:
        raise ValueError("plot: no benchmark rows to draw")
    several_formats = len({r.get("memory_format", "contiguous") for r in rows}) > 1
    categories = list(dict.fromkeys(_category(r, several_formats) for r in rows))
    impls = list(dict.fromkeys(str(r["impl"]) for r in rows))
    colour = {
        impl: COLOURS.get(impl, FALLBACK_COLOURS[i % len(FALLBACK_COLOURS)])
        for i, impl in enumerate(impls)
    }
    values = [
        float(r[f])
        for r in rows
        for f, _ in PANELS
        if isinstance(r.get(f), (int, float)) and float(r[f]) > 0
    ]
    if values:
        lo = 10 ** math.floor(math.log10(min(values)))
        hi = 10 ** math.ceil(math.log10(max(values)))
        if lo == hi:
            hi = lo * 10
    else:  # nothing measured: draw empty axes
        lo, hi = 0.1, 1000.0

    width = MARGIN_L + len(PANELS) * (PANEL_W + MARGIN_L) + MARGIN_R
    height = MARGIN_T + PANEL_H + MARGIN_B + LEGEND_H
    out: list[str] = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {FONT} font-size='11'>",
        f"<rect width='{width}' height='{height}' fill='white'/>",
    ]
    title = (
        f"local_correlation: median ms per shape ({env.get('device', '?')}: "
        f"{env.get('device_name', '?')}, {env.get('threads', '?')} thread"
        f"{'' if env.get('threads') == 1 else 's'}, "
        f"{env.get('dtype', '?')}, torch {env.get('torch', '?')}, {env.get('date', '?')})"
    )
    out.append(f"<text x='{MARGIN_L}' y='20' font-size='13'>{escape(title)}</text>")
    out.append(
        f"<text x='{MARGIN_L}' y='38' fill='#555'>log scale; no marker: n/a or skipped "
        "(see the report's footnotes)</text>"
    )

    def y_of(value: float) -> float:
        frac = (math.log10(value) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return MARGIN_T + PANEL_H * (1 - frac)

    step = PANEL_W / max(len(categories), 1)
    for index, (field_name, panel_title) in enumerate(PANELS):
        x0 = MARGIN_L + index * (PANEL_W + MARGIN_L)

        def x_of(cat: int, x0: float = x0) -> float:
            return x0 + step * (cat + 0.5)

        panel_id = field_name.removesuffix("_ms")
        out.append(f"<g class='panel' data-panel='{panel_id}'>")
        out.append(
            f"<text x='{x0 + PANEL_W / 2}' y='{MARGIN_T - 6}' text-anchor='middle' "
            f"font-size='12'>{escape(panel_title)}</text>"
        )
        for tick in _log_ticks(lo, hi):
            y = y_of(tick)
            out.append(
                f"<line x1='{x0}' y1='{y:.1f}' x2='{x0 + PANEL_W}' y2='{y:.1f}' stroke='#e5e5e5'/>"
            )
            out.append(
                f"<text x='{x0 - 4}' y='{y + 4:.1f}' text-anchor='end'>{_fmt_ms(tick)}</text>"
            )
        out.append(
            f"<rect x='{x0}' y='{MARGIN_T}' width='{PANEL_W}' height='{PANEL_H}' "
            "fill='none' stroke='#333'/>"
        )
        out.append(
            f"<text transform='translate({x0 - 44},{MARGIN_T + PANEL_H / 2}) rotate(-90)' "
            "text-anchor='middle'>ms</text>"
        )
        for cat, label in enumerate(categories):
            x, y = x_of(cat), MARGIN_T + PANEL_H + 8
            out.append(
                f"<text transform='translate({x:.1f},{y}) rotate(35)' "
                f"text-anchor='start'>{escape(label)}</text>"
            )
        for impl in impls:
            points: dict[int, float] = {}
            for row in rows:
                value = row.get(field_name)
                if row["impl"] == impl and isinstance(value, (int, float)) and value > 0:
                    points[categories.index(_category(row, several_formats))] = float(value)
            out.append(
                f"<g class='series' data-impl={quoteattr(impl)} data-panel='{panel_id}' "
                f"stroke='{colour[impl]}' fill='{colour[impl]}'>"
            )
            run: list[str] = []
            for cat in range(len(categories)):  # one polyline per run of consecutive points
                if cat in points:
                    run.append(f"{x_of(cat):.1f},{y_of(points[cat]):.1f}")
                if (cat not in points or cat == len(categories) - 1) and len(run) > 1:
                    out.append(f"<polyline points='{' '.join(run)}' fill='none'/>")
                if cat not in points:
                    run = []
            for cat, value in sorted(points.items()):
                out.append(
                    f"<circle cx='{x_of(cat):.1f}' cy='{y_of(value):.1f}' r='3.5'>"
                    f"<title>{escape(f'{impl} {categories[cat]}: {value:.3g} ms')}</title>"
                    "</circle>"
                )
            out.append("</g>")
        out.append("</g>")

    legend_y = height - LEGEND_H / 2
    x = MARGIN_L
    out.append("<g class='legend'>")
    for impl in impls:
        out.append(f"<circle cx='{x}' cy='{legend_y - 4}' r='4' fill='{colour[impl]}'/>")
        out.append(f"<text x='{x + 8}' y='{legend_y}'>{escape(impl)}</text>")
        x += 16 + 8 * len(impl) + 24
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(
    rows: Sequence[Mapping[str, object]], env: Mapping[str, object], path: str | Path
) -> Path:
    """Write :func:`render_svg` to ``path`` (its folder must exist)."""
    path = Path(path)
    if path.suffix.lower() != ".svg":
        raise ValueError(f"--plot {path}: expected a file name ending in .svg")
    if not path.parent.is_dir():
        raise ValueError(f"--plot {path}: its folder {path.parent} does not exist")
    path.write_text(render_svg(rows, env))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Redraw a bench_lcblock.py --json file as SVG.")
    parser.add_argument("json", type=Path, help="the file bench_lcblock.py --json wrote")
    parser.add_argument("svg", type=Path, help="the figure to write (.svg)")
    args = parser.parse_args(argv)
    try:
        payload = json.loads(args.json.read_text())
        rows, env = payload["rows"], payload["environment"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        parser.error(f"json {args.json}: not a bench_lcblock.py --json file ({exc})")
    try:
        write_svg(rows, env, args.svg)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
