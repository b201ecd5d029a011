"""Tests of lcnet.synth: the synthetic GOPRO-layout set (layout, determinism, disjoint
sources, blur realism) and its CLI entry points."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from lcnet import synth
from lcnet.data import BLUR_DIRS, list_pairs, read_image

TINY = {"train_pairs": 4, "test_pairs": 2, "size": (48, 64), "workers": 2}
SPLIT_PAIRS = {"train": TINY["train_pairs"], "test": TINY["test_pairs"]}
#: A blurry image closer than this to its sharp twin has not really been blurred.
MAX_BLURRY_PSNR_DB = 40.0
#: Colour photos: mean absolute difference between channels, in grey levels.
MIN_CHANNEL_SPREAD = 5.0


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def tiny_set(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.make_synthetic_gopro(
        tmp_path_factory.mktemp("synth") / "set", seed=3, version=request.param, **TINY
    )


def _version(root: Path) -> int:
    return json.loads((root / synth.MANIFEST_NAME).read_text())["format_version"]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _high_frequency_energy(image: np.ndarray) -> float:
    gray = image.astype(np.float64).mean(axis=2)
    laplacian = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1]
    laplacian -= gray[1:-1, :-2] + gray[1:-1, 2:]
    return float(np.mean(laplacian**2))


def test_layout_and_names(tiny_set: Path) -> None:
    assert (tiny_set / synth.MANIFEST_NAME).is_file()
    for split, n_pairs in SPLIT_PAIRS.items():
        sequences = sorted((tiny_set / split).iterdir())
        assert sequences and all(s.name.startswith("SYNTH") for s in sequences)
        count = 0
        for sequence in sequences:
            names = {d: sorted(p.name for p in (sequence / d).iterdir()) for d in synth.BLUR_DIRS}
            names["sharp"] = sorted(p.name for p in (sequence / "sharp").iterdir())
            assert len({tuple(v) for v in names.values()}) == 1, names  # same file names
            assert all(n.endswith(".png") and len(n) == len("000001.png") for n in names["sharp"])
            count += len(names["sharp"])
        assert count == n_pairs
        for blur_dir in BLUR_DIRS:
            pairs = list_pairs(tiny_set, split, blur_dir)
            assert len(pairs) == n_pairs
            image = read_image(pairs[0].blur)
            assert image.shape == (*TINY["size"], 3) and image.dtype == np.uint8


def test_manifest_records_every_image(tiny_set: Path) -> None:
    manifest = json.loads((tiny_set / synth.MANIFEST_NAME).read_text())
    assert manifest["seed"] == 3 and manifest["size"] == list(TINY["size"])
    for split, n_pairs in SPLIT_PAIRS.items():
        records = manifest["images"][split]
        assert sorted(r["name"] for r in records) == [p.name for p in list_pairs(tiny_set, split)]
        assert len(records) == n_pairs
        for record in records:
            assert synth.MIN_FRAMES <= record["n_frames"] <= synth.MAX_FRAMES
            assert record["path_length_px"] > 0


def test_train_and_test_sources_are_disjoint(tiny_set: Path) -> None:
    manifest = json.loads((tiny_set / synth.MANIFEST_NAME).read_text())
    train, test = set(manifest["sources"]["train"]), set(manifest["sources"]["test"])
    assert train and test and not train & test
    for split, sources in (("train", train), ("test", test)):
        # Version 2's dead-leaves scenes have no single source photo (source "").
        assert {r["source"] for r in manifest["images"][split] if r["source"]} <= sources
    # Sequence folders are named after their photo, so no folder is shared either.
    folders = {split: {p.name for p in (tiny_set / split).iterdir()} for split in SPLIT_PAIRS}
    assert not folders["train"] & folders["test"]


def test_sources_are_several_colour_photos() -> None:
    sources = synth.TRAIN_SOURCES + synth.TEST_SOURCES
    assert len(set(sources)) >= 6 and not set(synth.TRAIN_SOURCES) & set(synth.TEST_SOURCES)
    for name in sources:
        image = read_image(synth._source_dir() / name).astype(np.float64)
        spread = np.abs(image[..., 0] - image[..., 1]).mean()
        spread += np.abs(image[..., 1] - image[..., 2]).mean()
        assert spread > MIN_CHANNEL_SPREAD, f"{name} looks greyscale"


def test_blur_blurs(tiny_set: Path) -> None:
    for split in SPLIT_PAIRS:
        for blur_dir in BLUR_DIRS:
            for pair in list_pairs(tiny_set, split, blur_dir):
                blurry, sharp = read_image(pair.blur), read_image(pair.sharp)
                assert _psnr(blurry, sharp) < MAX_BLURRY_PSNR_DB, pair
                assert _high_frequency_energy(blurry) < _high_frequency_energy(sharp), pair


def test_blur_gamma_differs_from_blur(tiny_set: Path) -> None:
    for split in SPLIT_PAIRS:
        for plain, gamma in zip(
            list_pairs(tiny_set, split, "blur"),
            list_pairs(tiny_set, split, "blur_gamma"),
            strict=True,
        ):
            assert plain.name == gamma.name and plain.sharp == gamma.sharp
            assert not np.array_equal(read_image(plain.blur), read_image(gamma.blur))


def test_same_seed_same_bytes_other_seed_differs(tiny_set: Path, tmp_path: Path) -> None:
    # One worker here, two for the fixture: the thread schedule must not matter either.
    version = _version(tiny_set)
    again = synth.make_synthetic_gopro(
        tmp_path / "again", seed=3, version=version, **{**TINY, "workers": 1}
    )
    assert _files(again) == _files(tiny_set)
    other = synth.make_synthetic_gopro(tmp_path / "other", seed=4, version=version, **TINY)
    other_files, files = _files(other), _files(tiny_set)
    assert other_files.keys() == files.keys()
    assert any(other_files[k] != files[k] for k in files if k.endswith(".png"))


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    kwargs = {**TINY, "train_pairs": 1, "test_pairs": 1}
    with pytest.raises(FileExistsError, match="not empty"):
        synth.make_synthetic_gopro(out, **kwargs)
    synth.make_synthetic_gopro(out, overwrite=True, **kwargs)
    assert not (out / "keep.txt").exists() and (out / synth.MANIFEST_NAME).is_file()
    # The build folder is a hidden sibling that is renamed into place: nothing is left over.
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_pairs": 0}, "train_pairs: expected a positive integer, got 0"),
        ({"test_pairs": -1}, "test_pairs: expected a positive integer, got -1"),
        ({"seed": -2}, "seed: expected a non-negative integer, got -2"),
        ({"size": (8, 64)}, "size: expected both sides >= 16, got 8x64"),
        ({"size": (48,)}, r"size: expected \(height, width\)"),
        (
            {"size": (400, 64), "version": 1},
            "size: source photo .* smaller than the requested image size 400x64",
        ),
        ({"version": 5}, r"version: expected one of \(1, 2, 3, 4\), got 5"),
        ({"workers": 0}, "workers: expected a positive integer, got 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synth.make_synthetic_gopro(tmp_path / "set", **{**TINY, **kwargs})
    assert not (tmp_path / "set").exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left behind


@pytest.mark.parametrize(
    ("text", "size"),
    [("48x64", (48, 64)), ("48X64", (48, 64)), ("32", (32, 32)), ("48,64", (48, 64))],
)
def test_parse_size(text: str, size: tuple[int, int]) -> None:
    assert synth.parse_size(text) == size


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="size: expected H W, HxW or N, got 'ax3'"):
        synth.parse_size("ax3")


def _parser() -> argparse.ArgumentParser:
    return synth.add_synth_arguments(argparse.ArgumentParser(prog="lcnet synth"))


@pytest.mark.parametrize("size_args", [["48", "64"], ["48x64"]])
def test_cli_arguments(size_args: list[str]) -> None:
    args = _parser().parse_args(["--out", "x", "--train-pairs", "3", "--size", *size_args])
    assert args.size == (48, 64) and args.train_pairs == 3 and args.out == Path("x")
    assert args.test_pairs is None and not args.overwrite  # the version's default
    assert args.synth_version == synth.DEFAULT_VERSION == 3
    defaults = _parser().parse_args(["--out", "x"])
    assert defaults.size == synth.DEFAULT_SIZE and defaults.seed == synth.DEFAULT_SEED


@pytest.mark.parametrize("size_args", [["4x"], ["1", "2", "3"], ["8", "64"]])
def test_cli_rejects_bad_size(size_args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--out", "x", "--size", *size_args])
    assert "--size" in capsys.readouterr().err


def test_run_synth(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = _parser().parse_args(
        ["--out", str(out), "--train-pairs", "1", "--test-pairs", "1", "--size", "32x48"]
    )
    assert synth.run_synth(args) == 0
    assert len(list_pairs(out, "train")) == 1 and len(list_pairs(out, "test")) == 1
    with pytest.raises(FileExistsError, match="not empty"):
        synth.run_synth(args)
