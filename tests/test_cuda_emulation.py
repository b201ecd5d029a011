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

import contextlib

import numpy as np
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


# ---- the emulator is no kinder than a GPU -------------------------------------------------

ORDERS = {"ascending": 0, "reversed": 1, "shuffled": 2, "mixed": 3}


@contextlib.contextmanager
def thread_order(name):
    """Runs the emulator's phases in one thread order (docs/cuda.md, "The emulator")."""
    previous = OPS._tiled_emulation_order(ORDERS[name])
    try:
        yield
    finally:
        OPS._tiled_emulation_order(previous)


ORDER_CASES = {  # (shape, dtype, layout, k, d): chunks, passes, groups, both staging paths
    "f64-chunks-passes": ((1, 20, 33, 11, 37), torch.float64, "nchw", 5, 1),
    "f32-nhwc-vector-groups": ((1, 16, 24, 9, 40), torch.float32, "nhwc", 9, 1),
    "f16-nhwc-scalar": ((2, 9, 18, 12, 40), torch.float16, "nhwc", 3, 2),
    "bf16-mixed": ((1, 12, 8, 10, 35), torch.bfloat16, "mixed", 7, 1),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_every_thread_order_gives_the_same_bits(case):
    # A GPU runs a block's threads between two barriers in no defined order: results must not
    # depend on it. The default order ("mixed") rotates the other three by phase and block.
    shape, dtype, layout, k, d = ORDER_CASES[case]
    x, c, dy = make(*shape, dtype, layout)
    results = {}
    for name in ORDERS:
        with thread_order(name):
            results[name] = check(x, c, dy, k, d, 0.6)
    for name, got in results.items():
        for a, b in zip(got, results["mixed"], strict=True):
            assert torch.equal(a, b), f"order {name} differs from mixed"


def test_thread_order_rejects_unknown_orders():
    with pytest.raises(RuntimeError, match="order must be 0 .* got 4"):
        OPS._tiled_emulation_order(4)


def with_border(t, values=(float("inf"), float("nan"), -float("inf"))):
    """t with non-finite values on every border pixel of every channel."""
    t = t.clone()
    h, w = t.shape[-2:]
    t[..., 0, :] = values[0]
    t[..., h - 1, :] = values[1]
    t[..., :, 0] = values[2]
    t[..., :, w - 1] = values[0]
    return t


def border_distance(h, w):
    """Chebyshev distance of every pixel to the nearest border pixel, (h, w)."""
    rows = torch.arange(h).view(h, 1)
    cols = torch.arange(w).view(1, w)
    return torch.minimum(torch.minimum(rows, h - 1 - rows), torch.minimum(cols, w - 1 - cols))


NON_FINITE_CASES = [
    # (cp, cc, dtype, layout, k, d): scalar and vector staging, a window of one group, k = 9
    # (the group of 7 offsets 3..9 reaches 5 columns beyond the radius: in-image pixels
    # outside the window), dilation 2.
    (3, 5, torch.float32, "nchw", 3, 1),
    (3, 5, torch.float32, "nhwc", 9, 1),
    (16, 16, torch.float32, "nhwc", 9, 1),
    (16, 24, torch.float16, "nhwc", 5, 2),
    (9, 18, torch.bfloat16, "mixed", 9, 1),
    (4, 3, torch.float64, "nchw", 9, 1),
]


def check_non_finite_outside_windows(cp, cc, dtype, layout, k, d, device):
    """inf/NaN on the image border must reach only the outputs whose window holds them: the
    forward's out and lse within r·d of the border, the gradients within 2·r·d (their sums run
    over the neighbours' windows too). Elsewhere every output is finite and equals the
    reference of the same inputs with the border zeroed, which those outputs do not read."""
    h, w = 27, 70  # 4 x 3 tiles: tiles straddle the bottom and right borders
    x, c, dy = make(1, cp, cc, h, w, dtype, layout)
    bad = [
        with_border(t).contiguous(memory_format=m)
        for t, m in zip((x, c, dy), LAYOUTS[layout], strict=True)
    ]
    if device == "cpu":
        fwd, bwd = OPS._tiled_forward, OPS._tiled_backward
    else:
        fwd, bwd = OPS.local_correlation_forward, OPS.local_correlation_backward
        bad = [t.to(device) for t in bad]
    got = [t.cpu() for t in run_ops(*bad, k, d, 0.5, fwd, bwd)]
    zeroed = [torch.nan_to_num(t.double(), nan=0.0, posinf=0.0, neginf=0.0) for t in bad]
    zeroed = [t.cpu() for t in zeroed]
    for t in zeroed:  # the border is zeroed, the interior is the same
        t[..., 0, :] = t[..., -1, :] = 0
        t[..., :, 0] = t[..., :, -1] = 0
    want = expected(*zeroed, k, d, 0.5)
    r = k // 2
    dist = border_distance(h, w)
    atol, rtol = TOLERANCE[dtype]
    for name, a, e, reach in zip(
        ("out", "lse", "grad_pattern", "grad_content"),
        got,
        want,
        (r * d, r * d, 2 * r * d, 2 * r * d),
        strict=True,
    ):
        clean = dist > reach
        assert clean.any(), name
        a = a.double()[..., clean] if a.dim() == 4 else a.double()[:, clean]
        e = e[..., clean] if e.dim() == 4 else e[:, clean]
        assert torch.isfinite(a).all(), f"{name}: non-finite values outside their windows leaked"
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    ("cp", "cc", "dtype", "layout", "k", "d"), NON_FINITE_CASES, ids=lambda v: str(v).split(".")[-1]
)
def test_non_finite_values_outside_a_window_never_reach_its_outputs(cp, cc, dtype, layout, k, d):
    check_non_finite_outside_windows(cp, cc, dtype, layout, k, d, "cpu")


