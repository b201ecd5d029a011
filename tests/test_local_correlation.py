"""The fused local-correlation op against the pure-PyTorch reference.

CPU tests exercise both CPU paths: the row-vectorised kernels (what CPU users run) and the
"_pixelwise" ops, which run the per-pixel functions of csrc/local_correlation_math.h (the CUDA
kernels' block code is tested through the "_tiled" ops, tests/test_cuda_emulation.py). Tests
marked `cuda` repeat the checks on a GPU and skip without one.
"""

from __future__ import annotations

import pytest
import torch

import lcblock_cuda
from lcblock_cuda import LocalCorrelation, local_correlation, reference
from lcblock_cuda import ops as ops_module

OPS = torch.ops.lcblock_cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

# (atol, rtol) of outputs and gradients against the float64 reference, per input dtype.
TOLERANCE = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (6e-2, 6e-2),
}


def make_inputs(b, cp, cc, h, w, dtype=torch.float64, device="cpu", seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cp, h, w, generator=g, dtype=torch.float64)
    c = torch.randn(b, cc, h, w, generator=g, dtype=torch.float64)
    x, c = x.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype)
    if layout in ("channels_last", "cl_pattern"):
        x = x.contiguous(memory_format=torch.channels_last)
    if layout in ("channels_last", "cl_content"):
        c = c.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other column of a wider map, and a transposed copy
        wide = torch.zeros(b, cp, h, 2 * w, dtype=dtype, device=device)
        wide[..., ::2] = x
        x = wide[..., ::2]
        c = c.transpose(2, 3).contiguous().transpose(2, 3)
        assert not x.is_contiguous() and not c.is_contiguous()
    return x, c


# Layouts of the grid: both inputs NCHW, both channels_last, and one of each (a "mixed" pair).
LAYOUTS = ["contiguous", "channels_last", "cl_pattern", "cl_content"]


