"""bench_lcblock.py --plot: an SVG with one series per implementation, drawn from the run."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_lcblock, plot_svg  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def _series(path: Path) -> dict[tuple[str, str], ET.Element]:
    root = ET.parse(path).getroot()  # raises if the file is not well-formed XML
    assert root.tag == f"{SVG}svg"
    found = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "series":
            key = (group.get("data-panel"), group.get("data-impl"))
            assert key not in found, f"two series for {key}"
            found[key] = group
    return found


def _point_ys(group: ET.Element) -> list[float]:
    return [float(c.get("cy")) for c in group.iter(f"{SVG}circle")]


def test_plot_of_a_tiny_run(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a short warm-up: the figure is under test here, not the timings
    monkeypatch.setattr(bench_lcblock.time_ms, "__defaults__", (0.01,))
    out, js = tmp_path / "times.svg", tmp_path / "times.json"
    impls = ["fused", "unfold", "shifted"]
    argv = ["--device", "cpu", "--quick", "--min-run-time", "0.01", "--impl", ",".join(impls)]
    argv += ["--shapes", "1x4x10x12k3,1x4x12x9k5", "--plot", str(out), "--json", str(js)]
    rows = bench_lcblock.main(argv)
    series = _series(out)
    assert sorted(series) == sorted((p, i) for p in ("fwd", "fwd_bwd") for i in impls)
    for (panel, impl), group in series.items():
        # one marker per shape, each titled with the time the report printed
        measured = [r for r in rows if r.impl == impl]
        assert len(_point_ys(group)) == len(measured) == 2
        titles = [c.find(f"{SVG}title").text for c in group.iter(f"{SVG}circle")]
        field = "fwd_ms" if panel == "fwd" else "fwd_bwd_ms"
        assert titles == [f"{impl} {r.shape}: {getattr(r, field):.3g} ms" for r in measured]
    # the redraw from the JSON file gives the same figure, apart from nothing
    again = tmp_path / "again.svg"
    plot_svg.main([str(js), str(again)])
    assert again.read_text() == out.read_text()


def _row(shape: str, impl: str, fwd: float | None, fwd_bwd: float | None, fmt="contiguous"):
    return {
        "shape": shape,
        "impl": impl,
        "memory_format": fmt,
        "fwd_ms": fwd,
        "fwd_bwd_ms": fwd_bwd,
    }


def test_log_scale_order_and_missing_points(tmp_path: Path) -> None:
    rows = [
        _row("a", "fused", 1.0, 3.0),
        _row("a", "flex", 100.0, None),  # no backward on CPU: n/a
        _row("b", "fused", 2.0, 6.0),
        _row("b", "flex", 200.0, None),
    ]
    out = plot_svg.write_svg(rows, {"device": "cpu"}, tmp_path / "f.svg")
    series = _series(out)
    assert sorted(series) == [
        ("fwd", "flex"),
        ("fwd", "fused"),
        ("fwd_bwd", "flex"),
        ("fwd_bwd", "fused"),
    ]
    fused, flex = _point_ys(series[("fwd", "fused")]), _point_ys(series[("fwd", "flex")])
    # SVG y grows downwards: 100x slower is higher, by two decades of the log axis
    assert all(s < f for s, f in zip(flex, fused, strict=True))
    decade = (fused[0] - flex[0]) / 2
    assert fused[0] - fused[1] == pytest.approx(decade * 0.30103, abs=0.15)  # log10(2)
    assert _point_ys(series[("fwd_bwd", "flex")]) == []  # n/a: no marker


def test_layouts_are_separate_categories(tmp_path: Path) -> None:
    rows = [_row("a", "fused", 1.0, 2.0), _row("a", "fused", 1.5, 2.5, "channels_last")]
    text = plot_svg.render_svg(rows, {})
    assert ">a NCHW<" in text and ">a NHWC<" in text


@pytest.mark.parametrize(
    ("name", "fragment"), [("t.png", "ending in .svg"), ("nodir/t.svg", "does not exist")]
)
def test_bad_plot_path_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, fragment: str
) -> None:
    with pytest.raises(SystemExit):
        bench_lcblock.parse_args(["--plot", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert "--plot" in err and fragment in err


def test_redraw_of_a_file_that_is_not_a_run(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit):
        plot_svg.main([str(bad), str(tmp_path / "x.svg")])
