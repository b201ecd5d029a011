"""The op as a careless user would try it: no silent wrong answers, no absurd bills.

* double backward raises instead of silently returning 0;
* a window larger than the image costs what the image costs (it is clamped to what can fall
  inside the image; the result is identical);
* absurd ``kernel_size``/``dilation`` get a ``ValueError`` naming the argument, the value and
  the bound, in Python and from direct ``torch.ops`` calls.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lcblock_cuda import local_correlation, reference
from lcblock_cuda._checks import INT64_MAX, effective_kernel_size

OPS = torch.ops.lcblock_cuda


def pair(b, cp, cc, h, w, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cp, h, w, generator=g, dtype=torch.float64).to(dtype)
    c = torch.randn(b, cc, h, w, generator=g, dtype=torch.float64).to(dtype)
    return x, c


# ---- double backward ---------------------------------------------------------------------


def test_double_backward_raises_instead_of_returning_zero():
    # The reference's second derivative on this case is 34.07 (not 0): a silent 0 is wrong.
    x, c = pair(1, 2, 2, 5, 5)
    x.requires_grad_()
    c.requires_grad_()
    y = local_correlation(x, c, 3)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward.*not implemented"):
        torch.autograd.grad(gx.sum(), x)


def test_reference_second_derivative_is_not_zero():
    # What the fused op would have to match: the oracle's double backward is well defined.
    x, c = pair(1, 2, 2, 5, 5)
    x.requires_grad_()
    y = reference.local_correlation(x, c, 3)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.sum(), x)
    assert ggx.abs().sum() > 1.0


def test_first_order_gradients_with_create_graph_still_work():
    # create_graph=True alone (e.g. a gradient penalty on other parameters) is fine.
    x, c = pair(1, 2, 2, 5, 5)
    x.requires_grad_()
    y = local_correlation(x, c, 3)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (want,) = torch.autograd.grad(reference.local_correlation(x, c, 3).sum(), x)
    torch.testing.assert_close(gx.detach(), want)


# ---- windows larger than the image ---------------------------------------------------------


@pytest.mark.parametrize(
    "k,d,h,w,expected",
    [
        (3, 1, 8, 8, 3),
        (999, 1, 4, 4, 7),  # radius 499 -> 3 = (4 - 1) // 1
        (3, 10000, 8, 8, 1),  # no neighbour at distance 10000 in an 8x8 image
        (9, 2, 5, 9, 9),  # radius 4, 4·2 = 8 <= 9 - 1: the widest axis decides
        (9, 3, 5, 9, 5),  # radius 4 -> 2 = (9 - 1) // 3
        (2**31 + 1, 1, 6, 2, 11),
        (INT64_MAX, 1, 3, 3, 5),
        (3, INT64_MAX, 3, 3, 1),
        (3, 2**62 + 2**61, 9, 9, 1),  # (3 // 2) * dilation still fits in int64: valid
        (5, 7, 0, 0, 1),  # an empty image
    ],
)
def test_effective_kernel_size(k, d, h, w, expected):
    assert effective_kernel_size(k, d, h, w) == expected


def peak_allocated_mib(fn):
    """Peak MiB that torch allocates during fn() (profiler memory events, summed in order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak / 2**20


@pytest.mark.parametrize("k,d", [(3, 1000), (201, 1)])
def test_a_window_larger_than_the_image_costs_what_the_image_costs(k, d):
    x, c = pair(1, 4, 4, 8, 8, dtype=torch.float32)
    x.requires_grad_()
    c.requires_grad_()

    def step():
        y = local_correlation(x, c, k, d)
        torch.autograd.grad(y.sum(), (x, c))

    # The image's own window (k 15 at d 1, k 1 at d 1000) needs a few KiB per thread; before the
    # clamp these took 100+ MiB (rings sized by radius·dilation rows and k² offsets).
    assert peak_allocated_mib(step) < 2.0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "shape,k,d",
    [
        ((1, 3, 2, 4, 4), 999, 1),  # failed to allocate before the clamp
        ((1, 3, 2, 8, 8), 3, 10000),  # took 6.9 GB of RSS before the clamp
        ((2, 2, 3, 6, 2), 2**31 + 1, 1),  # "vector larger than max_size()" before
        ((1, 2, 9, 5, 9), 9, 3),
    ],
)
def test_a_window_larger_than_the_image_gives_the_image_windows_result(shape, k, d, layout):
    x, c = pair(*shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        c = c.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(c.shape, dtype=torch.float64)
    clamped = effective_kernel_size(k, d, shape[3], shape[4])
    want_y, want_lse = reference.local_correlation_with_lse(x, c, clamped, d)
    for fwd, bwd in (
        (OPS.local_correlation_forward, OPS.local_correlation_backward),
        (OPS._pixelwise_forward, OPS._pixelwise_backward),
    ):
        y, lse = fwd(x, c, k, d, 1.0)  # the C++ entry points clamp too
        torch.testing.assert_close(y, want_y)
        torch.testing.assert_close(lse, want_lse)
        got = bwd(grad, x, c, y, lse, k, d, 1.0)
        want = bwd(grad, x, c, y, lse, clamped, d, 1.0)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    if k < 100:  # the unclamped reference is affordable: the same numbers
        torch.testing.assert_close(reference.local_correlation(x, c, k, d), want_y)
    assert torch.equal(
        local_correlation(x, c, k, d), OPS.local_correlation_forward(x, c, k, d, 1.0)[0]
    )


# ---- absurd arguments ----------------------------------------------------------------------

X, C = pair(1, 2, 2, 8, 8, dtype=torch.float32)


@pytest.mark.parametrize(
    "k,d,match",
    [
        (3, 2**63, r"dilation <= 9223372036854775807 \(int64\), got 9223372036854775808"),
        (3, 10**30, r"dilation <= 9223372036854775807 \(int64\), got 10{30}"),
        (2**63 + 1, 1, r"kernel_size <= 9223372036854775807 \(int64\), got 9223372036854775809"),
        (
            2**62 + 1,
            4,
            r"window extent \(kernel_size // 2\) \* dilation <= 9223372036854775807 \(int64\), "
            r"got kernel_size=4611686018427387905, dilation=4",
        ),
        (
            5,
            2**62 + 2**61,
            r"window extent .* got kernel_size=5, dilation=6917529027641081856",
        ),
    ],
)
def test_absurd_window_arguments_name_the_argument_the_value_and_the_bound(k, d, match):
    for fn in (local_correlation, reference.local_correlation):
        with pytest.raises(ValueError, match=match):
            fn(X, C, k, d)


@pytest.mark.parametrize(
    "k,d,match",
    [
        (2**62 + 1, 4, r"window extent \(kernel_size // 2\) \* dilation .* got kernel_size="),
        (5, 2**62 + 2**61, r"window extent .* got kernel_size=5, dilation=6917529027641081856"),
    ],
)
def test_absurd_window_arguments_from_torch_ops(k, d, match):
    """Direct dispatcher calls get the same ValueError from the C++ checks."""
    x, c = X.detach(), C.detach()
    y, lse = OPS.local_correlation_forward(x, c, 3, 1, 1.0)
    for call in (
        lambda: OPS.local_correlation_forward(x, c, k, d, 1.0),
        lambda: OPS._pixelwise_forward(x, c, k, d, 1.0),
        lambda: OPS.local_correlation_backward(y, x, c, y, lse, k, d, 1.0),
        lambda: OPS._pixelwise_backward(y, x, c, y, lse, k, d, 1.0),
    ):
        with pytest.raises(ValueError, match=match):
            call()