# The shared-memory trace of one block: which thread stored or loaded which slot, and the
# value (csrc/cpu/tiled_emulation.cpp, _tiled_smem_trace).
PLANE = CONFIG["plane"]
REGION_SLOTS = CONFIG["stage"] * PLANE  # the kStage staged channel planes
PIXEL_PLANE = CONFIG["tile_h"] * CONFIG["max_cols"]  # an lse or D plane of the region
KERNELS = {0: "forward", 2: "grad_content", 3: "grad_pattern"}


def smem_trace(x, c, dy, k, d, block):
    rows, values = OPS._tiled_smem_trace(x, c, dy, k, d, block)
    kernel, phase, thread, kind, slot = rows.T.numpy()
    return kernel, phase, thread, kind, slot, values.numpy()


def encoded(b, ch, h, w, dtype, layout_format):
    """Every element 1 + 10000·channel + 100·row + column, so a staged value names its source
    pixel (exact in float32 and float64 for these sizes)."""
    cc, hh, ww = torch.meshgrid(torch.arange(ch), torch.arange(h), torch.arange(w), indexing="ij")
    t = (1 + 10000 * cc + 100 * hh + ww).to(torch.float64).expand(b, ch, h, w)
    return t.to(dtype).contiguous(memory_format=layout_format)


HALO_CASES = {  # (cp, cc, dtype, layout, height, width, k, d, block)
    "nchw-top-left": (3, 5, torch.float32, "nchw", 27, 70, 5, 1, 0),
    "nchw-bottom-right": (3, 5, torch.float32, "nchw", 27, 70, 5, 1, 11),
    "nhwc-scalar": (5, 3, torch.float32, "nhwc", 27, 70, 7, 2, 11),
    "nhwc-vector": (16, 8, torch.float32, "nhwc", 27, 70, 5, 1, 0),
    "nhwc-vector-bottom-right": (16, 16, torch.float64, "nhwc", 27, 70, 9, 1, 11),
    "smaller-than-a-tile": (8, 9, torch.float32, "mixed", 6, 20, 5, 3, 0),
}


