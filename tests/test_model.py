"""Tests of lcnet.model: shapes, parameter budget, init, config, backends, gradients."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from lcnet import LCBlock, LCNet, LCNetConfig
from lcnet.model import pad_to_multiple

PAPER_SIZE_MIB = 2.7
SIZE_TOLERANCE = 0.10
DEFAULT_NUM_PARAMETERS = 700_968  # stated in the lcnet.model docstring
FP32_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def conv_params(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + c_out


@pytest.fixture
def reference_model() -> LCNet:
    torch.manual_seed(0)
    return LCNet(LCNetConfig(lc_backend="reference"))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 37, 53), (2, 3, 16, 24), (1, 3, 5, 7), (1, 3, 1, 1), (1, 3, 2, 9), (1, 3, 8, 3)],
)
def test_output_has_input_shape(reference_model: LCNet, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape)
    with torch.no_grad():
        y = reference_model(x)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()


def test_intermediate_shapes_follow_design(reference_model: LCNet) -> None:
    """Each level halves (EBlocks) or doubles (DBlocks) the size with the design's widths."""
    x = torch.rand(1, 3, 32, 48)
    seen: list[tuple[int, ...]] = []
    blocks = [*reference_model.encoders, *reference_model.decoders]
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
        for block in blocks
    ]
    with torch.no_grad():
        reference_model(x)
    for hook in hooks:
        hook.remove()
    assert seen == [
        (1, 18, 16, 24),
        (1, 36, 8, 12),
        (1, 72, 4, 6),
        (1, 36, 8, 12),
        (1, 18, 16, 24),
        (1, 3, 32, 48),
    ]


def test_global_residual_and_crop_are_exact(reference_model: LCNet) -> None:
    """With the last conv zeroed the network is the identity: padding is cropped exactly."""
    last_conv = reference_model.decoders[-1].upsample[0]
    nn.init.zeros_(last_conv.weight)
    nn.init.zeros_(last_conv.bias)
    x = torch.rand(1, 3, 13, 21)
    with torch.no_grad():
        assert torch.equal(reference_model(x), x)


def test_output_depends_on_input(reference_model: LCNet) -> None:
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        residual = reference_model(x) - x
    assert residual.abs().max() > 1e-4


