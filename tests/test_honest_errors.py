"""Right pictures and honest errors: what a careless user gets from eval, deblur, train and
synth (each a one-line error, exit code 2, and no work done or lost)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
from conftest import TINY_TRAIN_ARGS

import lcnet.evaluate
import lcnet.inference
import lcnet.train
from lcnet.cli import main
from lcnet.io import read_image

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning"),
]


def _error_lines(capsys: Any) -> list[str]:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected a message on stderr"
    assert "Traceback" not in "\n".join(err), "\n".join(err)
    return err


def _png(path: Path, height: int = 24, width: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _eval(run: Path, data: Path, *extra: str) -> int:
    args = ["eval", "--data", str(data), "--checkpoint", str(run / "last.pt"), "--device", "cpu"]
    return main([*args, *extra])


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any deblurring, evaluation or training step fails the test."""

    def work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started before the output place was checked")

    monkeypatch.setattr(lcnet.evaluate, "run_timed", work)
    monkeypatch.setattr(lcnet.inference, "run_timed", work)
    monkeypatch.setattr(lcnet.train, "_loop", work)


# --------------------------------------------------------------------------------------------
# Finding 5: unpaired files are named; images smaller than the SSIM window


def test_eval_names_a_sharp_image_without_blurry_twin(
    tiny_run: Path, tiny_gopro: Path, tmp_path: Path, capsys: Any
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_gopro, data)
    sequence = sorted((data / "test").iterdir())[0]
    orphan = _png(sequence / "sharp" / "999999.png")
    assert _eval(tiny_run, data) == 2
    line = _error_lines(capsys)[-1]
    assert str(orphan) in line and "no blurry twin" in line, line


def test_eval_of_images_smaller_than_the_ssim_window(
    tiny_run: Path, tmp_path: Path, capsys: Any
) -> None:
    data = tmp_path / "data"
    for folder in ("blur", "sharp"):
        _png(data / "test" / "SEQ" / folder / "000001.png", height=10, width=40)
    assert _eval(tiny_run, data) == 2
    line = _error_lines(capsys)[-1]
    assert "000001.png" in line and "40x10" in line and "11x11" in line, line


# --------------------------------------------------------------------------------------------
# Finding 6: output places are checked before any work starts


def _blocked_places(tmp_path: Path) -> dict[str, Path]:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    return {"not a folder": blocker / "sub", "name too long": tmp_path / ("x" * 300) / "sub"}


@pytest.mark.parametrize("case", ["not a folder", "name too long"])
def test_deblur_out_checked_first(
    case: str, tiny_run: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _blocked_places(tmp_path)[case]
    _no_work(monkeypatch)
    image = _png(tmp_path / "in.png")
    args = ["deblur", str(image), "--checkpoint", str(tiny_run / "last.pt"), "--out", str(out)]
    assert main(args) == 2
    assert "--out" in _error_lines(capsys)[-1]


@pytest.mark.parametrize("case", ["not a folder", "name too long"])
@pytest.mark.parametrize("flag", ["--out", "--save-images"])
def test_eval_outputs_checked_first(
    case: str,
    flag: str,
    tiny_run: Path,
    tiny_gopro: Path,
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    place = _blocked_places(tmp_path)[case]
    _no_work(monkeypatch)
    assert _eval(tiny_run, tiny_gopro, flag, str(place / "results.json")) == 2
    assert flag in _error_lines(capsys)[-1]


@pytest.mark.parametrize("case", ["not a folder", "name too long"])
def test_train_out_checked_first(
    case: str, tiny_gopro: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _blocked_places(tmp_path)[case]
    _no_work(monkeypatch)
    assert main(["train", "--data", str(tiny_gopro), "--out", str(out), *TINY_TRAIN_ARGS]) == 2
    assert "--out" in _error_lines(capsys)[-1]


# --------------------------------------------------------------------------------------------
# Finding 7: a folder run keeps going and reports every bad file; hidden files are ignored


def test_deblur_folder_keeps_going_and_reports_every_bad_file(
    tiny_run: Path, tmp_path: Path, capsys: Any
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _png(inputs / "a.png", seed=1)
    (inputs / "b.png").write_bytes(b"not a png")
    _png(inputs / "c.png", seed=2)
    (inputs / "d.jpg").write_bytes(b"not a jpeg")
    args = ["deblur", str(inputs), "--checkpoint", str(tiny_run / "last.pt"), "--out", str(out)]
    assert main(args) == 2
    err = _error_lines(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    assert read_image(out / "c.png").shape == (24, 32, 3)
    assert "2 of 4" in err[-1], err
    text = "\n".join(err)
    assert str(inputs / "b.png") in text and str(inputs / "d.jpg") in text


def test_deblur_ignores_hidden_files(tiny_run: Path, tmp_path: Path, capsys: Any) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _png(inputs / "photo.png")
    (inputs / "._photo.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (inputs / ".hidden.jpg").write_bytes(b"")
    args = ["deblur", str(inputs), "--checkpoint", str(tiny_run / "last.pt"), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["photo.png"]


# --------------------------------------------------------------------------------------------
# Finding 8: synth names its own flag


def test_synth_on_an_existing_folder_names_overwrite(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["synth", "--out", str(out), "--train-pairs", "1", "--test-pairs", "1"]) == 2
    line = _error_lines(capsys)[-1]
    assert "--overwrite" in line and "overwrite=True" not in line, line
    assert (out / "mine.txt").read_text() == "keep me"