def memory_format_of(t):
    """The layout rule of the op: an output takes the layout of the input it belongs to,
    channels_last when that input is channels_last-contiguous and not plain-contiguous."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def assert_layout(actual, like, what):
    fmt = memory_format_of(like)
    assert actual.is_contiguous(memory_format=fmt), (
        f"{what}: expected {fmt}, got strides {actual.stride()} for shape {tuple(actual.shape)}"
    )


def reference_fwd_bwd(x, c, k, d, s, grad):
    """Reference output, lse and gradients, computed in float64."""
    x64 = x.detach().double().requires_grad_()
    c64 = c.detach().double().requires_grad_()
    y, lse = reference.local_correlation_with_lse(x64, c64, k, d, s)
    gx, gc = torch.autograd.grad(y, (x64, c64), grad.double())
    return y.detach(), lse.detach(), gx, gc


def fused_fwd_bwd(x, c, k, d, s, grad, pixelwise=False):
    fwd = OPS._pixelwise_forward if pixelwise else OPS.local_correlation_forward
    bwd = OPS._pixelwise_backward if pixelwise else OPS.local_correlation_backward
    y, lse = fwd(x, c, k, d, s)
    gx, gc = bwd(grad.to(x.dtype), x, c, y, lse, k, d, s)
    return y, lse, gx, gc


def assert_close(actual, expected, dtype, what):
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        atol=atol,
        rtol=rtol,
        msg=lambda m: f"{what}: {m}",
    )


def check_against_reference(x, c, k, d, s, pixelwise=False, seed=1):
    grad = torch.randn(c.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grad = grad.to(c.device)
    grad = grad.contiguous(memory_format=memory_format_of(c))  # as autograd would pass it
    got = fused_fwd_bwd(x, c, k, d, s, grad, pixelwise)
    want = reference_fwd_bwd(x, c, k, d, s, grad)
    for name, a, e in zip(("out", "lse", "grad_pattern", "grad_content"), got, want, strict=True):
        assert a.shape == e.shape, name
        assert_close(a, e, x.dtype, name)
    assert got[0].dtype == x.dtype and got[2].dtype == x.dtype and got[3].dtype == c.dtype
    assert_layout(got[0], c, "out")
    assert got[1].is_contiguous(), "lse"
    assert_layout(got[2], x, "grad_pattern")
    assert_layout(got[3], c, "grad_content")


# ---- the grid ------------------------------------------------------------------------------

SHAPES = [  # (B, Cp, Cc, H, W): odd, non-square, tiny, Cp != Cc
    (2, 4, 4, 9, 11),
    (1, 3, 5, 7, 5),
    (2, 2, 3, 1, 1),
    (1, 5, 2, 3, 70),  # wider than one 64-pixel CPU segment
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pixelwise", [False, True], ids=["rows", "pixelwise"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_grid(shape, kernel_size, dilation, dtype, pixelwise, layout):
    x, c = make_inputs(*shape, dtype=dtype, layout=layout)
    check_against_reference(x, c, kernel_size, dilation, 1.0, pixelwise)


@pytest.mark.parametrize("pixelwise", [False, True], ids=["rows", "pixelwise"])
@pytest.mark.parametrize("scale", [0.37, 2.5, -1.0])
def test_scale(scale, pixelwise):
    x, c = make_inputs(2, 3, 4, 10, 9)
    check_against_reference(x, c, 5, 1, scale, pixelwise)


@pytest.mark.parametrize("layout", ["channels_last", "cl_pattern", "cl_content", "strided"])
@pytest.mark.parametrize("channels", [3, 16], ids=["pixel-rows-gather", "channels-last-gather"])
def test_any_strides_give_the_same_result(layout, channels):
    """Every layout gives bit for bit the NCHW result, forward and backward, with outputs in the
    layout rule's format; 70 columns cross a 64-pixel segment, 3 and 16 channels take the
    forward's two gathers."""
    x, c = make_inputs(2, 4, channels, 9, 70, dtype=torch.float32)
    xs, cs = make_inputs(2, 4, channels, 9, 70, dtype=torch.float32, layout=layout)
    torch.testing.assert_close(xs, x, atol=0, rtol=0)
    grad = torch.randn(c.shape, generator=torch.Generator().manual_seed(2))
    want = fused_fwd_bwd(x, c, 5, 2, 1.0, grad)
    got = fused_fwd_bwd(xs, cs, 5, 2, 1.0, grad.contiguous(memory_format=memory_format_of(cs)))
    for name, a, b in zip(("out", "lse", "grad_pattern", "grad_content"), want, got, strict=True):
        assert torch.equal(a, b), name
    assert_layout(got[0], cs, "out")
    assert_layout(got[2], xs, "grad_pattern")
    assert_layout(got[3], cs, "grad_content")
    check_against_reference(xs, cs, 3, 1, 1.0)
    check_against_reference(xs, cs, 3, 1, 1.0, pixelwise=True)


