"""LCNet: encoder-decoder deblurring network built on LCBlocks (Su, Yuan, Wang, section 2).

Reads top to bottom: configuration, building blocks (ResBlock, EBlock, LCBlock, DBlock), then
the network. Layout everywhere is (B, C, H, W); images are RGB in [0, 1]. Shapes for the
default widths (18, 36, 72), for an input whose H and W are multiples of 8 (others are padded,
see :meth:`LCNet.forward`)::

    input                         (B,  3, H,   W)
    EBlock 1: conv s2 + 3 res     (B, 18, H/2, W/2)  -> skip s1
    EBlock 2: conv s2 + 3 res     (B, 36, H/4, W/4)  -> skip s2
    EBlock 3: conv s2 + 3 res     (B, 72, H/8, W/8)
    DBlock 1: 2 LCBlock(72), conv 72 -> 4*36, PixelShuffle(2)   (B, 36, H/4, W/4)  + s2
    DBlock 2: 2 LCBlock(36), conv 36 -> 4*18, PixelShuffle(2)   (B, 18, H/2, W/2)  + s1
    DBlock 3: 2 LCBlock(18), conv 18 -> 4*3,  PixelShuffle(2)   (B,  3, H,   W)    + input

All convolutions are 3x3 (paper section 2.1) with Xavier-uniform weights and zero biases
(section 3.1); every LeakyReLU has negative slope 0.2; there is no normalisation.

How the widths were chosen. The paper prints no channel widths, only a model size of 2.7
(against 289.5 for Nah et al.) in Table 1. Read as MiB of float32 parameters, that is about
0.71 M parameters. We keep the usual encoder doubling (c, 2c, 4c) of Nah et al., SRN and
DeblurGAN, and pick the base width c. The count is quadratic in c, and c must be even
(LCBlocks squeeze C -> C/2):

    c = 16: 554,252 parameters = 2.11 MiB
    c = 18: 700,968 parameters = 2.67 MiB   <- the only even c within 2.7 MiB +- 10 %
    c = 20: 864,892 parameters = 3.30 MiB

So the default model holds exactly 700,968 float32 parameters = 2,803,872 bytes = 2.674 MiB:
encoder 397,944, LCBlocks 184,212, upsampling convs 118,812.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import lcblock_cuda
from lcblock_cuda import LocalCorrelation

__all__ = [
    "INITS",
    "LC_BACKENDS",
    "LC_LOGITS",
    "LCBlock",
    "LCNet",
    "LCNetConfig",
    "pad_to_multiple",
]

logger = logging.getLogger(__name__)

LC_BACKENDS = ("fused", "reference", "decomposed")
#: Weight initialisations: "xavier" is the paper's (section 3.1) everywhere; "identity" also
#: zeroes the last convolution of every residual branch (ResBlock, LCBlock) and the output
#: convolution, so the untrained network returns its input (docs/DESIGN.md, 'Training recipe').
INITS = ("xavier", "identity")
#: LCBlock logits: "dot" is eq. 3 of the paper (scale * <p_i, p_j>); "cosine" normalises the
#: pattern features per pixel and multiplies the cosine similarity by a learned temperature
#: (Swin v2), which bounds the logits (docs/DESIGN.md, 'Training recipe').
LC_LOGITS = ("dot", "cosine")
#: Initial temperature and upper bound of the "cosine" logits.
COSINE_INIT_TEMPERATURE = 10.0
COSINE_MAX_TEMPERATURE = 100.0
CONV_KERNEL_SIZE = 3  # every convolution of LCNet (paper section 2.1)
SCALE_FACTOR = 2  # EBlock conv stride and DBlock PixelShuffle factor (rates 0.5 and 2)
FLOAT32_BYTES = 4
BYTES_PER_MIB = 2**20


# --------------------------------------------------------------------------- configuration


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; `True` as a width is a bug, not a request for 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"LCNetConfig: expected {name} to be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"LCNetConfig: expected {name} >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: object, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"LCNetConfig: expected {name} to be a float, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"LCNetConfig: expected {name} to be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"LCNetConfig: expected {name} >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class LCNetConfig:
    """Hyper-parameters of :class:`LCNet`. Frozen; use ``dataclasses.replace`` to vary one.

    Attributes:
        widths: channels of the EBlock outputs, shallowest first; one EBlock and one DBlock per
            entry, so inputs are padded to a multiple of ``2 ** len(widths)`` (8 by default).
            Each width must be divisible by ``squeeze``.
        in_channels: image channels (3 for RGB); the output has the same number.
        num_res_blocks: res-blocks per EBlock.
        kernel_size: odd LCBlock window size (the paper does not give it; 5 by default).
        dilation: spacing between LCBlock window taps.
        scale: multiplier of the LCBlock dot products (1.0 is eq. 3 of the paper).
        squeeze: LCBlock's pattern/content convs map C -> C // squeeze channels.
        negative_slope: slope of every LeakyReLU.
        lcblocks_per_dblock: LCBlocks at the start of each DBlock.
        lc_backend: ``"fused"`` (compiled lcblock_cuda kernels), ``"reference"`` (pure
            PyTorch, slow) or ``"decomposed"`` (standard ops, the ONNX export mode). Not
            part of the architecture: weights move freely between backends.
        init: ``"xavier"`` (the paper) or ``"identity"`` (residual branches and the output
            convolution start at zero: the untrained network is the identity). Only affects
            fresh weights; not part of the architecture.
        lc_logits: ``"dot"`` (the paper's dot products times ``scale``) or ``"cosine"``
            (cosine similarity times a learned temperature per LCBlock; adds one parameter
            per LCBlock).
    """

    widths: tuple[int, ...] = (18, 36, 72)
    in_channels: int = 3
    num_res_blocks: int = 3
    kernel_size: int = 5
    dilation: int = 1
    scale: float = 1.0
    squeeze: int = 2
    negative_slope: float = 0.2
    lcblocks_per_dblock: int = 2
    lc_backend: str = "fused"
    init: str = "xavier"
    lc_logits: str = "dot"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields in place once
        if isinstance(self.widths, (str, bytes)) or not isinstance(self.widths, Sequence):
            raise ValueError(
                f"LCNetConfig: expected widths to be a sequence of ints, got {self.widths!r}"
            )
        if len(self.widths) == 0:
            raise ValueError("LCNetConfig: expected widths to hold at least one width, got ()")
        set_(self, "widths", tuple(_check_int("widths", w, 1) for w in self.widths))
        set_(self, "in_channels", _check_int("in_channels", self.in_channels, 1))
        set_(self, "num_res_blocks", _check_int("num_res_blocks", self.num_res_blocks, 0))
        set_(self, "kernel_size", _check_int("kernel_size", self.kernel_size, 1))
        if self.kernel_size % 2 == 0:
            raise ValueError(f"LCNetConfig: expected kernel_size to be odd, got {self.kernel_size}")
        set_(self, "dilation", _check_int("dilation", self.dilation, 1))
        set_(self, "scale", _check_float("scale", self.scale))
        set_(self, "squeeze", _check_int("squeeze", self.squeeze, 1))
        bad = [w for w in self.widths if w % self.squeeze]
        if bad:
            raise ValueError(
                f"LCNetConfig: expected every width in widths={self.widths} to be divisible by "
                f"squeeze={self.squeeze}, got {bad}"
            )
        set_(self, "negative_slope", _check_float("negative_slope", self.negative_slope, 0.0))
        set_(
            self,
            "lcblocks_per_dblock",
            _check_int("lcblocks_per_dblock", self.lcblocks_per_dblock, 0),
        )
        if self.lc_backend not in LC_BACKENDS:
            raise ValueError(
                f"LCNetConfig: expected lc_backend to be one of {LC_BACKENDS}, "
                f"got {self.lc_backend!r}"
            )
        for name, allowed in (("init", INITS), ("lc_logits", LC_LOGITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"LCNetConfig: expected {name} to be one of {allowed}, "
                    f"got {getattr(self, name)!r}"
                )

    @property
    def size_multiple(self) -> int:
        """Inputs are padded so that H and W are multiples of this (2 ** number of levels)."""
        return SCALE_FACTOR ** len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (widths as a list) that :meth:`from_dict` reads back."""
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LCNetConfig:
        """Build a config from :meth:`to_dict` output.

        Unknown keys raise ``ValueError`` (a checkpoint from another model or version); missing
        keys take their defaults. Values are validated as in the constructor.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"LCNetConfig.from_dict: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"LCNetConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**d)

    def architecture_diff(self, other: LCNetConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ from ``other`` as ``{name: (self_value, other_value)}``.

        ``lc_backend`` and ``init`` are left out: they change how the LCBlocks compute or how
        fresh weights are drawn, not the weights' shapes. An empty dict means a state dict of
        one model loads into the other.
        """
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ("lc_backend", "init")
            and getattr(self, f.name) != getattr(other, f.name)
        }


