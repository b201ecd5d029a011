"""Tests of lcnet.io: every image a user gives is converted to RGB the way Pillow does."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from lcnet.io import ImageReadError, read_image, remove_stale_temp_files, write_png

RNG = np.random.default_rng(11)


def _rgb(height: int = 6, width: int = 7) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png16(rgb: np.ndarray) -> bytes:
    """A 48-bit RGB PNG, by hand (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    height, width, _ = rgb.shape
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    rows = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))


def test_cmyk_jpeg_keeps_its_colours(tmp_path: Path) -> None:
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[...] = (200, 30, 60)
    path = tmp_path / "cmyk.jpg"
    PIL.Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    assert PIL.Image.open(path).mode == "CMYK"
    image = read_image(path)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), (200, 30, 60), atol=3)


def test_cmyk_tiff_is_converted_as_pillow_does(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    cmyk = PIL.Image.fromarray(RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8), "CMYK")
    cmyk.save(path)
    np.testing.assert_array_equal(read_image(path), np.asarray(cmyk.convert("RGB")))


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_is_expanded(tmp_path: Path, transparency: bool) -> None:
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    index = RNG.integers(0, 16, (5, 9), dtype=np.uint8)
    image = PIL.Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    path = tmp_path / "palette.png"
    image.save(path, **({"transparency": 3} if transparency else {}))
    np.testing.assert_array_equal(read_image(path), palette[index])


def test_grey_and_bilevel_are_repeated(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (4, 5), dtype=np.uint8)
    PIL.Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.stack([grey] * 3, -1))
    bits = grey > 127
    PIL.Image.fromarray(bits).save(tmp_path / "bits.png")
    assert PIL.Image.open(tmp_path / "bits.png").mode == "1"
    expected = np.stack([bits.astype(np.uint8) * 255] * 3, -1)
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png"), expected)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_dropped_not_composited(tmp_path: Path, mode: str) -> None:
    rgb = _rgb()
    alpha = RNG.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    if mode == "LA":
        rgb = np.stack([rgb[..., 0]] * 3, -1)
        array = np.stack([rgb[..., 0], alpha], -1)
    else:
        array = np.concatenate([rgb, alpha[..., None]], -1)
    PIL.Image.fromarray(array, mode).save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_image(tmp_path / "alpha.png"), rgb)


def test_16_bit_grey_and_rgb(tmp_path: Path) -> None:
    grey = np.array([[0, 257, 65535, 32896, 128, 129]], dtype=np.uint16)
    PIL.Image.fromarray(grey).save(tmp_path / "grey16.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "grey16.png")[0, :, 1], [0, 1, 255, 128, 0, 1]
    )
    rgb8 = _rgb()
    (tmp_path / "rgb16.png").write_bytes(_png16(rgb8.astype(np.uint16) * 257))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png"), rgb8)


def test_read_image_gives_a_writable_array(tmp_path: Path) -> None:
    # torch.from_numpy warns about (and cannot safely share) read-only arrays.
    write_png(tmp_path / "a.png", _rgb())
    assert read_image(tmp_path / "a.png").flags.writeable


def test_not_an_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ImageReadError, match=f"cannot read image {path}"):
        read_image(path)


def test_png_round_trip_and_stale_temp_files(tmp_path: Path) -> None:
    rgb = _rgb()
    write_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    (tmp_path / ".a.png.x1.tmp").write_bytes(b"half")
    (tmp_path / ".b.png.x1.tmp").write_bytes(b"not ours to remove")
    assert remove_stale_temp_files(tmp_path, ["a.png"]) == [tmp_path / ".a.png.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.png.x1.tmp", "a.png"]
