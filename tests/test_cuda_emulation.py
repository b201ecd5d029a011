"""The tiled CUDA kernels' block code, run on the CPU, against the pure-PyTorch reference.

``_tiled_forward`` / ``_tiled_backward`` run the phases of csrc/tiled/tiled_kernels.h block by
block and thread by thread between the barriers, with the CUDA launcher's configuration
(csrc/cpu/tiled_emulation.cpp). Shapes are picked around the tile (8 x 32 pixels), the staged
channel chunk (8), the register chunks of output channels (16 per pass in every
kernel) and the window groups (7 / 4 column offsets, fewer at large dilations), so that
tiles straddle every border, images are smaller than a tile, channel counts are not multiples
of a chunk, and layouts mix. Shared memory starts as NaN in the emulator: a read of an element
that no phase staged poisons the result.

Tests marked ``cuda`` run the real kernels on a GPU (skipped without one).
"""

from __future__ import annotations

import pytest
import torch

from lcblock_cuda import reference

OPS = torch.ops.lcblock_cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

CONFIG = dict(
    zip(
        (
            "tile_h",
            "tile_w",
            "threads",
            "stage",
            "max_cols",
            "gather_group",
            "gather_out",
            "pattern_group",
            "pattern_out",
            "smem_bytes",
            "pattern_out_float64",
            "plane",
            "gather_barriers",
            "pattern_barriers",
            "pattern_barriers_float64",
            "delta_barriers",
        ),
        OPS._tiled_config(),
        strict=True,
    )
)

TOLERANCE = {  # (atol, rtol) against the float64 reference
    torch.float64: (1e-10, 1e-9),
    torch.float32: (3e-5, 3e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 8e-2),
}

LAYOUTS = {
    "nchw": (torch.contiguous_format, torch.contiguous_format, torch.contiguous_format),
    "nhwc": (torch.channels_last, torch.channels_last, torch.channels_last),
    # pattern, content, grad_out
    "mixed": (torch.channels_last, torch.contiguous_format, torch.channels_last),
    "mixed2": (torch.contiguous_format, torch.channels_last, torch.contiguous_format),
}


def make(b, cp, cc, h, w, dtype, layout="nchw", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cp, h, w, generator=g, dtype=torch.float64)
    c = torch.randn(b, cc, h, w, generator=g, dtype=torch.float64)
    dy = torch.randn(b, cc, h, w, generator=g, dtype=torch.float64)
    fx, fc, fdy = LAYOUTS[layout]
    return (
        x.to(dtype).contiguous(memory_format=fx),
        c.to(dtype).contiguous(memory_format=fc),
        dy.to(dtype).contiguous(memory_format=fdy),
    )


def run_ops(x, c, dy, k, d, s, fwd, bwd):
    y, lse = fwd(x, c, k, d, s)
    gx, gc = bwd(dy, x, c, y, lse, k, d, s)
    return y, lse, gx, gc


def expected(x, c, dy, k, d, s):
    x64 = x.detach().double().requires_grad_()
    c64 = c.detach().double().requires_grad_()
    y, lse = reference.local_correlation_with_lse(x64, c64, k, d, s)
    gx, gc = torch.autograd.grad(y, (x64, c64), dy.double())
    return y.detach(), lse.detach(), gx, gc


def check(x, c, dy, k, d, s=1.0, device="cpu", tolerance=None):
    if device == "cpu":
        fwd, bwd = OPS._tiled_forward, OPS._tiled_backward
    else:
        fwd, bwd = OPS.local_correlation_forward, OPS.local_correlation_backward
        x, c, dy = x.to(device), c.to(device), dy.to(device)
    got = run_ops(x, c, dy, k, d, s, fwd, bwd)
    want = expected(x.cpu(), c.cpu(), dy.cpu(), k, d, s)
    atol, rtol = tolerance or TOLERANCE[x.dtype]
    for name, a, e in zip(("out", "lse", "grad_pattern", "grad_content"), got, want, strict=True):
        assert a.shape == e.shape, name
        torch.testing.assert_close(
            a.cpu().double(), e, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )
    y, lse, gx, gc = got
    assert y.dtype == gx.dtype == gc.dtype == x.dtype
    assert lse.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    return got


def test_config_matches_the_documented_tile():
    assert CONFIG["tile_h"] * CONFIG["tile_w"] == CONFIG["threads"] == 256
    assert CONFIG["gather_out"] % CONFIG["stage"] == 0
    assert CONFIG["pattern_out"] % CONFIG["stage"] == 0
    assert CONFIG["smem_bytes"] <= 48 * 1024