@pytest.mark.parametrize("case", list(HALO_CASES))
def test_the_halo_is_staged_as_zeros(case):
    # Out-of-image pixels of a region are staged as 0, in every staging path and in the lse /
    # D planes of the backward, never clamped to the border. The kernels never read those
    # slots into a sum (the weight rule skips them), so outputs cannot show a clamped halo:
    # this test reads shared memory itself. Each staged value names its source pixel; within
    # one staged plane the in-image values must be one translate of the region (row0 + r,
    # col0 + q), and exactly the slots whose pixel is outside the image must hold 0.
    cp, cc, dtype, layout, h, w, k, d, block = HALO_CASES[case]
    fx, fc, fdy = LAYOUTS[layout]
    x = encoded(1, cp, h, w, dtype, fx)
    c = encoded(1, cc, h, w, dtype, fc)
    dy = encoded(1, cc, h, w, dtype, fdy)
    kernel, phase, _, kind, slot, value = smem_trace(x, c, dy, k, d, block)
    store = kind == 0
    checked = {"region": 0, "pixel planes": 0}
    for kn in KERNELS:
        for ph in np.unique(phase[store & (kernel == kn)]):
            sel = store & (kernel == kn) & (phase == ph)
            s, v = slot[sel], value[sel]
            region_inside = None
            for p in np.unique(s[s < REGION_SLOTS] // PLANE):
                on = (s >= p * PLANE) & (s < (p + 1) * PLANE)
                e, val = s[on] - p * PLANE, v[on]
                assert len(e) % CONFIG["tile_h"] == 0 and len(np.unique(e)) == len(e)
                cols = len(e) // CONFIG["tile_h"]
                r, q = e // cols, e % cols
                nz = val != 0
                src = val[nz].astype(np.int64) - 1
                channel, row, col = src // 10000, (src // 100) % 100, src % 100
                where = f"{KERNELS[kn]} phase {ph} plane {p}"
                assert len(np.unique(channel)) <= 1, f"{where}: several source channels"
                row0, col0 = np.unique(row - r[nz]), np.unique(col - q[nz])
                assert len(row0) == 1 and len(col0) == 1, f"{where}: halo filled from image pixels"
                inside = (row0[0] + r >= 0) & (row0[0] + r < h) & (col0[0] + q >= 0)
                inside &= col0[0] + q < w
                assert np.array_equal(nz, inside), f"{where}: out-of-image slots not zero"
                checked["region"] += int((~inside).sum())
                if p == 0:
                    region_inside = dict(zip(e.tolist(), inside.tolist(), strict=True))
            pix = s >= REGION_SLOTS
            if pix.any():  # lse and D planes, staged with the region's channel 0
                assert region_inside is not None
                e = (s[pix] - REGION_SLOTS) % PIXEL_PLANE
                inside = np.array([region_inside[i] for i in e.tolist()])
                assert np.array_equal(v[pix] != 0, inside), f"{KERNELS[kn]} phase {ph}: lse/D halo"
                checked["pixel planes"] += int((~inside).sum())
    assert checked["region"] > 0 and checked["pixel planes"] > 0, checked  # halos were met


@pytest.mark.parametrize(
    "dtype",
    [torch.float16, torch.bfloat16, torch.float32, torch.float64],
    ids=["f16", "bf16", "f32", "f64"],
)
@pytest.mark.parametrize(("cp", "cc"), [(16, 24), (24, 16)])
def test_vector_unpack_stages_the_scalar_paths_bits(cp, cc, dtype):
    # NHWC with 16 and 24 channels stages whole 8-channel chunks with 16-byte loads and the
    # unpack of stage_pixel; NCHW stages the same elements one by one. Everything after the
    # staging is the same code in the same order, so all four results must be bitwise equal:
    # a wrong half, word or lane of the unpack shows, whatever the tolerance of the dtype.
    x, c, dy = make(1, cp, cc, 12, 40, dtype, "nhwc")
    _, _, thread, kind, slot, _ = smem_trace(x, c, dy, 5, 1, 0)
    first = slot[(kind == 0) & (thread == 0)][:2]
    assert first.tolist() == [0, PLANE], "NHWC did not take the vector staging"
    vector = run_ops(x, c, dy, 5, 1, 0.4, OPS._tiled_forward, OPS._tiled_backward)
    nchw = [t.contiguous() for t in (x, c, dy)]
    _, _, thread, kind, slot, _ = smem_trace(*nchw, 5, 1, 0)
    assert slot[(kind == 0) & (thread == 0)][:2].tolist() == [0, 256], "NCHW staging changed"
    scalar = run_ops(*nchw, 5, 1, 0.4, OPS._tiled_forward, OPS._tiled_backward)
    for name, a, b in zip(
        ("out", "lse", "grad_pattern", "grad_content"), vector, scalar, strict=True
    ):
        assert torch.equal(a.contiguous(), b.contiguous()), f"{name}: vector != scalar staging"
    check(x, c, dy, 5, 1, 0.4)  # and both match the reference


# ---- shared-memory banks ---------------------------------------------------------------------

BANKS = 32  # 4-byte banks; float32/float16/bfloat16 stage and accumulate in float32


def warp_accesses(kernel, phase, thread, kind, slot):
    """The warp-wide shared-memory instructions of a trace: the k-th access of each lane of a
    warp (32 consecutive threads) in one phase, per kind (store / load) and target (the
    staged channel planes, the lse plane, the D plane), is one instruction. Returns the
    instruction of every access (sorted), its slot, and per instruction its kernel, phase,
    kind and target."""
    target = np.where(slot < REGION_SLOTS, 0, 1 + (slot - REGION_SLOTS) // PIXEL_PLANE)
    site = ((kernel * 2**16 + phase) * 2 + kind) * 4 + target  # < 2**21
    order = np.argsort(site * 256 + thread, kind="stable")  # keeps each thread's issue order
    site, thread, slot = site[order], thread[order], slot[order]
    key = site * 256 + thread
    start = np.r_[True, key[1:] != key[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(slot)), 0))
    k = np.arange(len(slot)) - first
    uniq, instr = np.unique((site * 8 + thread // 32) * 2**24 + k, return_inverse=True)
    site = uniq // 2**24 // 8
    target, kind = site % 4, site // 4 % 2
    phase, kernel = site // 8 % 2**16, site // 8 // 2**16
    return instr, slot, np.stack([kernel, phase, kind, target])


def conflict_degree(instr, slot):
    """Per instruction: the most distinct addresses that fall into one bank (1: conflict-free;
    lanes reading one address share it, a broadcast)."""
    pairs = np.unique(instr * 2**20 + slot)  # distinct (instruction, address)
    banks, counts = np.unique(pairs // 2**20 * BANKS + pairs % 2**20 % BANKS, return_counts=True)
    which = banks // BANKS  # sorted, and every instruction has at least one access
    starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])
    assert len(starts) == instr.max() + 1
    return np.maximum.reduceat(counts, starts)


@pytest.mark.parametrize("channels", [8, 9, 16, 18, 24, 32, 36])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"]
)
def test_shared_memory_banks(dtype, layout, channels):
    # The bank model of docs/cuda.md, "Shared-memory banks", on the trace of an interior block
    # (every lane of a warp takes the same branches there, so the k-th access of its lanes is
    # one instruction) of all three kernels: staging stores of the channel planes hit at most
    # 2 addresses per bank, and 1 for full 8-channel chunks of NHWC; lse / D stores and every
    # compute-phase load are conflict-free.
    x, c, dy = make(1, channels, channels, 17, 65, dtype, layout)
    # Small logits: no pixel's softmax saturates (a one-hot weight gives grad_pattern an
    # exactly-zero coefficient, whose loads that lane skips: divergence, which the model below
    # refuses rather than mis-counts).
    x = (x.double() * 0.25).to(dtype).contiguous(memory_format=LAYOUTS[layout][0])
    block = 4  # tile (1, 1) of 3 x 3, rows 8-15, columns 32-63: windows of k = 3 stay inside
    kernel, phase, thread, kind, slot, _ = smem_trace(x, c, dy, 3, 1, block)
    phase_key = kernel * 2**16 + phase
    load_keys, per_thread = np.unique(
        phase_key[kind == 1] * 256 + thread[kind == 1], return_counts=True
    )
    per_thread = per_thread.reshape(-1, 256)  # every thread loads in every compute phase
    assert len(load_keys) == per_thread.size
    assert (per_thread == per_thread[:, :1]).all(), "lanes of a compute phase diverged"
    instr, islot, (ikernel, iphase, ikind, itarget) = warp_accesses(
        kernel, phase, thread, kind, slot
    )
    degree = conflict_degree(instr, islot)
    loads = ikind == 1
    assert loads.any() and degree[loads].max() == 1, "compute-phase loads conflict"
    assert (degree[(ikind == 0) & (itarget > 0)] == 1).all(), "lse / D stores conflict"
    region = (ikind == 0) & (itarget == 0)
    assert region.sum() > 0
    # channels staged per phase: the distinct planes its stores touch
    stores = (kind == 0) & (slot < REGION_SLOTS)
    planes = np.unique(phase_key[stores] * CONFIG["stage"] + slot[stores] // PLANE)
    staging_phases, n = np.unique(planes // CONFIG["stage"], return_counts=True)
    n_of = dict(zip(staging_phases.tolist(), n.tolist(), strict=True))
    full = np.array([n_of.get(key, 0) in (1, CONFIG["stage"]) for key in ikernel * 2**16 + iphase])
    worst = degree[region].max()
    assert worst <= 2, f"staging stores conflict {worst}-way"
    if layout == "nhwc":
        worst_full = degree[region & full].max()
        assert worst_full == 1, f"full NHWC chunks conflict {worst_full}-way"


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


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    ("cp", "cc", "dtype", "layout", "k", "d"), NON_FINITE_CASES, ids=lambda v: str(v).split(".")[-1]
)
def test_cuda_non_finite_values_outside_a_window_never_reach_its_outputs(
    cp, cc, dtype, layout, k, d
):
    check_non_finite_outside_windows(cp, cc, dtype, layout, k, d, "cuda")


GPU_VS_EMULATION = {  # (atol, rtol): the same float32 sums; exp and FMA may differ by an ulp
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["f16", "bf16", "f32"]
)
@pytest.mark.parametrize(("cp", "cc"), [(16, 24), (24, 16)])
def test_cuda_nhwc_vector_unpack_matches_reference_and_emulation(cp, cc, dtype):
    # NHWC with 16 and 24 channels: the GPU's 16-byte __ldg fetch and the unpack, against the
    # reference, the emulator (memcpy fetch, same unpack) and the GPU's own scalar staging.
    x, c, dy = make(1, cp, cc, 12, 40, dtype, "nhwc")
    on_gpu = check(x, c, dy, 5, 1, 0.4, device="cuda")
    emulated = run_ops(x, c, dy, 5, 1, 0.4, OPS._tiled_forward, OPS._tiled_backward)
    nchw = [t.contiguous() for t in (x, c, dy)]
    scalar = check(*nchw, 5, 1, 0.4, device="cuda")
    atol, rtol = GPU_VS_EMULATION[dtype]
    names = ("out", "lse", "grad_pattern", "grad_content")
    for name, g, e, sc in zip(names, on_gpu, emulated, scalar, strict=True):
        msg = lambda m, n=name: f"{n}: {m}"  # noqa: E731
        torch.testing.assert_close(g.cpu().float(), e.float(), atol=atol, rtol=rtol, msg=msg)
        torch.testing.assert_close(
            g.contiguous().float(), sc.contiguous().float(), atol=atol, rtol=rtol, msg=msg
        )