@pytest.mark.parametrize(
    ("shape", "multiple", "mode"),
    [((1, 3, 5, 7), 8, "reflect"), ((1, 3, 3, 2), 8, "replicate"), ((1, 1, 9, 17), 8, "reflect")],
)
def test_pad_to_multiple(shape: tuple[int, ...], multiple: int, mode: str) -> None:
    x = torch.rand(shape)
    padded = pad_to_multiple(x, multiple)
    height, width = shape[-2:]
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert torch.equal(padded[..., :height, :width], x)
    if mode == "reflect":  # the first padded column mirrors the one before the last
        assert torch.equal(padded[..., :height, width], x[..., :, width - 2])
    else:
        assert torch.equal(padded[..., :height, -1], x[..., :, -1])


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3, 16, 16), r"expected input of shape \(B, 3, H, W\), got \(3, 16, 16\)"),
        ((1, 1, 16, 16), r"got \(1, 1, 16, 16\)"),
        ((1, 3, 0, 16), "non-empty"),
    ],
)
def test_bad_input_shapes(reference_model: LCNet, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reference_model(torch.rand(shape))


def test_integer_input_rejected(reference_model: LCNet) -> None:
    with pytest.raises(ValueError, match="floating-point input, got torch.uint8"):
        reference_model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# --------------------------------------------------------------------------- size and init


def test_parameter_budget_matches_paper_size() -> None:
    model = LCNet()
    size = model.size_mib()
    assert PAPER_SIZE_MIB * (1 - SIZE_TOLERANCE) <= size <= PAPER_SIZE_MIB * (1 + SIZE_TOLERANCE)
    assert model.num_parameters() == DEFAULT_NUM_PARAMETERS
    assert size == pytest.approx(DEFAULT_NUM_PARAMETERS * 4 / 2**20)


def test_parameter_count_matches_design_formula() -> None:
    widths, n_res, n_lc = (18, 36, 72), 3, 2
    expected, previous = 0, 3
    for c in widths:
        expected += conv_params(previous, c) + n_res * 2 * conv_params(c, c)
        previous = c
    for c_in, c_out in zip(reversed(widths), (36, 18, 3), strict=True):
        lcblock = 2 * conv_params(c_in, c_in // 2) + conv_params(c_in // 2, c_in)
        expected += n_lc * lcblock + conv_params(c_in, 4 * c_out)
    assert LCNet().num_parameters() == expected == DEFAULT_NUM_PARAMETERS


def test_xavier_init() -> None:
    torch.manual_seed(0)
    convs = [m for m in LCNet().modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 * (1 + 2 * 3) + 3 * (2 * 3 + 1)
    for conv in convs:
        fan_in = conv.in_channels * 9
        fan_out = conv.out_channels * 9
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = conv.weight.detach()
        assert w.abs().max() <= bound
        # Uniform(-b, b): the largest draw is close to b and the std is b / sqrt(3). PyTorch's
        # default init (bound 1 / sqrt(fan_in)) stays far below both for every layer here.
        assert w.abs().max() > 0.9 * bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.2)
        assert torch.equal(conv.bias.detach(), torch.zeros_like(conv.bias))


def test_standalone_lcblock_is_xavier_initialised_and_squeezed() -> None:
    block = LCBlock(12, squeeze=3, backend="reference")
    assert block.pattern.out_channels == block.content.out_channels == 4
    assert block.expand.in_channels == 4 and block.expand.out_channels == 12
    assert all(torch.equal(c.bias, torch.zeros_like(c.bias)) for c in (block.pattern, block.expand))
    x = torch.rand(1, 12, 6, 7)
    assert block(x).shape == x.shape


# --------------------------------------------------------------------------- gradients


def test_every_parameter_receives_a_gradient(reference_model: LCNet) -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 16, 16)
    (reference_model(x) * torch.randn(1, 3, 16, 16)).sum().backward()
    for name, p in reference_model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name


# --------------------------------------------------------------------------- backends


def test_set_lc_backend_switches_every_lcblock(reference_model: LCNet) -> None:
    blocks = [m for m in reference_model.modules() if isinstance(m, LCBlock)]
    assert len(blocks) == 6
    assert reference_model.set_lc_backend("fused") is reference_model
    assert reference_model.config.lc_backend == "fused"
    assert all(b.backend == "fused" for b in blocks)
    reference_model.set_lc_backend("reference")
    assert all(b.backend == "reference" for b in blocks)
    with pytest.raises(ValueError, match="backend to be one of .*got 'cuda'"):
        reference_model.set_lc_backend("cuda")


def test_fused_and_reference_models_agree() -> None:
    """Same weights, both backends: outputs and all gradients agree to float32 tolerance."""
    torch.manual_seed(2)
    reference = LCNet(LCNetConfig(lc_backend="reference", dilation=2, scale=0.5))
    fused = copy.deepcopy(reference).set_lc_backend("fused")
    x = torch.rand(1, 3, 13, 21)
    weight = torch.randn(1, 3, 13, 21)
    grads = []
    for model in (reference, fused):
        x_model = x.clone().requires_grad_(True)
        out = model(x_model)
        (out * weight).sum().backward()
        grads.append((out.detach(), x_model.grad, {n: p.grad for n, p in model.named_parameters()}))
    (out_r, gx_r, gp_r), (out_f, gx_f, gp_f) = grads
    torch.testing.assert_close(out_f, out_r, **FP32_TOLERANCE)
    torch.testing.assert_close(gx_f, gx_r, **FP32_TOLERANCE)
    for name in gp_r:
        torch.testing.assert_close(gp_f[name], gp_r[name], **FP32_TOLERANCE, msg=name)


def test_fused_and_reference_lcblock_agree() -> None:
    torch.manual_seed(3)
    block = LCBlock(8, kernel_size=3, dilation=2, scale=0.7, backend="reference")
    x = torch.randn(2, 8, 9, 11)
    out_r = block(x)
    block.set_backend("fused")
    out_f = block(x)
    torch.testing.assert_close(out_f, out_r, **FP32_TOLERANCE)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": ()}, "at least one width"),
        ({"widths": "18"}, "widths to be a sequence of ints, got '18'"),
        ({"widths": (18, 0, 72)}, "widths >= 1, got 0"),
        ({"widths": (18, 36.0, 72)}, "widths to be an int, got 36.0"),
        ({"widths": (18, 35, 72)}, r"divisible by squeeze=2, got \[35\]"),
        ({"in_channels": 0}, "in_channels >= 1, got 0"),
        ({"num_res_blocks": -1}, "num_res_blocks >= 0, got -1"),
        ({"kernel_size": 4}, "kernel_size to be odd, got 4"),
        ({"kernel_size": True}, "kernel_size to be an int, got True"),
        ({"dilation": 0}, "dilation >= 1, got 0"),
        ({"scale": float("nan")}, "scale to be finite, got nan"),
        ({"scale": "1"}, "scale to be a float, got '1'"),
        ({"squeeze": 0}, "squeeze >= 1, got 0"),
        ({"negative_slope": -0.2}, "negative_slope >= 0.0, got -0.2"),
        ({"lcblocks_per_dblock": -1}, "lcblocks_per_dblock >= 0, got -1"),
        ({"lc_backend": "cuda"}, "lc_backend to be one of .*got 'cuda'"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LCNetConfig(**kwargs)


def test_lcblock_validation() -> None:
    with pytest.raises(ValueError, match="channels divisible by squeeze, got channels=9"):
        LCBlock(9, squeeze=2)
    with pytest.raises(ValueError, match="channels to be an int >= 1, got 0"):
        LCBlock(0)
    with pytest.raises(ValueError, match="kernel_size"):
        LCBlock(8, kernel_size=4)
    with pytest.raises(ValueError, match="backend"):
        LCBlock(8, backend="cuda")


def test_config_round_trip() -> None:
    config = LCNetConfig(widths=[8, 16], kernel_size=3, scale=0.5, lc_backend="reference")
    assert config.widths == (8, 16)
    d = config.to_dict()
    assert d["widths"] == [8, 16]
    assert LCNetConfig.from_dict(d) == config
    assert LCNetConfig.from_dict({}) == LCNetConfig()  # missing keys take defaults


def test_config_from_dict_rejects_unknown_keys() -> None:
    d = LCNetConfig().to_dict() | {"depth": 4}
    with pytest.raises(ValueError, match=r"unknown keys \['depth'\]"):
        LCNetConfig.from_dict(d)
    with pytest.raises(ValueError, match="expected a mapping, got list"):
        LCNetConfig.from_dict([("widths", (8,))])


def test_config_is_frozen_and_architecture_diff_ignores_backend() -> None:
    config = LCNetConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.kernel_size = 3  # type: ignore[misc]
    other = dataclasses.replace(config, lc_backend="reference", kernel_size=3)
    assert config.architecture_diff(other) == {"kernel_size": (5, 3)}
    assert config.architecture_diff(dataclasses.replace(config, lc_backend="reference")) == {}


def test_non_default_config_builds_and_runs() -> None:
    config = LCNetConfig(
        widths=(4, 8),
        num_res_blocks=1,
        kernel_size=3,
        lcblocks_per_dblock=1,
        lc_backend="reference",
    )
    model = LCNet(config)
    assert config.size_multiple == 4
    x = torch.rand(1, 3, 6, 10)
    assert model(x).shape == x.shape
