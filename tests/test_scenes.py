"""Tests of lcnet.scenes (synthetic-gopro-v2's scenes and non-uniform blur) and of the
reproducibility of synthetic-gopro-v1."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lcnet import scenes, synth

SIZE = (40, 56)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_version_1_is_byte_for_byte_the_original(tmp_path: Path) -> None:
    # Digest of the PNGs written by the generator before version 2 existed (commit 8188ce9).
    out = synth.make_synthetic_gopro(
        tmp_path / "v1", train_pairs=3, test_pairs=2, size=(48, 64), seed=5, workers=1, version=1
    )
    assert _digest(out) == "3345fed423656e199ebb816b4b74ec70541767481d0a2a7f93957aba450305f3"
    assert json.loads((out / synth.MANIFEST_NAME).read_text())["format_version"] == 1


def test_default_set_is_version_3() -> None:
    from lcnet import data

    assert synth.DEFAULT_VERSION == 3 and data.DEFAULT_DATASET_NAME == "synthetic-gopro-v3"
    assert synth.dataset_name(1) == "synthetic-gopro-v1"


def test_version_2_is_byte_for_byte_as_before(tmp_path: Path) -> None:
    # Digest of the PNGs written by version 2 before version 3 existed (commit 8378383).
    out = synth.make_synthetic_gopro(
        tmp_path / "v2", train_pairs=3, test_pairs=2, size=(48, 64), seed=5, workers=1, version=2
    )
    assert _digest(out) == "eac7ffba35f080052a9db4203d27359732d8784dd3111e4d8197844eaee4ec36"


def test_version_3_changes_the_training_split_only(tmp_path: Path) -> None:
    kwargs = {"train_pairs": 8, "test_pairs": 2, "size": (48, 64), "seed": 5, "workers": 1}
    v2 = synth.make_synthetic_gopro(tmp_path / "v2", version=2, **kwargs)
    v3 = synth.make_synthetic_gopro(tmp_path / "v3", version=3, **kwargs)
    assert _digest(v2 / "test") == _digest(v3 / "test")
    assert _digest(v2 / "train") != _digest(v3 / "train")
    draws = json.loads((v3 / synth.MANIFEST_NAME).read_text())["images"]["train"]
    assert json.loads((v3 / synth.MANIFEST_NAME).read_text())["format_version"] == 3
    assert min(d["path_length_px"] for d in draws) < scenes.V3_MIN_PATH_PX + 3  # short blur


def test_version_3_is_byte_for_byte_as_before(tmp_path: Path) -> None:
    # Digest of the PNGs written by version 3 before version 4 existed (commit adff8b2).
    out = synth.make_synthetic_gopro(
        tmp_path / "v3", train_pairs=3, test_pairs=2, size=(48, 64), seed=5, workers=1, version=3
    )
    assert _digest(out) == "fca34e6aae033e95d6c349a54e988c22c3833d09712e63329b9ad72466eb994e"


def test_version_4_changes_the_training_split_only(tmp_path: Path) -> None:
    kwargs = {"train_pairs": 6, "test_pairs": 2, "size": (48, 64), "seed": 5, "workers": 1}
    v2 = synth.make_synthetic_gopro(tmp_path / "v2", version=2, **kwargs)
    v4 = synth.make_synthetic_gopro(tmp_path / "v4", version=4, **kwargs)
    assert _digest(v2 / "test") == _digest(v4 / "test")
    assert _digest(v2 / "train") != _digest(v4 / "train")
    manifest = json.loads((v4 / synth.MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 4
    assert manifest["blur_model"]["still_camera"] == scenes.V4_STILL_CAMERA
    assert manifest["blur_model"]["short_path"] == scenes.V4_SHORT_PATH


@pytest.mark.parametrize("version", [3, 4])
def test_camera_path_shares(version: int) -> None:
    """Version 3: a quarter still and about 60 % under 3 px (issue 16's analysis); version 4:
    its still and short shares, the rest over v2's 3-18 px. 4000 draws: the shares' standard
    errors are below 0.008, the bounds 3 of them."""
    rng = np.random.default_rng(0)
    paths = np.array([scenes.camera_path_length(rng, version) for _ in range(4000)])
    still = float(np.mean(paths == 0.0))
    short = float(np.mean((paths > 0.0) & (paths < scenes.MIN_PATH_PX)))
    moving = paths[paths > 0.0]
    if version == 3:
        assert abs(still - scenes.V3_STILL_CAMERA) < 0.025
        assert abs(still + short - 0.61) < 0.025
        assert scenes.V3_MIN_PATH_PX <= moving.min() and moving.max() <= scenes.V3_MAX_PATH_PX
    else:
        assert abs(still - scenes.V4_STILL_CAMERA) < 0.02
        assert abs(short - scenes.V4_SHORT_PATH) < 0.02
        assert scenes.V4_SHORT_PATH_PX[0] <= moving.min()
        assert moving.max() <= scenes.MAX_PATH_PX
        long = moving[moving >= scenes.MIN_PATH_PX]
        assert (
            abs(len(long) / len(paths) - (1 - scenes.V4_STILL_CAMERA - scenes.V4_SHORT_PATH))
            < 0.025
        )


def test_camera_path_length_rejects_other_versions() -> None:
    with pytest.raises(ValueError, match="version: expected 3 or 4, got 2"):
        scenes.camera_path_length(np.random.default_rng(0), 2)


@pytest.mark.parametrize("kind", scenes.SCENE_KINDS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_make_pair_sizes_and_determinism(kind: str, split: str) -> None:
    first = scenes.make_pair(np.random.default_rng([1, 2]), SIZE, split, kind)
    again = scenes.make_pair(np.random.default_rng([1, 2]), SIZE, split, kind)
    other = scenes.make_pair(np.random.default_rng([1, 3]), SIZE, split, kind)
    for image in first[:3]:
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    for a, b in zip(first[:3], again[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[3] == again[3] and first[3].kind == kind
    assert not np.array_equal(first[2], other[2])
    assert not np.array_equal(first[0], first[2])  # blurred (and noisy)


def test_test_scenes_use_only_test_photos() -> None:
    assert not set(scenes.TRAIN_PHOTOS) & set(scenes.TEST_PHOTOS)
    assert not set(scenes.TRAIN_TEXTURES) & set(scenes.TEST_PHOTOS)
    for seed in range(4):
        draw = scenes.make_pair(np.random.default_rng(seed), SIZE, "test", "photo")[3]
        assert draw.source in scenes.TEST_PHOTOS
        draw = scenes.make_pair(np.random.default_rng(seed), SIZE, "train", "photo")[3]
        assert draw.source in scenes.TRAIN_PHOTOS


def test_dead_leaves_range_and_variety() -> None:
    image = scenes.dead_leaves(np.random.default_rng(0), (64, 80))
    assert image.shape == (64, 80, 3) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    # Many shapes: many distinct colours and strong edges.
    assert len(np.unique(np.round(image.reshape(-1, 3), 2), axis=0)) > 50
    assert np.abs(np.diff(image, axis=1)).max() > 0.3


def test_moving_object_over_still_camera_blurs_only_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No camera motion and no noise: the blur is where the object moves, not elsewhere."""
    monkeypatch.setattr(scenes, "MIN_PATH_PX", 1e-4)
    monkeypatch.setattr(scenes, "MAX_PATH_PX", 1e-4)
    monkeypatch.setattr(scenes, "MAX_ROTATION_DEG", 0.0)
    monkeypatch.setattr(scenes, "MIN_NOISE_LEVELS", 0.0)
    monkeypatch.setattr(scenes, "MAX_NOISE_LEVELS", 0.0)
    monkeypatch.setattr(scenes, "MIN_OBJECTS", 1)
    monkeypatch.setattr(scenes, "MAX_OBJECTS", 1)
    monkeypatch.setattr(scenes, "MIN_OBJECT_PATH_PX", 10.0)
    blur, _, sharp, draw = scenes.make_pair(np.random.default_rng(7), (96, 96), "train", "photo")
    assert draw.n_objects == 1 and draw.object_path_px[0] >= 10.0
    changed = np.abs(blur.astype(int) - sharp.astype(int)).max(axis=2) > 2
    assert 0.005 < changed.mean() < 0.6  # a region changed, most of the image did not


def test_version_2_build_records_scenes(tmp_path: Path) -> None:
    out = synth.make_synthetic_gopro(
        tmp_path / "v2", train_pairs=4, test_pairs=2, size=SIZE, seed=1, workers=2, version=2
    )
    manifest = json.loads((out / synth.MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2
    kinds = [r["kind"] for r in manifest["images"]["train"]]
    assert kinds == ["dead_leaves", "photo", "dead_leaves", "photo"]
    assert {r["kind"] for r in manifest["images"]["test"]} == {"photo"}
    for record in manifest["images"]["train"] + manifest["images"]["test"]:
        assert record["psnr_blur"] < 60 and record["n_frames"] >= scenes.MIN_FRAMES
