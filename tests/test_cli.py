"""Tests of the `lcnet` command line: help, eval (results.json, table, images), deblur (any
size, files and folders), tiled inference, and the user errors of eval and deblur."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.io
import torch

from lcnet.checkpoint import load_checkpoint, model_from_checkpoint
from lcnet.cli import main
from lcnet.evaluate import STRIP_GAP
from lcnet.inference import deblur_tensor, tile_spans
from lcnet.io import read_image
from lcnet.metrics import ssim, ssim_matlab, to_uint8
from lcnet.model import LCNet, LCNetConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # imageio, trying its plugins on a corrupt file, announces a deprecation of its own.
    pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning"),
]
SUMMARY_KEYS = {
    "psnr", "ssim", "blurry_psnr", "blurry_ssim", "params", "size_mib", "runtime_s",
    "device", "blur_dir", "images", "checkpoint", "data",
}  # fmt: skip
IMAGE_KEYS = {"name", "psnr", "ssim", "blurry_psnr", "blurry_ssim", "runtime_s"}


def _error_line(capsys: Any) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected a message on stderr"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def _eval(run: Path, data: Path, *extra: str) -> int:
    args = ["eval", "--data", str(data), "--checkpoint", str(run / "last.pt"), "--device", "cpu"]
    return main([*args, *extra])


# --------------------------------------------------------------------------------------------
# Help


def test_python_dash_m_lcnet_help() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "lcnet", "--help"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for command in ("synth", "train", "eval", "deblur"):
        assert command in done.stdout


@pytest.mark.parametrize("command", ["synth", "train", "eval", "deblur"])
def test_subcommand_help(command: str, capsys: Any) -> None:
    assert main([command, "--help"]) == 0
    assert f"usage: lcnet {command}" in capsys.readouterr().out


def test_no_subcommand_is_a_usage_error(capsys: Any) -> None:
    assert main([]) == 2
    assert "usage: lcnet" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# eval


def test_eval_writes_results_table_and_images(
    tiny_run: Path, tiny_gopro: Path, tmp_path: Path, capsys: Any
) -> None:
    out, images = tmp_path / "results.json", tmp_path / "images"
    assert _eval(tiny_run, tiny_gopro, "--out", str(out), "--save-images", str(images)) == 0

    results = json.loads(out.read_text())
    summary = results["summary"]
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["images"] == len(results["images"]) == 2
    assert summary["blur_dir"] == "blur" and summary["checkpoint"] == str(tiny_run / "last.pt")
    assert summary["device"].startswith("cpu")
    assert summary["params"] > 0 and 0 < summary["size_mib"] < 1
    for record in results["images"]:
        assert IMAGE_KEYS <= record.keys()
        assert record["runtime_s"] > 0 and 0 <= record["ssim"] <= 1
    assert summary["psnr"] == pytest.approx(np.mean([r["psnr"] for r in results["images"]]))

    for record in results["images"]:
        name = Path(record["name"]).with_suffix(".png")
        deblurred = read_image(images / "deblurred" / name)
        sharp = read_image(tiny_gopro / "test" / record["name"].replace("/", "/sharp/"))
        assert record["ssim_matlab"] == pytest.approx(ssim_matlab(deblurred, sharp), abs=1e-12)
        assert record["ssim"] == pytest.approx(ssim(deblurred, sharp), abs=1e-12)
    for key in ("ssim_matlab", "blurry_ssim_matlab"):
        mean = np.mean([r[key] for r in results["images"]])
        assert summary[key] == pytest.approx(mean)
    assert "MATLAB" in summary["ssim_variants"]["ssim_matlab"]
    assert "scikit-image" in summary["ssim_variants"]["ssim"]

    table = capsys.readouterr().out
    lines = table.splitlines()
    header = lines[0].split()
    matlab_col = lines[0].index("SSIM (MATLAB 3-D)")
    skimage_col = lines[0].index("SSIM (skimage)")
    assert "PSNR" in header and matlab_col < skimage_col
    paper = next(line for line in lines if line.startswith("LCNet (paper)"))
    # The paper's 0.9204 (MATLAB) sits in the MATLAB column; its scikit-image cell is empty.
    assert paper.index("0.9204") < skimage_col and paper[skimage_col:].split()[0] == "-"
    for row in ("Kim et al.", "Sun et al.", "Nah et al.", "LCNet (paper)", "Blurry input"):
        assert row in table
    this_run = next(line for line in lines if line.startswith("This run"))
    assert f"{summary['psnr']:.2f}" in this_run and f"{summary['ssim_matlab']:.4f}" in this_run
    assert f"{summary['ssim']:.4f}" in this_run
    assert "GTX 1080 Ti" in table and "MATLAB" in table

    for record in results["images"]:
        name = Path(record["name"]).with_suffix(".png")
        deblurred = read_image(images / "deblurred" / name)
        strip = read_image(images / "strips" / name)
        assert deblurred.shape == (48, 64, 3)
        assert strip.shape == (48, 3 * 64 + 2 * STRIP_GAP, 3)


def test_eval_tiled_limit_and_blur_gamma(tiny_run: Path, tiny_gopro: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    flags = ["--tile", "32", "--limit", "1", "--blur-dir", "blur_gamma", "--out", str(out)]
    assert _eval(tiny_run, tiny_gopro, *flags) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["images"] == 1 and summary["tile"] == 32 and summary["blur_dir"] == "blur_gamma"


def test_eval_never_overwrites_results(
    tiny_run: Path, tiny_gopro: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "results.json"
    out.write_text("precious")
    assert _eval(tiny_run, tiny_gopro, "--out", str(out)) == 2
    assert str(out) in _error_line(capsys) and out.read_text() == "precious"
    assert _eval(tiny_run, tiny_gopro, "--out", str(out), "--overwrite", "--limit", "1") == 0
    assert json.loads(out.read_text())["summary"]["images"] == 1


def test_eval_missing_data(tiny_run: Path, tmp_path: Path, capsys: Any) -> None:
    assert _eval(tiny_run, tmp_path / "nowhere") == 2
    assert str(tmp_path / "nowhere") in _error_line(capsys)


def test_eval_corrupt_test_image(
    tiny_run: Path, tiny_gopro: Path, tmp_path: Path, capsys: Any
) -> None:
    data = tmp_path / "data"
    for src in tiny_gopro.rglob("*"):
        if src.is_file():
            (data / src.relative_to(tiny_gopro)).parent.mkdir(parents=True, exist_ok=True)
            (data / src.relative_to(tiny_gopro)).write_bytes(src.read_bytes())
    victim = sorted((data / "test").glob("*/blur/*.png"))[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))  # a PNG header, then noise
    assert _eval(tiny_run, data) == 2
    assert str(victim) in _error_line(capsys)


# --------------------------------------------------------------------------------------------
# Bad checkpoints (eval and deblur share the loading code)


@pytest.fixture
def bad_checkpoints(tiny_run: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected message fragment)."""
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(2048))
    keyless = tmp_path / "keyless.pt"
    torch.save({"weights": torch.zeros(3)}, keyless)
    other = tmp_path / "other-config.pt"
    ckpt = load_checkpoint(tiny_run / "last.pt")
    ckpt["model_config"]["widths"] = [16, 32, 64]  # weights of an 8,16,32 model
    torch.save(ckpt, other)
    unknown = tmp_path / "unknown-key.pt"
    ckpt["model_config"] = {"widths": [8, 16, 32], "heads": 4}
    torch.save(ckpt, unknown)
    return {
        "missing": (tmp_path / "absent.pt", "checkpoint not found"),
        "noise": (noise, "is not an LCNet checkpoint"),
        "keyless": (keyless, "missing keys: model, model_config"),
        "other-config": (other, "do not fit the model config"),
        "unknown-key": (unknown, "model config is not understood"),
    }