# --------------------------------------------------------------------------- building blocks


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, 'same' padding, Xavier-uniform weight and zero bias (paper 3.1)."""
    conv = nn.Conv2d(
        in_channels, out_channels, CONV_KERNEL_SIZE, stride=stride, padding=CONV_KERNEL_SIZE // 2
    )
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    """conv - LeakyReLU - conv + identity; no normalisation, no post-activation (EDSR style)."""

    def __init__(self, channels: int, negative_slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels),
            nn.LeakyReLU(negative_slope),
            conv3x3(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EBlock(nn.Sequential):
    """Stride-2 conv + LeakyReLU, then res-blocks: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_res_blocks: int, negative_slope: float
    ) -> None:
        super().__init__(
            conv3x3(in_channels, out_channels, stride=SCALE_FACTOR),
            nn.LeakyReLU(negative_slope),
            *(ResBlock(out_channels, negative_slope) for _ in range(num_res_blocks)),
        )


class LCBlock(nn.Module):
    """Local correlation block (paper section 2.2), shape-preserving: (B, C, H, W) -> same.

    ``pattern = conv(C -> C/r)(x)``, ``content = conv(C -> C/r)(x)``,
    ``y = local_correlation(pattern, content, kernel_size, dilation, scale)`` (softmax of
    pattern dot products over a k x k window, weights applied to content; out-of-image
    neighbours are masked out), ``out = x + conv(C/r -> C)(y)``. Usable in any network.

    Args:
        channels: C, divisible by ``squeeze``.
        kernel_size: odd window size >= 1.
        dilation: spacing between window taps, >= 1.
        scale: multiplier of the dot products.
        squeeze: r, the channel reduction of the pattern and content features.
        backend: ``"fused"`` (compiled kernels), ``"reference"`` (pure PyTorch) or
            ``"decomposed"`` (standard ops; the ONNX export mode).
        logits: ``"dot"`` (eq. 3: ``scale * <p_i, p_j>``) or ``"cosine"``: the pattern
            features are L2-normalised per pixel and multiplied by ``sqrt(t)``, so the logits are
            ``t * cos(p_i, p_j)`` with a learned temperature ``t = exp(log_temperature)``
            (clamped to ``COSINE_MAX_TEMPERATURE``); ``scale`` then multiplies ``t``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 5,
        dilation: int = 1,
        scale: float = 1.0,
        squeeze: int = 2,
        backend: str = "fused",
        logits: str = "dot",
    ) -> None:
        super().__init__()
        if logits not in LC_LOGITS:
            raise ValueError(f"LCBlock: expected logits to be one of {LC_LOGITS}, got {logits!r}")
        for name, value in (("channels", channels), ("squeeze", squeeze)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"LCBlock: expected {name} to be an int >= 1, got {value!r}")
        if channels % squeeze:
            raise ValueError(
                f"LCBlock: expected channels divisible by squeeze, got channels={channels}, "
                f"squeeze={squeeze}"
            )
        inner = channels // squeeze
        self.pattern = conv3x3(channels, inner)
        self.content = conv3x3(channels, inner)
        self.correlation = LocalCorrelation(kernel_size, dilation, scale, backend)
        self.expand = conv3x3(inner, channels)
        self.logits = logits
        if logits == "cosine":
            self.log_temperature = nn.Parameter(torch.tensor(math.log(COSINE_INIT_TEMPERATURE)))

    @property
    def backend(self) -> str:
        return self.correlation.backend

    def set_backend(self, backend: str) -> None:
        """Switch between ``"fused"`` and ``"reference"``; the weights are untouched."""
        c = self.correlation
        self.correlation = LocalCorrelation(c.kernel_size, c.dilation, c.scale, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.correlation.backend == "fused" and lcblock_cuda.extension_error() is not None:
            raise RuntimeError(
                "LCBlock: backend 'fused' needs the compiled lcblock_cuda kernels, which did not "
                f"load ({lcblock_cuda.extension_error()}). Build them "
                "(pip install --no-build-isolation .) or use the pure-PyTorch backend: "
                "LCNetConfig(lc_backend='reference'), model.set_lc_backend('reference') or "
                "LCBlock(..., backend='reference')."
            ) from lcblock_cuda.extension_error()
        pattern = self.pattern(x)
        if self.logits == "cosine":
            pattern = F.normalize(pattern, dim=1) * self.temperature().sqrt()
        y = self.correlation(pattern, self.content(x))
        return x + self.expand(y)

    def temperature(self) -> torch.Tensor:
        """The learned temperature of the "cosine" logits (clamped)."""
        return self.log_temperature.clamp(max=math.log(COSINE_MAX_TEMPERATURE)).exp()


class DBlock(nn.Module):
    """LCBlocks, then conv to 4*C_out and PixelShuffle(2): (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, config: LCNetConfig) -> None:
        super().__init__()
        self.lcblocks = nn.Sequential(
            *(
                LCBlock(
                    in_channels,
                    config.kernel_size,
                    config.dilation,
                    config.scale,
                    config.squeeze,
                    config.lc_backend,
                    config.lc_logits,
                )
                for _ in range(config.lcblocks_per_dblock)
            )
        )
        self.upsample = nn.Sequential(
            conv3x3(in_channels, out_channels * SCALE_FACTOR**2),
            nn.PixelShuffle(SCALE_FACTOR),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.lcblocks(x))