# (B, Cp, Cc, H, W): 19 x 70 = 3 x 3 tiles (8 + 8 + 3 rows, 32 + 32 + 6 columns), so tiles
# straddle the bottom and right borders and interior tiles have halos on every side;
# 5 x 7 is smaller than one tile; 1 x 1 a single pixel.
GRID_SHAPES = [(1, 3, 5, 19, 70), (2, 2, 3, 5, 7)]


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", GRID_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_grid_float64(shape, kernel_size, dilation):
    check(*make(*shape, torch.float64), kernel_size, dilation, 0.8)


def test_single_pixel_and_window_larger_than_the_image():
    check(*make(2, 2, 3, 1, 1, torch.float64), 3, 1)
    # k = 41 covers a 9 x 13 image from every pixel; the tile skips nothing and clips all.
    check(*make(1, 4, 3, 9, 13, torch.float64), 41, 1)
    check(*make(1, 4, 3, 9, 13, torch.float64), 41, 3)


@pytest.mark.parametrize(
    ("cp", "cc"),
    [(1, 1), (7, 9), (9, 17), (17, 7), (8, 16), (20, 33)],
    ids=lambda v: str(v),
)
def test_channel_chunks_and_passes(cp, cc):
    # Cp > 8: logits over several staged chunks; Cc > 16 / Cp > 8: several output passes.
    check(*make(1, cp, cc, 11, 37, torch.float64), 5, 1, 0.5)


@pytest.mark.parametrize(("kernel_size", "dilation"), [(9, 1), (11, 2), (17, 1)])
def test_windows_wider_than_a_group(kernel_size, dilation):
    # Rows of 9-17 offsets: several groups of 7 (forward) / 4 (grad_pattern), the last partial.
    check(*make(1, 3, 4, 19, 70, torch.float64), kernel_size, dilation, 0.4)


@pytest.mark.parametrize("dilation", [5, 11, 40])
def test_large_dilations_shrink_the_window_groups(dilation):
    # k = 5: groups of 5 (forward) / 4 (grad_pattern) at d = 5; 3 / 3 at d = 11 (the region is
    # at most 64 columns); 1 / 1 at d = 40 (one tile wide).
    check(*make(1, 3, 4, 17, 90, torch.float64), 5, dilation, 0.7)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_layouts_are_native_and_follow_the_inputs(layout, dtype):
    x, c, dy = make(2, 5, 9, 10, 35, dtype, layout)
    y, lse, gx, gc = check(x, c, dy, 3, 2, 1.3)
    fx, fc, _ = LAYOUTS[layout]
    assert y.is_contiguous(memory_format=fc)
    assert gc.is_contiguous(memory_format=fc)
    assert gx.is_contiguous(memory_format=fx)
    assert lse.is_contiguous()


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_types_accumulate_in_float(dtype, layout):
    check(*make(1, 6, 10, 12, 40, dtype, layout), 5, 1, 0.5)


@pytest.mark.parametrize(
    "dtype",
    [torch.float64, torch.float32, torch.float16, torch.bfloat16],
    ids=["f64", "f32", "f16", "bf16"],
)
@pytest.mark.parametrize(("cp", "cc"), [(16, 24), (12, 8)])
def test_nhwc_vector_loads(cp, cc, dtype):
    # NHWC with 16-byte aligned pixels: whole 8-channel chunks are staged with vector loads;
    # 12 channels: a vector chunk, then a scalar tail of 4.
    check(*make(1, cp, cc, 9, 40, dtype, "nhwc"), 5, 2, 0.3)


def test_misaligned_nhwc_views_fall_back_to_scalar_loads():
    x, c, dy = make(1, 17, 9, 9, 40, torch.float32, "nhwc")
    xs = x[:, 1:]  # 16 channels, but the view starts 4 bytes into each pixel
    assert xs.is_contiguous(memory_format=torch.channels_last) is False
    check(xs, c, dy, 3, 1, 0.3)


def test_strided_inputs_are_read_in_place():
    x, c, dy = make(1, 4, 3, 9, 40, torch.float64)
    wide = torch.zeros(1, 4, 9, 80, dtype=torch.float64)
    wide[..., ::2] = x
    xs = wide[..., ::2]
    ct = c.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xs.is_contiguous() and not ct.is_contiguous()
    check(xs, ct, dy, 5, 1)


def test_large_logits_stay_finite():
    x, c, dy = make(1, 8, 3, 9, 35, torch.float32)
    # logits of a few thousand: float32 keeps ~1e-4 of them, hence the looser tolerance.
    got = check(x * 20.0, c, dy, 5, 1, tolerance=(5e-4, 1e-3))
    assert all(torch.isfinite(t).all() for t in got)