@pytest.mark.parametrize("layout", ["channels_last", "cl_pattern", "cl_content"])
def test_grad_out_and_out_in_any_layout(layout):
    """The backward reads grad_out and out in whatever layout autograd hands it."""
    x, c = make_inputs(1, 3, 9, 6, 11, layout=layout)
    y, lse = OPS.local_correlation_forward(x, c, 3, 1, 1.0)
    grad = torch.randn(c.shape, dtype=torch.float64)
    want = OPS.local_correlation_backward(grad, x, c, y.contiguous(), lse, 3, 1, 1.0)
    for dy in (
        grad.contiguous(memory_format=torch.channels_last),
        grad.transpose(2, 3).contiguous().transpose(2, 3),
    ):
        for out in (y.contiguous(), y.contiguous(memory_format=torch.channels_last)):
            got = OPS.local_correlation_backward(dy, x, c, out, lse, 3, 1, 1.0)
            for a, b in zip(want, got, strict=True):
                assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_pixelwise_reduced_precision(dtype):
    """The CUDA kernels' half/bfloat16 code path (accumulating in float), run on the CPU."""
    x, c = make_inputs(2, 4, 3, 8, 9, dtype=dtype)
    check_against_reference(x, c, 3, 1, 0.5, pixelwise=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cpu_reduced_precision_is_computed_in_float(dtype, layout):
    x, c = make_inputs(1, 4, 3, 8, 9, dtype=dtype, layout=layout)
    y = local_correlation(x, c, 3)
    assert y.dtype == dtype
    assert_layout(y, c, "out")
    want = reference.local_correlation(x.float(), c.float(), 3)
    assert_close(y, want, dtype, "out")


def test_pixelwise_path_matches_row_kernels_on_a_larger_map():
    x, c = make_inputs(2, 9, 18, 37, 150, dtype=torch.float32, seed=3)
    grad = torch.randn(c.shape)
    rows = fused_fwd_bwd(x, c, 5, 1, 1.0, grad)
    pix = fused_fwd_bwd(x, c, 5, 1, 1.0, grad, pixelwise=True)
    for a, b in zip(rows, pix, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # float32, two summation orders


# ---- special cases -------------------------------------------------------------------------


def test_kernel_size_one_returns_content():
    x, c = make_inputs(2, 3, 4, 5, 6, dtype=torch.float32)
    assert torch.equal(local_correlation(x, c, 1), c)


def test_corner_pixel_window_is_masked_not_zero_padded():
    """A zero-padded neighbour would still take softmax weight; a masked one takes none."""
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)  # all logits 0: uniform weights
    c = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    y = local_correlation(x, c, 5)
    # the corner (0, 0) sees the 3×3 in-image block of its 5×5 window: mean of those values
    assert y[0, 0, 0, 0].item() == pytest.approx(c[0, 0, :3, :3].mean().item())
    assert y[0, 0, 3, 3].item() == pytest.approx(c[0, 0, 1:, 1:].mean().item())


def test_window_larger_than_the_map():
    x, c = make_inputs(1, 2, 3, 2, 3)
    check_against_reference(x, c, 9, 1, 1.0)
    check_against_reference(x, c, 3, 5, 1.0)  # dilation past the map: only the centre


@pytest.mark.parametrize("pixelwise", [False, True], ids=["rows", "pixelwise"])
def test_logits_in_the_thousands_stay_finite_and_correct(pixelwise):
    x, c = make_inputs(1, 8, 3, 7, 9)
    x = x * 25.0  # <x_i, x_j> ~ ±5000
    grad = torch.randn(c.shape, dtype=torch.float64)
    y, lse, gx, gc = fused_fwd_bwd(x, c, 5, 1, 1.0, grad, pixelwise)
    _, lse_ref, _, _ = reference_fwd_bwd(x, c, 5, 1, 1.0, grad)
    assert lse_ref.abs().max() > 1000
    for t in (y, lse, gx, gc):
        assert torch.isfinite(t).all()
    check_against_reference(x, c, 5, 1, 1.0, pixelwise)
    x32, c32 = x.float(), c.float()
    y32 = local_correlation(x32, c32, 5)
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), y, atol=1e-4, rtol=1e-4)


