"""Python side of the dispatcher ops: fake kernels and the public function.

The compiled library (``lcblock_cuda._C``) defines two ops in the ``lcblock_cuda``
namespace (schemas in ``csrc/lcblock.cpp``):

* ``local_correlation_forward(pattern, content, kernel_size, dilation, scale) -> (out, lse)``
* ``local_correlation_backward(grad_out, pattern, content, out, lse, kernel_size, dilation,
  scale) -> (grad_pattern, grad_content)``

Here they get fake (meta) kernels, so ``torch.compile`` can trace them. Their autograd is in
C++ (``csrc/autograd.cpp``): the forward saves pattern, content, out and lse and its backward
calls the backward op; the backward op's own backward raises (no double backward). In Python it
cost about 25 µs more per forward + backward (docs/DESIGN.md, "Autograd in C++").
"""

from __future__ import annotations

import torch

from ._checks import check_arguments, effective_kernel_size, lse_dtype, memory_format_of

__all__ = ["local_correlation"]

_FWD = "lcblock_cuda::local_correlation_forward"
_BWD = "lcblock_cuda::local_correlation_backward"


def _empty_in_layout_of(t: torch.Tensor) -> torch.Tensor:
    # The layout rule (csrc/checks.h, layout_of); the same on every device.
    return torch.empty_like(t, memory_format=memory_format_of(t))


@torch.library.register_fake(_FWD)
def _forward_fake(pattern, content, kernel_size, dilation, scale):
    batch, _, height, width = content.shape
    lse = pattern.new_empty((batch, height, width), dtype=lse_dtype(pattern.dtype))
    return _empty_in_layout_of(content), lse


@torch.library.register_fake(_BWD)
def _backward_fake(grad_out, pattern, content, out, lse, kernel_size, dilation, scale):
    return _empty_in_layout_of(pattern), _empty_in_layout_of(content)


def local_correlation(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float = 1.0,
) -> torch.Tensor:
    """Local correlation of the LCBlock (eq. 3-4 of the paper), fused.

    For every pixel i, with Ω_i the ``kernel_size`` × ``kernel_size`` window around i
    (spacing ``dilation``) clipped to the image::

        w_ij = softmax_{j ∈ Ω_i}(scale · <pattern_i, pattern_j>)
        out_i = Σ_{j ∈ Ω_i} w_ij · content_j

    Out-of-image neighbours are left out of the softmax, not zero-padded.

    Args:
        pattern: (B, Cp, H, W) features whose dot products give the weights.
        content: (B, Cc, H, W) features that are averaged; Cc may differ from Cp.
        kernel_size: odd window size >= 1 (1 returns ``content``).
        dilation: spacing between window taps, >= 1.
        scale: multiplier of the dot products (the paper uses 1).

    Returns:
        (B, Cc, H, W) tensor of ``content``'s dtype, device and layout: channels_last when
        ``content`` is channels_last (channels_last-contiguous and not plain-contiguous),
        contiguous otherwise. The gradients take their input's layout the same way.

    Any strides are accepted; NCHW and channels_last are read without copies. CPU: float32
    and float64. CUDA: float32, float64, float16 and bfloat16 (accumulated in float32).
    Differentiable in ``pattern`` and ``content`` (first order; double backward raises). A
    window larger than the image costs what the image costs (the radius is clamped to
    ``(max(H, W) - 1) // dilation``, which gives the identical result).
    """
    kernel_size, dilation, scale = check_arguments(pattern, content, kernel_size, dilation, scale)
    kernel_size = effective_kernel_size(kernel_size, dilation, *content.shape[2:])
    return torch.ops.lcblock_cuda.local_correlation_forward(
        pattern, content, kernel_size, dilation, scale
    )[0]