def test_empty_inputs_and_zero_channels():
    x, c, dy = make(0, 3, 4, 5, 6, torch.float64)
    y, lse, gx, gc = run_ops(x, c, dy, 3, 1, 1.0, OPS._tiled_forward, OPS._tiled_backward)
    assert y.shape == (0, 4, 5, 6) and lse.shape == (0, 5, 6) and gx.shape == x.shape
    # No content channels: out is empty but lse is still written (the reference needs one
    # channel, which does not change lse).
    x, c, dy = make(1, 3, 1, 9, 35, torch.float64)
    y, lse, gx, gc = run_ops(
        x, c[:, :0], dy[:, :0], 3, 1, 1.0, OPS._tiled_forward, OPS._tiled_backward
    )
    want = expected(x, c, dy, 3, 1, 1.0)
    assert y.shape == (1, 0, 9, 35) and gc.shape == (1, 0, 9, 35)
    torch.testing.assert_close(lse, want[1])
    torch.testing.assert_close(gx, torch.zeros_like(gx))
    # No pattern channels: every logit is 0, as with an all-zero pattern channel.
    y, lse, gx, gc = run_ops(x[:, :0], c, dy, 3, 1, 1.0, OPS._tiled_forward, OPS._tiled_backward)
    want = expected(torch.zeros_like(x[:, :1]), c, dy, 3, 1, 1.0)
    torch.testing.assert_close(y, want[0])
    torch.testing.assert_close(lse, want[1])
    torch.testing.assert_close(gc, want[3])
    assert gx.shape == (1, 0, 9, 35)


def test_matches_the_cpu_kernels_bitwise_stable_across_runs():
    x, c, dy = make(1, 6, 5, 10, 40, torch.float32, "nhwc")
    first = run_ops(x, c, dy, 7, 1, 1.0, OPS._tiled_forward, OPS._tiled_backward)
    second = run_ops(x, c, dy, 7, 1, 1.0, OPS._tiled_forward, OPS._tiled_backward)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    cpu = run_ops(
        x, c, dy, 7, 1, 1.0, OPS.local_correlation_forward, OPS.local_correlation_backward
    )
    for a, b in zip(first, cpu, strict=True):
        torch.testing.assert_close(a, b, atol=3e-5, rtol=3e-4)


def test_bad_arguments_are_rejected_like_the_public_op():
    x, c, _ = make(1, 2, 2, 4, 4, torch.float32)
    with pytest.raises(RuntimeError, match="kernel_size"):
        OPS._tiled_forward(x, c, 4, 1, 1.0)
    with pytest.raises(RuntimeError, match="dilation"):
        OPS._tiled_forward(x, c, 3, 0, 1.0)


# ---- the real kernels on a GPU ------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    "dtype",
    [torch.float64, torch.float32, torch.float16, torch.bfloat16],
    ids=["f64", "f32", "f16", "bf16"],
)
@pytest.mark.parametrize(("k", "d"), [(1, 1), (3, 2), (7, 1), (5, 11), (41, 1)])
def test_cuda_kernels_match_reference(k, d, dtype, layout):
    x, c, dy = make(2, 9, 18, 19, 70, dtype, layout)
    y, _, gx, gc = check(x, c, dy, k, d, 0.7, device="cuda")
    fx, fc, _ = LAYOUTS[layout]
    assert y.is_contiguous(memory_format=fc) and gc.is_contiguous(memory_format=fc)
    assert gx.is_contiguous(memory_format=fx)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cuda_kernels_match_their_cpu_emulation(layout):
    x, c, dy = make(1, 36, 36, 40, 70, torch.float32, layout)
    emulated = run_ops(x, c, dy, 7, 1, 1.0, OPS._tiled_forward, OPS._tiled_backward)
    on_gpu = run_ops(
        x.cuda(),
        c.cuda(),
        dy.cuda(),
        7,
        1,
        1.0,
        OPS.local_correlation_forward,
        OPS.local_correlation_backward,
    )
    for a, b in zip(emulated, on_gpu, strict=True):
        torch.testing.assert_close(a, b.cpu(), atol=1e-5, rtol=1e-4)


@pytest.mark.cuda
@needs_cuda
def test_cuda_backward_is_bitwise_deterministic():
    x, c, dy = make(2, 16, 16, 40, 50, torch.float32)
    x, c, dy = x.cuda(), c.cuda(), dy.cuda()
    ops = (OPS.local_correlation_forward, OPS.local_correlation_backward)
    first = run_ops(x, c, dy, 7, 1, 1.0, *ops)
    second = run_ops(x, c, dy, 7, 1, 1.0, *ops)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
