"""Tests of lcnet.losses with a random-initialised VGG-19 saved to a temporary file.

The saved file is a full torchvision VGG-19 state dict, so the loader runs exactly the code
path it runs on the real ``vgg19-dcbb9e9d.pth``. Nothing here needs network access.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lcnet.losses
from lcnet.losses import (
    VGG19_LAYERS,
    VGG19_URL,
    DeblurLoss,
    VGGWeightsNotFoundError,
    default_vgg19_path,
    load_vgg19_features,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
IMAGE_SHAPE = (2, 3, 24, 24)


@pytest.fixture(scope="module")
def random_vgg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A random-initialised torchvision VGG-19 and the file its state dict was saved to."""
    # torchvision's own initialisation of the feature convs; the 120 M classifier weights,
    # which the loader discards, are zeros to keep the fixture fast.
    torch.manual_seed(0)
    with torch.device("meta"):
        vgg = torchvision.models.vgg19(weights=None)
    vgg = vgg.to_empty(device="cpu").eval()
    for module in vgg.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    path = tmp_path_factory.mktemp("vgg") / "random_vgg19.pth"
    torch.save(vgg.state_dict(), path)
    return path, vgg


@pytest.fixture(scope="module")
def loss(random_vgg: tuple[Path, nn.Module]) -> DeblurLoss:
    return DeblurLoss(content_weight=0.1, vgg_weights=random_vgg[0])


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point torch.hub.get_dir() at an empty folder: torchvision's cache holds nothing."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(IMAGE_SHAPE, generator=g), torch.rand(IMAGE_SHAPE, generator=g)


def test_layer_names_index_torchvision_features(random_vgg: tuple[Path, nn.Module]) -> None:
    assert VGG19_LAYERS["conv2_2"] == 7
    assert VGG19_LAYERS["conv3_3"] == 14
    assert VGG19_LAYERS["relu3_3"] == 15
    assert VGG19_LAYERS["conv4_4"] == 25
    assert VGG19_LAYERS["conv5_4"] == 34
    features = random_vgg[1].features
    for name, index in VGG19_LAYERS.items():
        kind = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name[:4]]
        assert isinstance(features[index], kind), name


def test_terms_and_total(loss: DeblurLoss) -> None:
    pred, target = images(1)
    terms = loss.terms(pred, target)
    assert set(terms) == {"l1", "content", "total"}
    assert terms["l1"].item() == pytest.approx((pred - target).abs().mean().item(), rel=1e-6)
    assert terms["content"] > 0
    torch.testing.assert_close(terms["total"], terms["l1"] + 0.1 * terms["content"])
    total = loss(pred, target)
    torch.testing.assert_close(total, terms["total"])
    assert set(loss.last_terms) == {"l1", "content", "total"}
    assert not any(t.requires_grad for t in loss.last_terms.values())
    torch.testing.assert_close(loss.last_terms["content"], terms["content"].detach())


def test_identical_images_give_zero(loss: DeblurLoss) -> None:
    pred, _ = images(2)
    terms = loss.terms(pred, pred.clone())
    assert terms["l1"].item() == 0.0
    assert terms["content"].item() == 0.0
    assert terms["total"].item() == 0.0


def test_content_is_half_mse_of_normalised_conv3_3_features(
    loss: DeblurLoss, random_vgg: tuple[Path, nn.Module]
) -> None:
    """Oracle: torchvision's own VGG module (features[:15], up to conv3_3), eq. 7."""
    pred, target = images(3)
    oracle = random_vgg[1].features[: 14 + 1]
    with torch.no_grad():
        fp = oracle((pred - IMAGENET_MEAN) / IMAGENET_STD)
        ft = oracle((target - IMAGENET_MEAN) / IMAGENET_STD)
    expected = 0.5 * F.mse_loss(fp, ft)
    torch.testing.assert_close(loss.terms(pred, target)["content"].detach(), expected)


def test_vgg_is_frozen_and_stays_in_eval_mode(loss: DeblurLoss) -> None:
    loss.train()
    assert loss.training
    assert loss.vgg is not None
    assert all(not m.training for m in loss.vgg.modules())
    assert all(not p.requires_grad for p in loss.vgg.parameters())
    assert len(loss.vgg) == VGG19_LAYERS["conv3_3"] + 1
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in loss.vgg)


