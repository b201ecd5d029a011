"""Export: the decomposed op, export-safe padding, ``lcnet export`` to .onnx and .pt2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lcblock_cuda
from lcblock_cuda import decomposed, reference
from lcnet.model import crop_to, pad_to_multiple

# ------------------------------------------------------------------ the decomposed op


@pytest.mark.parametrize(
    ("kernel_size", "dilation", "height", "width"),
    [(1, 1, 5, 6), (3, 1, 7, 9), (5, 1, 6, 11), (5, 2, 9, 7), (7, 3, 5, 13), (9, 1, 3, 4)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_decomposed_matches_reference(kernel_size, dilation, height, width, channels_last):
    g = torch.Generator().manual_seed(kernel_size * 100 + dilation * 10 + height)
    pattern = torch.randn(2, 6, height, width, generator=g)
    content = torch.randn(2, 4, height, width, generator=g)
    if channels_last:
        pattern = pattern.to(memory_format=torch.channels_last)
        content = content.to(memory_format=torch.channels_last)
    want = reference.local_correlation(pattern, content, kernel_size, dilation, 0.7)
    got = decomposed.local_correlation(pattern, content, kernel_size, dilation, 0.7)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decomposed_matches_fused():
    g = torch.Generator().manual_seed(3)
    pattern = torch.randn(1, 9, 13, 10, generator=g)
    content = torch.randn(1, 18, 13, 10, generator=g)
    want = lcblock_cuda.local_correlation(pattern, content, 5, 1, 1.0)
    got = decomposed.local_correlation(pattern, content, 5, 1, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decomposed_backend_in_module():
    module = lcblock_cuda.LocalCorrelation(3, 1, 1.0, backend="decomposed")
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(module(x, x), reference.local_correlation(x, x, 3))


# ------------------------------------------------------------------ export-safe padding


def _old_pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    # The padding of main 8378383, kept here as the yardstick.
    def mode(pad: int, size: int) -> str:
        return "reflect" if pad < size else "replicate"

    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode=mode(pad_w, width))
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode=mode(pad_h, height))
    return x


@pytest.mark.parametrize("multiple", [4, 8])
def test_pad_to_multiple_equals_f_pad(multiple):
    g = torch.Generator().manual_seed(multiple)
    for height in range(1, 41):
        for width in range(1, 41):
            x = torch.randn(1, 2, height, width, generator=g)
            want = _old_pad_to_multiple(x, multiple)
            got = pad_to_multiple(x, multiple)
            assert got.shape == want.shape, (height, width)
            assert torch.equal(got, want), (height, width, multiple)


def test_crop_to_is_the_top_left():
    x = torch.arange(2 * 16 * 24, dtype=torch.float32).reshape(1, 2, 16, 24)
    assert torch.equal(crop_to(x, 13, 21), x[..., :13, :21])