@pytest.mark.parametrize("case", ["missing", "noise", "keyless", "other-config", "unknown-key"])
@pytest.mark.parametrize("command", ["eval", "deblur"])
def test_bad_checkpoint(
    case: str,
    command: str,
    bad_checkpoints: dict[str, tuple[Path, str]],
    tiny_gopro: Path,
    tmp_path: Path,
    capsys: Any,
) -> None:
    path, message = bad_checkpoints[case]
    image = next((tiny_gopro / "test").glob("*/blur/*.png"))
    if command == "eval":
        args = ["eval", "--data", str(tiny_gopro), "--out", str(tmp_path / "r.json")]
    else:
        args = ["deblur", str(image), "--out", str(tmp_path / "out")]
    assert main([*args, "--checkpoint", str(path), "--device", "cpu"]) == 2
    line = _error_line(capsys)
    assert str(path) in line and message in line
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# deblur


def test_deblur_keeps_size_and_name(tiny_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    odd = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    skimage.io.imsave(inputs / "odd.png", odd, check_contrast=False)
    grey = rng.integers(0, 256, (20, 31), dtype=np.uint8)
    skimage.io.imsave(inputs / "grey.jpg", grey, check_contrast=False)
    (inputs / "notes.txt").write_text("not an image: folders only take image files")
    single = tmp_path / "single.tif"
    skimage.io.imsave(single, odd[:17, :9], check_contrast=False)

    out = tmp_path / "out"
    ckpt = str(tiny_run / "last.pt")
    assert main(["deblur", str(inputs), str(single), "--checkpoint", ckpt, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grey.png", "odd.png", "single.png"]
    assert read_image(out / "odd.png").shape == (37, 53, 3)
    assert read_image(out / "grey.png").shape == (20, 31, 3)
    assert read_image(out / "single.png").shape == (17, 9, 3)

    # Tiled: --tile and --tile-overlap reach the tiled inference (37x53 in 32-px tiles is a
    # real tiling, not the one-tile shortcut), and the result keeps the size.
    tiled = tmp_path / "tiled"
    args = ["deblur", str(inputs / "odd.png"), "--checkpoint", ckpt, "--out", str(tiled)]
    assert main([*args, "--tile", "32", "--tile-overlap", "12"]) == 0
    net = model_from_checkpoint(load_checkpoint(ckpt), ckpt).eval()
    x = torch.from_numpy(odd).permute(2, 0, 1)[None].float() / 255
    expected = to_uint8(deblur_tensor(net, x, tile=32, overlap=12)[0])
    assert np.array_equal(read_image(tiled / "odd.png"), expected)
    assert main([*args, "--tile", "16", "--overwrite"]) == 0
    assert read_image(tiled / "odd.png").shape == (37, 53, 3)


def test_deblur_errors(tiny_run: Path, tmp_path: Path, capsys: Any) -> None:
    ckpt = ["--checkpoint", str(tiny_run / "last.pt")]
    good = tmp_path / "good.png"
    skimage.io.imsave(good, np.zeros((8, 8, 3), np.uint8), check_contrast=False)

    missing = tmp_path / "missing.png"
    assert main(["deblur", str(good), str(missing), *ckpt, "--out", str(tmp_path / "o1")]) == 2
    assert f"input not found: {missing}" in _error_line(capsys)

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(os.urandom(500))
    assert main(["deblur", str(corrupt), *ckpt, "--out", str(tmp_path / "o2")]) == 2
    assert str(corrupt) in _error_line(capsys)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["deblur", str(empty), *ckpt, "--out", str(tmp_path / "o3")]) == 2
    assert str(empty) in _error_line(capsys)

    out = tmp_path / "o4"
    out.mkdir()
    (out / "good.png").write_bytes(b"earlier result")
    assert main(["deblur", str(good), *ckpt, "--out", str(out)]) == 2
    assert str(out / "good.png") in _error_line(capsys)
    assert (out / "good.png").read_bytes() == b"earlier result"

    twin = tmp_path / "twin"
    twin.mkdir()
    skimage.io.imsave(twin / "good.jpg", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    assert main(["deblur", str(good), str(twin), *ckpt, "--out", str(tmp_path / "o5")]) == 2
    assert "would both be written to" in _error_line(capsys)

    assert main(["deblur", str(good), *ckpt, "--out", str(tmp_path / "o6"), "--tile", "8"]) == 2
    assert "--tile" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Tiled inference


def test_tile_spans_cover_the_image_on_the_network_grid() -> None:
    assert tile_spans(48, 64, 16) == [(0, 48)]
    assert tile_spans(100, 64, 16) == [(0, 64), (36, 100)]
    # Longer than the tile by less than the grid step: one tile (was a ZeroDivisionError).
    assert tile_spans(37, 32, 12, align=8) == [(0, 37)]
    assert tile_spans(203, 80, 40, align=2) == [
        (0, 80),
        (30, 110),
        (60, 140),
        (90, 170),
        (122, 203),
    ]
    for size, tile, overlap, align in [
        (720, 256, 32, 8),
        (1280, 256, 32, 8),
        (97, 32, 8, 1),
        (300, 40, 10, 8),
    ]:
        spans = tile_spans(size, tile, overlap, align)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(a % align == 0 and tile <= b - a < tile + align for a, b in spans)
        assert all(b1 - a2 >= overlap for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))


class _LocalNet(torch.nn.Module):
    """A network that looks 2 pixels around and does not downsample."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv(x)


@pytest.mark.parametrize(
    "net",
    [
        _LocalNet(),
        # An LCNet (fused local correlation) that reaches 9 px around and halves once.
        LCNet(LCNetConfig(widths=(8,), num_res_blocks=0, lcblocks_per_dblock=1, kernel_size=3)),
    ],
    ids=["local-conv", "shallow-lcnet"],
)
def test_tiles_blend_without_seams(net: torch.nn.Module) -> None:
    """A network whose reach is shorter than the blend's zero-weight margin (overlap / 4)
    gives the untiled result: the weights sum to one and tiles sit on the image's grid."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 150, 203)
    full = deblur_tensor(net.eval(), x)
    calls: list[int] = []
    hook = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    tiled = deblur_tensor(net, x, tile=80, overlap=40)
    hook.remove()
    align = getattr(getattr(net, "config", None), "size_multiple", 1)
    tiles = len(tile_spans(150, 80, 40, align)) * len(tile_spans(203, 80, 40, align))
    assert len(calls) == tiles > 1  # the tiled path ran, not the one-tile shortcut
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)


def test_tiled_lcnet_runs_on_tiles_of_the_image_grid(tiny_run: Path) -> None:
    ckpt = load_checkpoint(tiny_run / "last.pt")
    net = model_from_checkpoint(ckpt, tiny_run / "last.pt").eval()
    seen: list[tuple[int, ...]] = []
    net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    x = torch.rand(1, 3, 61, 83)
    full = deblur_tensor(net, x)
    assert seen == [(61, 83)]

    # A tile as large as the image: one call on the whole image (the documented shortcut).
    seen.clear()
    assert torch.equal(deblur_tensor(net, x, tile=96), full)
    assert seen == [(61, 83)]

    # Smaller tiles: one call per tile, each on the spans tile_spans gives (starts on the
    # network's grid), and the blend covers the image.
    seen.clear()
    tiled = deblur_tensor(net, x, tile=32)
    align = net.config.size_multiple
    rows, cols = tile_spans(61, 32, 8, align), tile_spans(83, 32, 8, align)
    assert len(rows) > 1 and len(cols) > 1
    assert seen == [(b - a, d - c) for a, b in rows for c, d in cols]
    assert tiled.shape == full.shape and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, full)  # really another computation near the seams
