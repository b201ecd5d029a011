"""Local correlation as plain tensor ops, offset by offset: the form exported to ONNX.

Standard operators only (pad, slice, multiply, sum, softmax), so an exported graph runs in
ONNX Runtime with no custom op. It never holds a k²·C tensor: for each of the k² window
offsets o it takes a shifted view of the zero-padded pattern, reduces <x_i, x_{i+o}> over
channels to a (B, 1, H, W) logit, stacks those (B, k², H, W: k² without C), masks
out-of-image neighbours to -inf (the border rule: they are left out of the softmax, not
zero-padded), takes the softmax over the offsets, and accumulates the weighted content
offset by offset. Same contract as :func:`lcblock_cuda.local_correlation`; tested against
the fused op (tests/test_export.py). Slower than the fused kernels; meant for export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_arguments, lse_dtype

__all__ = ["local_correlation"]


def _inside_mask(height, width, kernel_size: int, dilation: int, like: torch.Tensor):
    # (1, k², H, W) bool: whether neighbour i + o lies in the image; built from a padded ones
    # image with the same shifted views as the features, so it is shape-generic.
    radius = (kernel_size // 2) * dilation
    ones = like.new_ones((1, 1, height, width))
    padded = F.pad(ones, (radius, radius, radius, radius))
    taps = [
        padded[:, :, dy * dilation : dy * dilation + height, dx * dilation : dx * dilation + width]
        for dy in range(kernel_size)
        for dx in range(kernel_size)
    ]
    return torch.cat(taps, dim=1) > 0.5


def local_correlation(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float = 1.0,
) -> torch.Tensor:
    """Decomposed local correlation, same contract as :func:`lcblock_cuda.local_correlation`.

    ``kernel_size`` is used as given (no clamping to the image, which would branch on the
    size): offsets beyond the image are all masked, which gives the identical result.
    """
    kernel_size, dilation, scale = check_arguments(pattern, content, kernel_size, dilation, scale)
    height, width = content.shape[-2:]
    compute = lse_dtype(pattern.dtype)
    x = pattern.to(compute)
    c = content.to(compute)
    radius = (kernel_size // 2) * dilation
    pad = (radius, radius, radius, radius)
    x_pad = F.pad(x, pad)
    c_pad = F.pad(c, pad)
    offsets = [
        (dy * dilation, dx * dilation) for dy in range(kernel_size) for dx in range(kernel_size)
    ]

    logits = torch.cat(
        [
            (x * x_pad[:, :, dy : dy + height, dx : dx + width]).sum(dim=1, keepdim=True)
            for dy, dx in offsets
        ],
        dim=1,
    )
    inside = _inside_mask(height, width, kernel_size, dilation, x)
    logits = (scale * logits).masked_fill(~inside, float("-inf"))
    weights = torch.softmax(logits, dim=1)  # the centre is always inside: no all -inf row

    out = torch.zeros_like(c)
    for k, (dy, dx) in enumerate(offsets):
        out = out + weights[:, k : k + 1] * c_pad[:, :, dy : dy + height, dx : dx + width]
    return out.to(content.dtype)