def test_empty_batch():
    x, c = make_inputs(0, 3, 4, 5, 6, dtype=torch.float32)
    x.requires_grad_()
    c.requires_grad_()
    y = local_correlation(x, c, 3)
    assert y.shape == (0, 4, 5, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape and c.grad.shape == c.shape


def test_zero_content_channels():
    x, c = make_inputs(1, 3, 0, 5, 6)
    assert local_correlation(x, c, 3).shape == (1, 0, 5, 6)


def test_non_finite_values_outside_the_window_do_not_leak():
    """Border lanes are masked by select, not by multiplying with a zero weight."""
    x, c = make_inputs(1, 2, 1, 4, 70)
    c[0, 0, 1, 69] = float("inf")  # last column of row 1: outside the windows of row 2, col 0
    y = local_correlation(x, c, 3)
    assert torch.isfinite(y[0, 0, 2, 0]) and torch.isfinite(y[0, 0, 3, :60]).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("width", [12, 24, 70])
def test_non_finite_values_do_not_leak_into_far_gradients(width, k, layout):
    """The backward gathers take their unmasked path everywhere (pair values are zero outside
    the image): an inf at a row's first and last pixel must still not reach the gradient of any
    pixel more than 2r away, which neither its window nor its neighbours' windows contain."""
    x, c = make_inputs(1, 4, 3, 7, width, layout=layout)
    for t in (x, c):
        t[0, :, 1, 0] = float("inf")
        t[0, :, 1, width - 1] = float("inf")
    x.requires_grad_()
    c.requires_grad_()
    local_correlation(x, c, k).sum().backward()
    r = k // 2
    far_rows = slice(1 + 2 * r + 1, None)
    far_cols = slice(2 * r + 1, width - 2 * r - 1)
    for name, grad in (("pattern", x.grad), ("content", c.grad)):
        assert torch.isfinite(grad[0, :, far_rows]).all(), name
        assert torch.isfinite(grad[0, :, :, far_cols]).all(), name


# ---- autograd, opcheck, compile, determinism ----------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,d", [(3, 1), (5, 2), (7, 1)])
def test_gradcheck_float64(k, d, layout):
    x, c = make_inputs(2, 3, 2, 5, 6, layout=layout)
    x.requires_grad_()
    c.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: local_correlation(a, b, k, d, 0.8), (x, c))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_forward_and_backward(layout):
    x, c = make_inputs(2, 3, 4, 6, 7, dtype=torch.float32, layout=layout)
    torch.library.opcheck(OPS.local_correlation_forward.default, (x, c, 3, 1, 1.0))
    x.requires_grad_()
    c.requires_grad_()
    torch.library.opcheck(OPS.local_correlation_forward.default, (x, c, 5, 2, 0.5))
    y, lse = OPS.local_correlation_forward(x.detach(), c.detach(), 3, 1, 1.0)
    torch.library.opcheck(
        OPS.local_correlation_backward.default,
        (torch.randn_like(y), x.detach(), c.detach(), y, lse, 3, 1, 1.0),
    )
    # The fake kernels report the real kernels' output strides (opcheck compares them too).
    for fake, real in zip(
        (
            *ops_module._forward_fake(x, c, 3, 1, 1.0),
            *ops_module._backward_fake(y, x, c, y, lse, 3, 1, 1.0),
        ),
        (y, lse, *OPS.local_correlation_backward(y, x.detach(), c.detach(), y, lse, 3, 1, 1.0)),
        strict=True,
    ):
        assert fake.stride() == real.stride() and fake.dtype == real.dtype


def test_lse_is_not_differentiable():
    x, c = make_inputs(1, 2, 2, 4, 4)
    x.requires_grad_()
    _, lse = OPS.local_correlation_forward(x, c, 3, 1, 1.0)
    assert not lse.requires_grad


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "cl_content"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_forward_and_backward(backend, layout):
    torch._dynamo.reset()
    x, c = make_inputs(2, 4, 3, 9, 10, dtype=torch.float32, layout=layout)

    def step(a, b):
        y = local_correlation(a, b, 5, 1, 1.0)
        return (y * b).sum(), y

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    results = []
    for fn in (step, compiled):
        a, b = x.clone().requires_grad_(), c.clone().requires_grad_()
        loss, y = fn(a, b)
        loss.backward()
        assert_layout(y, c, "out")
        results.append((loss.detach(), y.detach(), a.grad, b.grad))
    for eager, comp in zip(*results, strict=True):
        torch.testing.assert_close(comp, eager)