def test_gradient_flows_to_pred_not_to_vgg(loss: DeblurLoss) -> None:
    pred, target = images(4)
    pred.requires_grad_(True)
    loss.terms(pred, target)["content"].backward()
    assert pred.grad is not None and pred.grad.abs().max() > 0
    assert all(p.grad is None for p in loss.vgg.parameters())
    pred.grad = None
    loss(pred, target).backward()
    assert pred.grad.abs().max() > 0


def test_shape_mismatch(loss: DeblurLoss) -> None:
    with pytest.raises(ValueError, match=r"same shape, got pred \(1, 3, 8, 8\) and target"):
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) for the VGG content loss"):
        loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_zero_content_weight_never_loads_vgg(
    empty_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("VGG must not be loaded when content_weight is 0")

    monkeypatch.setattr(lcnet.losses, "load_vgg19_features", fail)
    monkeypatch.setattr(torchvision.models, "vgg19", fail)
    for weights in (None, tmp_path / "missing.pth"):
        l1_only = DeblurLoss(content_weight=0.0, vgg_weights=weights)
        assert l1_only.vgg is None
        pred, target = images(5)
        pred.requires_grad_(True)
        total = l1_only(pred, target)
        assert total.item() == pytest.approx((pred - target).abs().mean().item(), rel=1e-6)
        assert l1_only.last_terms["content"].item() == 0.0
        total.backward()
        assert pred.grad.abs().max() > 0


def test_missing_given_path_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(VGGWeightsNotFoundError) as info:
        DeblurLoss(content_weight=0.1, vgg_weights=missing)
    message = str(info.value)
    assert str(missing) in message
    assert VGG19_URL in message
    assert "--content-weight 0" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_cache_error_names_cache_file(empty_hub: Path) -> None:
    expected = empty_hub / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert default_vgg19_path() == expected
    with pytest.raises(VGGWeightsNotFoundError, match="https://download.pytorch.org/models/"):
        load_vgg19_features()
    with pytest.raises(VGGWeightsNotFoundError, match=re.escape(str(expected))):
        DeblurLoss()


def test_cache_file_is_used_and_layer_is_configurable(
    empty_hub: Path, random_vgg: tuple[Path, nn.Module]
) -> None:
    (empty_hub / "checkpoints").mkdir()
    (empty_hub / "checkpoints" / "vgg19-dcbb9e9d.pth").symlink_to(random_vgg[0])
    features = load_vgg19_features(layer="conv2_2")
    assert len(features) == VGG19_LAYERS["conv2_2"] + 1
    assert isinstance(features[-1], nn.Conv2d) and features[-1].out_channels == 128
    torch.testing.assert_close(features[-1].weight, random_vgg[1].features[7].weight)
    assert not features.training


def test_not_a_vgg_state_dict(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(
        ValueError, match=re.escape(f"could not read VGG-19 weights from {garbage}")
    ):
        load_vgg19_features(garbage)

    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(
        ValueError, match=re.escape(f"expected {a_list} to hold a VGG-19 state dict, got")
    ):
        load_vgg19_features(a_list)

    wrong_keys = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, wrong_keys)
    with pytest.raises(
        ValueError, match=re.escape(f"expected {wrong_keys} to hold a torchvision VGG-19")
    ):
        load_vgg19_features(wrong_keys)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"content_weight": -0.1}, "content_weight to be finite and >= 0, got -0.1"),
        ({"content_weight": math.inf}, "content_weight to be finite and >= 0, got inf"),
        ({"content_weight": "0.1"}, "content_weight to be a float, got '0.1'"),
        ({"content_weight": 0.0, "vgg_layer": "conv3_5"}, "VGG-19 layer name .* got 'conv3_5'"),
    ],
)
def test_argument_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeblurLoss(**kwargs)


def test_frequency_term() -> None:
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 16, 20), torch.rand(2, 3, 16, 20)
    plain = DeblurLoss(content_weight=0.0)
    freq = DeblurLoss(content_weight=0.0, frequency_weight=0.5)
    assert "frequency" not in plain.terms(pred, target)
    terms = freq.terms(pred, target)
    diff = torch.fft.rfft2(pred) - torch.fft.rfft2(target)
    expected = (diff.real.abs() + diff.imag.abs()).mean()
    torch.testing.assert_close(terms["frequency"], expected)
    torch.testing.assert_close(terms["total"], terms["l1"] + 0.5 * expected)
    assert freq(target, target).item() == 0.0
    with pytest.raises(ValueError, match="frequency_weight to be finite and >= 0, got -1"):
        DeblurLoss(content_weight=0.0, frequency_weight=-1)
