"""Tests of lcnet.data: pair listing, image I/O, GoproDataset (paired augmentation,
reproducibility) and the embedded default data set."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from lcnet import data, synth
from lcnet.data import (
    GoproDataset,
    ImagePair,
    ImageReadError,
    default_data_root,
    ensure_default_dataset,
    list_pairs,
    read_image,
    write_png,
)

HEIGHT, WIDTH = 24, 32
PATCH = 16
TINY_DEFAULT = {"train_pairs": 2, "test_pairs": 1, "size": (32, 48)}


def _random_image(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _make_tree(
    root: Path,
    split: str = "train",
    sequences: tuple[str, ...] = ("SEQ_B", "SEQ_A"),
    per_sequence: int = 2,
    same: bool = False,
    size: tuple[int, int] = (HEIGHT, WIDTH),
) -> Path:
    """A GOPRO-layout tree of random images; ``same`` makes blur == sharp."""
    rng = np.random.default_rng(0)
    for sequence in sequences:
        for i in range(per_sequence):
            sharp = _random_image(rng, *size)
            blur = sharp if same else _random_image(rng, *size)
            for folder, image in (("blur", blur), ("blur_gamma", 255 - blur), ("sharp", sharp)):
                write_png(root / split / sequence / folder / f"{i + 1:06d}.png", image)
    return root


# ----------------------------------------------------------------------------- list_pairs
def test_list_pairs_sorted_and_named(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    (tmp_path / "train" / "notes.txt").write_text("ignored")
    pairs = list_pairs(tmp_path, "train")
    assert [p.name for p in pairs] == [
        "SEQ_A/000001.png",
        "SEQ_A/000002.png",
        "SEQ_B/000001.png",
        "SEQ_B/000002.png",
    ]
    first = pairs[0]
    assert isinstance(first, ImagePair)
    assert first.blur == tmp_path / "train/SEQ_A/blur/000001.png"
    assert first.sharp == tmp_path / "train/SEQ_A/sharp/000001.png"
    gamma = list_pairs(tmp_path, "train", blur_dir="blur_gamma")[0]
    assert gamma.blur == tmp_path / "train/SEQ_A/blur_gamma/000001.png"
    with pytest.raises(AttributeError):
        first.name = "x"  # frozen


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "val"}, "split: expected one of 'train', 'test', got 'val'"),
        ({"blur_dir": "blurry"}, "blur_dir: expected one of 'blur', 'blur_gamma', got 'blurry'"),
    ],
)
def test_list_pairs_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    _make_tree(tmp_path)
    with pytest.raises(ValueError, match=match):
        list_pairs(tmp_path, **kwargs)


def test_list_pairs_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"data root {tmp_path / 'nope'} does not exist"):
        list_pairs(tmp_path / "nope")


def test_list_pairs_missing_split(tmp_path: Path) -> None:
    _make_tree(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match=f"split folder {tmp_path / 'test'} does not"):
        list_pairs(tmp_path, "test")


def test_list_pairs_missing_sharp_twin(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    missing = tmp_path / "train/SEQ_B/sharp/000002.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"has no sharp twin {missing}"):
        list_pairs(tmp_path)


@pytest.mark.parametrize("folder", ["sharp", "blur_gamma"])
def test_list_pairs_missing_folder(tmp_path: Path, folder: str) -> None:
    _make_tree(tmp_path)
    for png in (tmp_path / "train/SEQ_A" / folder).iterdir():
        png.unlink()
    (tmp_path / "train/SEQ_A" / folder).rmdir()
    with pytest.raises(FileNotFoundError, match=f"SEQ_A has no {folder}/ folder"):
        list_pairs(tmp_path, blur_dir="blur_gamma")


def test_list_pairs_no_pairs(tmp_path: Path) -> None:
    (tmp_path / "train" / "SEQ" / "blur").mkdir(parents=True)
    (tmp_path / "train" / "SEQ" / "sharp").mkdir()
    with pytest.raises(ValueError, match="no image pairs found under"):
        list_pairs(tmp_path)


# --------------------------------------------------------------------------------- image I/O
def test_write_read_roundtrip_is_atomic(tmp_path: Path) -> None:
    image = _random_image(np.random.default_rng(1))
    path = write_png(tmp_path / "deep" / "x.png", image)
    assert path == tmp_path / "deep" / "x.png"
    np.testing.assert_array_equal(read_image(path), image)
    assert os.listdir(tmp_path / "deep") == ["x.png"]  # no temporary file left
    write_png(path, np.full((4, 5, 3), 0.5))  # float in [0, 1], replaces the file
    np.testing.assert_array_equal(read_image(path), np.full((4, 5, 3), 128, np.uint8))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 4, 3), np.int32), "array: expected uint8 or float in \\[0, 1\\], got dtype"),
        (np.zeros((4, 4, 2), np.uint8), "array: expected HxW, HxWx1 or HxWx3, got shape"),
    ],
)
def test_write_png_rejects(tmp_path: Path, array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_png(tmp_path / "x.png", array)
    assert not list(tmp_path.iterdir())


def test_read_image_converts_to_rgb_uint8(tmp_path: Path) -> None:
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    PIL.Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.stack([gray] * 3, -1))

    rgba = np.random.default_rng(2).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])

    deep = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)  # 16-bit grey
    PIL.Image.fromarray(deep).save(tmp_path / "deep.png")
    converted = read_image(tmp_path / "deep.png")
    assert converted.dtype == np.uint8 and converted.shape == (1, 4, 3)
    np.testing.assert_array_equal(converted[0, :, 0], [0, 1, 255, 128])


def test_read_image_corrupt_and_missing(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ImageReadError, match=f"cannot read image {corrupt}") as info:
        read_image(corrupt)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is not None
    with pytest.raises(FileNotFoundError, match=f"image {tmp_path / 'gone.png'} does not exist"):
        read_image(tmp_path / "gone.png")


# ------------------------------------------------------------------------------- GoproDataset
def test_dataset_shapes_and_range(tmp_path: Path) -> None:
    dataset = GoproDataset(_make_tree(tmp_path), patch_size=PATCH)
    assert len(dataset) == 4
    blur, sharp = dataset[0]
    for tensor in (blur, sharp):
        assert tensor.shape == (3, PATCH, PATCH) and tensor.dtype == torch.float32
        assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert dataset.name(0) == "SEQ_A/000001.png" and dataset.name(-1) == "SEQ_B/000002.png"


def test_dataset_full_images(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    dataset = GoproDataset(root, split="train", patch_size=None, augment=False)
    blur, sharp = dataset[2]
    pair = list_pairs(root)[2]
    expected = torch.from_numpy(read_image(pair.sharp)).permute(2, 0, 1).float() / 255
    assert blur.shape == (3, HEIGHT, WIDTH)
    torch.testing.assert_close(sharp, expected, rtol=0, atol=0)
    gamma = GoproDataset(root, blur_dir="blur_gamma", patch_size=None, augment=False)
    torch.testing.assert_close(gamma[2][0], 1 - blur, rtol=0, atol=1e-6)


def test_augmentation_is_identical_for_blur_and_sharp(tmp_path: Path) -> None:
    dataset = GoproDataset(_make_tree(tmp_path, same=True), patch_size=PATCH, seed=5)
    for epoch, index in itertools.product(range(4), range(len(dataset))):
        dataset.set_epoch(epoch)
        blur, sharp = dataset[index]
        torch.testing.assert_close(blur, sharp, rtol=0, atol=0)


def _variants(image: torch.Tensor) -> list[tuple[tuple[bool, bool, tuple[int, ...]], torch.Tensor]]:
    """Every flip/channel-permutation of a 3xHxW image."""
    out = []
    for flip_h, flip_v, order in itertools.product(
        (False, True), (False, True), itertools.permutations(range(3))
    ):
        variant = image[list(order)]
        if flip_h:
            variant = variant.flip(2)
        if flip_v:
            variant = variant.flip(1)
        out.append(((flip_h, flip_v, order), variant))
    return out


def test_flips_and_channel_shuffle_are_applied(tmp_path: Path) -> None:
    root = _make_tree(tmp_path, sequences=("SEQ",), per_sequence=1)
    original = GoproDataset(root, patch_size=None, augment=False)[0][0]
    dataset = GoproDataset(root, patch_size=None, augment=True)
    seen = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        blur = dataset[0][0]
        matches = [key for key, variant in _variants(original) if torch.equal(variant, blur)]
        assert len(matches) == 1  # a flip/permutation of the input, nothing else
        seen.add(matches[0])
    assert {key[0] for key in seen} == {False, True} and {key[1] for key in seen} == {False, True}
    assert len({key[2] for key in seen}) >= 4  # the channels really are permuted


def test_reproducible_from_seed_epoch_index(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    first, second = GoproDataset(root, patch_size=PATCH), GoproDataset(root, patch_size=PATCH)
    for dataset in (first, second):
        dataset.set_epoch(3)
    for index in range(len(second)):  # fetch order must not matter
        second[index]
    for index in reversed(range(len(first))):
        for a, b in zip(first[index], second[index], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The draw is exactly np.random.default_rng([seed, epoch, index]): top, left first.
    height_slack, width_slack = HEIGHT - PATCH + 1, WIDTH - PATCH + 1
    rng = np.random.default_rng([0, 3, 1])
    top, left = int(rng.integers(0, height_slack)), int(rng.integers(0, width_slack))
    plain = GoproDataset(root, patch_size=PATCH, augment=False)
    plain.set_epoch(3)
    full = GoproDataset(root, patch_size=None, augment=False)[1][1]
    torch.testing.assert_close(plain[1][1], full[:, top : top + PATCH, left : left + PATCH])


def test_epoch_and_seed_change_the_draw(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    dataset = GoproDataset(root, patch_size=PATCH)
    reference = [dataset[i][0] for i in range(len(dataset))]
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i][0], reference[i]) for i in range(len(dataset)))
    dataset.set_epoch(0)
    assert all(torch.equal(dataset[i][0], reference[i]) for i in range(len(dataset)))
    other = GoproDataset(root, patch_size=PATCH, seed=1)
    assert any(not torch.equal(other[i][0], reference[i]) for i in range(len(dataset)))


def test_image_smaller_than_patch(tmp_path: Path) -> None:
    dataset = GoproDataset(_make_tree(tmp_path), patch_size=WIDTH)
    with pytest.raises(ValueError, match=f"SEQ_A/blur/000001.png is {WIDTH}x{HEIGHT} .*32"):
        dataset[0]


def test_blur_and_sharp_sizes_differ(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    write_png(root / "train/SEQ_A/sharp/000001.png", np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))
    with pytest.raises(ValueError, match="pair SEQ_A/000001.png: blurry image .* but sharp"):
        GoproDataset(root)[0]


# Undecodable bytes make imageio try its other plugins, one of which warns it is deprecated.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_corrupt_png_in_dataset(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    corrupt = root / "train/SEQ_B/blur/000002.png"
    corrupt.write_bytes(b"garbage, not a PNG " * 4)
    with pytest.raises(ImageReadError, match=f"cannot read image {corrupt}"):
        GoproDataset(root, patch_size=PATCH)[3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 0}, "patch_size: expected a positive integer or None, got 0"),
        ({"seed": -1}, "seed: expected a non-negative integer, got -1"),
        ({"blur_dir": "sharp"}, "blur_dir: expected one of 'blur', 'blur_gamma', got 'sharp'"),
    ],
)
def test_dataset_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GoproDataset(_make_tree(tmp_path), **kwargs)


def test_dataset_bad_epoch_and_index(tmp_path: Path) -> None:
    dataset = GoproDataset(_make_tree(tmp_path))
    with pytest.raises(ValueError, match="epoch: expected a non-negative integer, got -1"):
        dataset.set_epoch(-1)
    with pytest.raises(IndexError, match="index 4 out of range for 4 pairs"):
        dataset[4]


def test_dataloader_batches(tmp_path: Path) -> None:
    dataset = GoproDataset(_make_tree(tmp_path), patch_size=PATCH)
    blur, sharp = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert blur.shape == sharp.shape == (3, 3, PATCH, PATCH)


# ------------------------------------------------------------------------------ default data
def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    assert default_data_root() == tmp_path / data.DEFAULT_DATASET_NAME
    monkeypatch.delenv(data.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_root() == tmp_path / "home/.cache/lcnet" / data.DEFAULT_DATASET_NAME


def test_ensure_default_dataset_builds_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    root = ensure_default_dataset(**TINY_DEFAULT)
    assert root == tmp_path / data.DEFAULT_DATASET_NAME
    assert len(list_pairs(root, "train")) == 2 and len(list_pairs(root, "test")) == 1
    manifest = root / synth.MANIFEST_NAME
    stamp = manifest.stat().st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == [data.DEFAULT_DATASET_NAME]  # no temp left

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the default set was rebuilt")

    monkeypatch.setattr(synth, "make_synthetic_gopro", no_rebuild)
    assert ensure_default_dataset() == root
    assert manifest.stat().st_mtime_ns == stamp


def test_ensure_default_dataset_rebuilds_incomplete(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "train" / "SEQ" / "blur").mkdir(parents=True)  # an interrupted, unmarked set
    assert ensure_default_dataset(root, **TINY_DEFAULT) == root
    assert (root / synth.MANIFEST_NAME).is_file() and not (root / "train" / "SEQ").exists()


def test_ensure_default_dataset_keeps_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="exists without synth.json .*thesis.tex"):
        ensure_default_dataset(root, **TINY_DEFAULT)
    assert (root / "thesis.tex").read_text() == "precious"


def test_ensure_default_dataset_lost_race(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Another process completes the set while this one builds: its set is used."""
    real_build = synth.make_synthetic_gopro

    def build_then_lose(out: Path, **kwargs: object) -> Path:
        real_build(out, **kwargs)  # the other process renames its set into place first
        raise OSError(39, "Directory not empty", str(out))

    monkeypatch.setattr(synth, "make_synthetic_gopro", build_then_lose)
    root = tmp_path / "set"
    assert ensure_default_dataset(root, **TINY_DEFAULT) == root