def _pad_end(x: torch.Tensor, dim: int, padded, multiple: int) -> torch.Tensor:
    # Pad ``dim`` at its end to length ``padded`` (size <= padded < size + multiple): reflect
    # padding, or replicate where the side is too short to reflect (pad >= size, only possible
    # for sides < multiple). The reflection is a gather with indices i (inside) and
    # 2 * (size - 1) - i (beyond the end), the same values as F.pad(mode="reflect"). Written so
    # because torch.export cannot prove F.pad's or a slice's bound checks for a dynamic side;
    # an index tensor of length ``padded`` needs no proof, and the size test is on the size
    # alone (decided from the range when the side's minimum is >= multiple).
    size = x.shape[dim]
    if size < multiple and padded - size >= size:
        widths = (0, padded - size, 0, 0) if dim == x.dim() - 1 else (0, 0, 0, padded - size)
        return F.pad(x, widths, mode="replicate")
    i = torch.arange(padded, device=x.device)
    return x.index_select(dim, torch.where(i < size, i, 2 * (size - 1) - i))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right so H and W are multiples of ``multiple``.

    Reflect padding where the side is long enough (pad < side), replicate otherwise. No branch
    on the size for sides >= ``multiple``, so LCNet exports with dynamic H and W
    (docs/op.md, "Export").
    """
    height, width = x.shape[-2:]
    # The padded side written as multiple * ceil(side / multiple), not side + (-side % multiple):
    # the same number, but torch.export then knows it is a multiple (the skip connections'
    # shapes agree for every size, with no guard).
    x = _pad_end(x, x.dim() - 1, multiple * ((width + multiple - 1) // multiple), multiple)
    return _pad_end(x, x.dim() - 2, multiple * ((height + multiple - 1) // multiple), multiple)


def crop_to(x: torch.Tensor, height, width) -> torch.Tensor:
    """The top-left (height, width) of (B, C, H', W') with H' >= height, W' >= width.

    ``x[..., :height, :width]`` in eager mode; under torch.export (symbolic sizes) a gather of
    the first rows and columns, because a slice's bound check (height <= H') is a guard that
    torch.export cannot prove for a dynamic side padded to a multiple.
    """
    if isinstance(height, int) and isinstance(width, int):
        return x[..., :height, :width]
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


# --------------------------------------------------------------------------- the network


class LCNet(nn.Module):
    """LCNet (paper section 2.1): blurry (B, C, H, W) in [0, 1] -> deblurred (B, C, H, W).

    Any H, W >= 1 are accepted: the input is padded (see :func:`pad_to_multiple`) to a multiple
    of ``config.size_multiple``, run, and cropped back. The output is ``input + residual`` and is
    not clamped (clamp before converting to images; :func:`lcnet.metrics.to_uint8` does).
    Works in any floating dtype the chosen LCBlock backend supports.
    """

    def __init__(self, config: LCNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LCNetConfig()
        cfg = self.config
        ins = (cfg.in_channels, *cfg.widths[:-1])
        self.encoders = nn.ModuleList(
            EBlock(c_in, c_out, cfg.num_res_blocks, cfg.negative_slope)
            for c_in, c_out in zip(ins, cfg.widths, strict=True)
        )
        self.decoders = nn.ModuleList(
            DBlock(c_in, c_out, cfg)
            for c_in, c_out in zip(reversed(cfg.widths), reversed(ins), strict=True)
        )
        if cfg.init == "identity":
            self._zero_residual_branches()

    def _zero_residual_branches(self) -> None:
        # SkipInit / Fixup: every residual branch ends in a zero convolution and so does the
        # output convolution, so the network starts as the identity (output = blurry input) and
        # early updates cannot add noise on top of the global residual (docs/DESIGN.md,
        # 'Training recipe').
        for module in self.modules():
            if isinstance(module, ResBlock):
                last = module.body[-1]
            elif isinstance(module, LCBlock):
                last = module.expand
            else:
                continue
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        out_conv = self.decoders[-1].upsample[0]
        nn.init.zeros_(out_conv.weight)
        nn.init.zeros_(out_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"LCNet: expected input of shape (B, {self.config.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"LCNet: expected a floating-point input, got {x.dtype}")
        height, width = x.shape[-2:]
        if height == 0 or width == 0:
            raise ValueError(f"LCNet: expected non-empty H and W, got {tuple(x.shape)}")
        padded = pad_to_multiple(x, self.config.size_multiple)

        skips = []
        feat = padded
        for encoder in self.encoders:
            feat = encoder(feat)
            skips.append(feat)
        feat = skips.pop()  # the deepest EBlock output feeds the first DBlock directly
        for decoder in self.decoders:
            # Skip from the EBlock of the same size; the last DBlock adds the blurry input.
            feat = decoder(feat) + (skips.pop() if skips else padded)
        return crop_to(feat, height, width)

    def set_lc_backend(self, backend: str) -> LCNet:
        """Switch every LCBlock to ``"fused"`` or ``"reference"`` in place; returns self."""
        if backend not in LC_BACKENDS:
            raise ValueError(
                f"LCNet.set_lc_backend: expected backend to be one of {LC_BACKENDS}, "
                f"got {backend!r}"
            )
        for module in self.modules():
            if isinstance(module, LCBlock):
                module.set_backend(backend)
        self.config = dataclasses.replace(self.config, lc_backend=backend)
        logger.info("LCNet: LCBlocks now use the %r backend", backend)
        return self

    @torch.no_grad()
    def lc_logit_bounds(self, x: torch.Tensor) -> list[float]:
        """Largest LCBlock logit of every LCBlock (deepest first) on input ``x``: for "dot"
        logits ``scale * max_i |p_i|^2`` (the self term bounds every ``<p_i, p_j>``), for
        "cosine" ``scale * temperature``. A diagnostic of the training log: unbounded dot
        products make the softmax saturate (docs/DESIGN.md, 'Training recipe')."""
        found: list[float] = []

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
            assert isinstance(module, LCBlock)
            scale = module.correlation.scale
            if module.logits == "cosine":
                found.append(float(module.temperature()) * scale)
            else:
                found.append(float(module.pattern(inputs[0]).pow(2).sum(1).max()) * scale)

        blocks = [m for m in self.modules() if isinstance(m, LCBlock)]
        handles = [b.register_forward_hook(hook) for b in blocks]
        was_training = self.training
        try:
            self.eval()
            self(x)
        finally:
            self.train(was_training)
            for h in handles:
                h.remove()
        return found

    def num_parameters(self) -> int:
        """Number of parameters (700,968 for the default config)."""
        return sum(p.numel() for p in self.parameters())

    def size_mib(self) -> float:
        """Parameter size in MiB as float32 (4 bytes each), whatever the current dtype."""
        return self.num_parameters() * FLOAT32_BYTES / BYTES_PER_MIB