def test_backward_is_bitwise_deterministic_across_runs_and_thread_counts():
    x, c = make_inputs(2, 8, 8, 33, 70, dtype=torch.float32, seed=5)
    grad = torch.randn(c.shape)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            results.append(fused_fwd_bwd(x, c, 7, 1, 1.0, grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("shape", "k", "d"),
    [((2, 9, 9, 48, 48), 5, 1), ((3, 8, 12, 13, 70), 7, 2), ((8, 36, 36, 12, 12), 5, 1)],
)
def test_backward_is_bitwise_the_same_for_1_and_2_threads_and_both_layouts(shape, k, d):
    # The pair values are computed once per pair, in rings a thread fills as it walks its rows:
    # rows split between threads differently, and NCHW or NHWC operands, must give the same
    # bits (every sum runs in one fixed order).
    x0, c0 = make_inputs(*shape, dtype=torch.float32, seed=11)
    grad0 = torch.randn(c0.shape, generator=torch.Generator().manual_seed(12))
    threads = torch.get_num_threads()
    results = []
    try:
        for layout in (torch.contiguous_format, torch.channels_last):
            x, c = x0.contiguous(memory_format=layout), c0.contiguous(memory_format=layout)
            grad = grad0.contiguous(memory_format=layout)
            for n in (1, 2):
                torch.set_num_threads(n)
                results.append([t.contiguous() for t in fused_fwd_bwd(x, c, k, d, 1.0, grad)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("content_channels", [1, 3, 4, 6, 8, 9, 12, 17, 33, 40])
def test_both_cpu_gathers_match_the_reference(content_channels, dtype):
    # The CPU forward gathers channels-last when the channels fill its vectors (8 float32 or
    # 4 float64 lanes, at most a third of padding), pixel rows otherwise; this grid crosses
    # the rule both ways, with dilation (pairs of positions `dilation` apart) and odd widths.
    x, c = make_inputs(2, 5, content_channels, 11, 29, dtype=dtype, seed=content_channels)
    for k, d in ((5, 1), (3, 2), (7, 3)):
        y, lse = OPS.local_correlation_forward(x, c, k, d, 0.7)
        y_ref, lse_ref = reference.local_correlation_with_lse(x.double(), c.double(), k, d, 0.7)
        assert_close(y, y_ref, dtype, f"out k={k} d={d}")
        assert_close(lse, lse_ref, dtype, f"lse k={k} d={d}")


@pytest.mark.parametrize(("k", "d"), [(7, 1), (5, 2), (3, 3)])
def test_forward_is_independent_of_how_rows_are_split_between_threads(k, d):
    # The CPU forward reuses logits of the rows above (logit(i, j) = logit(j, i)); a thread
    # whose rows start inside an image first recomputes the rows it needs. Every split of the
    # rows (thread counts 1, 2, 3, 5) must give the reference's result, bit for bit the same.
    x, c = make_inputs(3, 5, 4, 37, 20, dtype=torch.float64, seed=11)
    expected = reference.local_correlation_with_lse(x, c, k, d, 0.8)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            results.append(OPS.local_correlation_forward(x, c, k, d, 0.8))
    finally:
        torch.set_num_threads(threads)
    for y, lse in results:
        assert_close(y, expected[0], torch.float64, "out")
        assert_close(lse, expected[1], torch.float64, "lse")
        assert torch.equal(y, results[0][0]) and torch.equal(lse, results[0][1])


# ---- module and fallback -------------------------------------------------------------------


def test_module_matches_function_and_reference_backend():
    x, c = make_inputs(1, 3, 4, 6, 7)
    fused = LocalCorrelation(5, dilation=2, scale=0.5)
    ref = LocalCorrelation(5, dilation=2, scale=0.5, backend="reference")
    torch.testing.assert_close(fused(x, c), local_correlation(x, c, 5, 2, 0.5))
    torch.testing.assert_close(fused(x, c), ref(x, c))
    assert "kernel_size=5" in repr(fused) and "reference" in repr(ref)


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size to be an odd integer >= 1, got 4"):
        LocalCorrelation(4)
    with pytest.raises(
        ValueError, match="backend 'fused', 'reference' or 'decomposed', got 'cuda'"
    ):
        LocalCorrelation(3, backend="cuda")


def test_missing_extension_raises_with_advice(monkeypatch):
    monkeypatch.setattr(lcblock_cuda, "_EXTENSION_ERROR", ImportError("no _C"))
    x, c = make_inputs(1, 1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="could not be loaded .*no _C.*reference"):
        local_correlation(x, c, 3)


# ---- errors --------------------------------------------------------------------------------

GOOD = make_inputs(1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((GOOD[0][0], GOOD[1], 3), ValueError, r"pattern to be 4-D \(B, C, H, W\), got 3-D"),
        ((GOOD[0], GOOD[1][0, 0], 3), ValueError, "content to be 4-D .* got 2-D"),
        ((GOOD[0], GOOD[1][:, :, :3], 3), ValueError, "share batch, height and width"),
        ((GOOD[0], torch.cat([GOOD[1]] * 2), 3), ValueError, "share batch, height and width"),
        ((GOOD[0], GOOD[1].float(), 3), TypeError, "same dtype, got pattern torch.float64"),
        ((GOOD[0].long(), GOOD[1].long(), 3), TypeError, "floating-point dtype, got torch.int64"),
        ((GOOD[0], GOOD[1], 4), ValueError, "kernel_size to be an odd integer >= 1, got 4"),
        ((GOOD[0], GOOD[1], 0), ValueError, "kernel_size to be an odd integer >= 1, got 0"),
        ((GOOD[0], GOOD[1], -3), ValueError, "kernel_size to be an odd integer >= 1, got -3"),
        ((GOOD[0], GOOD[1], 3.0), TypeError, r"kernel_size to be an int, got 3.0"),
        ((GOOD[0], GOOD[1], True), TypeError, r"kernel_size to be an int, got True"),
        ((GOOD[0], GOOD[1], 3, 0), ValueError, "dilation >= 1, got 0"),
        ((GOOD[0], GOOD[1], 3, -2), ValueError, "dilation >= 1, got -2"),
        ((GOOD[0], GOOD[1], 3, 1.5), TypeError, "dilation to be an int, got 1.5"),
        ((GOOD[0], GOOD[1], 3, 1, float("nan")), ValueError, "finite scale, got nan"),
        ((GOOD[0], GOOD[1], 3, 1, "1"), TypeError, "scale to be a float, got '1'"),
        (([1.0], GOOD[1], 3), TypeError, "pattern to be a torch.Tensor, got list"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(args, exc, match):
    with pytest.raises(exc, match=match):
        local_correlation(*args)
    if isinstance(args[0], torch.Tensor):  # the reference validates identically
        with pytest.raises(exc, match=match):
            reference.local_correlation(*args)


@pytest.mark.parametrize(
    "args,match",
    [
        ((GOOD[0], GOOD[1], 4, 1, 1.0), "kernel_size to be an odd integer >= 1, got 4"),
        ((GOOD[0], GOOD[1], 3, 0, 1.0), "dilation >= 1, got 0"),
        ((GOOD[0][0], GOOD[1], 3, 1, 1.0), "pattern to be 4-D"),
        ((GOOD[0], GOOD[1].float(), 3, 1, 1.0), "same dtype"),
        ((GOOD[0].int(), GOOD[1].int(), 3, 1, 1.0), "floating-point dtype"),
    ],
)
def test_raw_op_checks(args, match):
    """The dispatcher ops validate too: a direct torch.ops call never crashes the process."""
    with pytest.raises(RuntimeError, match=match):
        OPS.local_correlation_forward(*args)
    with pytest.raises(RuntimeError, match=match):
        OPS._pixelwise_forward(*args)


def test_raw_backward_checks_shapes():
    x, c = GOOD
    y, lse = OPS.local_correlation_forward(x, c, 3, 1, 1.0)
    with pytest.raises(RuntimeError, match="expected grad_out of shape"):
        OPS.local_correlation_backward(y[:, :1], x, c, y, lse, 3, 1, 1.0)
    with pytest.raises(RuntimeError, match=r"expected lse of shape \(B, H, W\)"):
        OPS.local_correlation_backward(y, x, c, y, lse[:, :2], 3, 1, 1.0)
    with pytest.raises(RuntimeError, match="expected lse of dtype"):
        OPS.local_correlation_backward(y, x, c, y, lse.float(), 3, 1, 1.0)


# ---- CUDA ----------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_cuda_extension_was_compiled():
    assert lcblock_cuda.cuda_compiled()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (3, 1), (5, 2), (7, 1), (7, 3)])
@pytest.mark.parametrize(
    "shape", SHAPES + [(2, 36, 36, 50, 67)], ids=lambda s: "x".join(map(str, s))
)
def test_cuda_matches_reference(shape, kernel_size, dilation, dtype):
    x, c = make_inputs(*shape, dtype=dtype, device="cuda")
    check_against_reference(x, c, kernel_size, dilation, 0.9)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_cuda_any_strides(layout):
    x, c = make_inputs(2, 4, 3, 9, 13, dtype=torch.float32, device="cuda", layout=layout)
    check_against_reference(x, c, 5, 1, 1.0)


@pytest.mark.cuda
@needs_cuda
def test_cuda_gradcheck_empty_and_determinism():
    x, c = make_inputs(1, 3, 2, 5, 6, device="cuda")
    x.requires_grad_()
    c.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: local_correlation(a, b, 3, 2, 0.7), (x, c))
    e = local_correlation(*make_inputs(0, 3, 4, 5, 6, device="cuda"), 3)
    assert e.shape == (0, 4, 5, 6)
    x, c = make_inputs(2, 16, 16, 40, 50, dtype=torch.float32, device="cuda")
    grad = torch.randn(c.shape, device="cuda")
    first = fused_fwd_bwd(x, c, 7, 1, 1.0, grad)
    second = fused_fwd_bwd(x, c, 7, 1, 1.0, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_cuda_kernels_run_on_the_current_stream(direction):
    """A side stream is kept busy (torch.cuda._sleep), then writes the op's inputs into
    NaN-filled buffers and runs the op, all inside `torch.cuda.stream(side)`. Kernels launched
    on the current stream (side) run after those writes. Kernels launched on any other stream
    (say the default one, idle here) would start at once, while side still sleeps, read the
    NaN and fail the comparison. The outcome does not depend on timing when the launch is
    right: the stream orders it. Large logits (x * 25) also check the online softmax."""
    x, c = make_inputs(1, 8, 3, 20, 21, device="cuda")
    x = x * 25.0
    k, d, s = 5, 1, 1.0
    y, lse = OPS.local_correlation_forward(x, c, k, d, s)
    grad = torch.randn_like(y)
    want = (
        (y, lse)
        if direction == "forward"
        else OPS.local_correlation_backward(grad, x, c, y, lse, k, d, s)
    )
    sources = (x, c) if direction == "forward" else (grad, x, c, y, lse)
    buffers = [torch.full_like(t, float("nan")) for t in sources]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on the side stream
        for buf, src in zip(buffers, sources, strict=True):
            buf.copy_(src)
        if direction == "forward":
            got = OPS.local_correlation_forward(*buffers, k, d, s)
        else:
            got = OPS.local_correlation_backward(*buffers, k, d, s)
    side.synchronize()
    torch.cuda.synchronize()
    for a, e in zip(got, want, strict=True):
        assert torch.isfinite(a).all(), f"{direction}: ran before its inputs were written"
        torch.testing.assert_close(a, e)
    if direction == "forward":
        torch.testing.assert_close(got[0], reference.local_correlation(x, c, k))


@pytest.mark.cuda
@needs_cuda
def test_cuda_matches_cpu_kernels_and_compiles():
    x, c = make_inputs(2, 9, 9, 31, 45, dtype=torch.float32)
    y_cpu = local_correlation(x, c, 5)
    y_gpu = local_correlation(x.cuda(), c.cuda(), 5)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=2e-5, rtol=2e-4)
    torch._dynamo.reset()
    f = torch.compile(lambda a, b: local_correlation(a, b, 5), fullgraph=True)
    torch.testing.assert_close(f(x.cuda(), c.cuda()), y_gpu)