# --------------------------------------------------------------------------- decoded cache
def test_dataset_decodes_each_pair_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    calls: list[Path] = []
    real = data.read_image

    def counting(path: Path) -> np.ndarray:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(data, "read_image", counting)
    dataset = GoproDataset(root, patch_size=PATCH, seed=1)
    first = [dataset[i] for i in range(len(dataset))]
    for epoch in range(1, 4):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            dataset[i]
    assert len(calls) == 2 * len(dataset)  # blur + sharp, once each
    dataset.set_epoch(0)
    for i, (blur, sharp) in enumerate(first):  # the cache was not modified by the crops
        again = dataset[i]
        assert torch.equal(again[0], blur) and torch.equal(again[1], sharp)

    calls.clear()
    uncached = GoproDataset(root, patch_size=PATCH, seed=1, cache_bytes=0)
    for _ in range(2):
        for i in range(len(uncached)):
            uncached[i]
    assert len(calls) == 2 * 2 * len(uncached)
    with pytest.raises(ValueError, match="cache_bytes: expected an integer >= 0, got -1"):
        GoproDataset(root, cache_bytes=-1)


# --------------------------------------------------------------------- blur_dir="both"
def test_both_blur_dirs_draws_blur_or_blur_gamma_per_item_and_epoch(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)  # blur_gamma = 255 - blur: the two are told apart exactly
    kinds = {
        d: GoproDataset(root, blur_dir=d, patch_size=PATCH) for d in ("blur", "blur_gamma", "both")
    }
    picks = []
    for epoch in range(8):
        for dataset in kinds.values():
            dataset.set_epoch(epoch)
        for index in range(len(kinds["both"])):
            blur, sharp = kinds["both"][index]
            gamma = np.random.default_rng([0, epoch, index, 1]).random() < 0.5
            expected = kinds["blur_gamma" if gamma else "blur"][index]
            # The same crop, flips and channel order as either folder alone; the drawn folder's
            # blurry image.
            torch.testing.assert_close(sharp, expected[1], rtol=0, atol=0)
            torch.testing.assert_close(blur, expected[0], rtol=0, atol=0)
            picks.append(gamma)
    assert 0 < sum(picks) < len(picks)  # both folders are used


def test_both_blur_dirs_names_a_missing_blur_gamma_image(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    (root / "train" / "SEQ_A" / "blur_gamma" / "000002.png").unlink()
    GoproDataset(root, blur_dir="blur", patch_size=PATCH)  # blur alone is complete
    with pytest.raises(FileNotFoundError, match=r"SEQ_A/sharp/000002\.png has no blurry twin"):
        GoproDataset(root, blur_dir="both", patch_size=PATCH)


def test_both_blur_dirs_is_a_training_choice_only(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    with pytest.raises(ValueError, match="blur_dir"):
        list_pairs(root, "train", "both")
