"""Pure-PyTorch local correlation: the test oracle and the explicit fallback.

It materialises the unfolded (k²-sized) pattern and content tensors, so it is slow and
memory-hungry, but it is short enough to check by eye against eq. 3-4 of the paper and
runs on any device and dtype PyTorch supports. Out-of-image neighbours are masked out
of the softmax (they receive no weight), exactly as the fused kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_arguments, lse_dtype

__all__ = ["local_correlation", "local_correlation_with_lse"]


def local_correlation_with_lse(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`local_correlation`, also returning the per-pixel log-sum-exp (B, H, W).

    The log-sum-exp is ``log Σ_j exp(scale · <x_i, x_j>)`` over the in-image window, in
    float32 for float32 and lower-precision inputs (float64 otherwise); it is what the fused
    forward saves for its backward.
    """
    kernel_size, dilation, scale = check_arguments(pattern, content, kernel_size, dilation, scale)
    batch, _, height, width = content.shape
    kk = kernel_size * kernel_size
    pad = (kernel_size // 2) * dilation
    unfold = dict(kernel_size=kernel_size, dilation=dilation, padding=pad)

    # Accumulate in at least float32, as the fused kernels do: the dtype of their lse.
    compute = lse_dtype(pattern.dtype)
    x = pattern.to(compute)
    c = content.to(compute)
    n = height * width
    x_nb = F.unfold(x, **unfold).view(batch, x.shape[1], kk, n)  # neighbours x_j
    c_nb = F.unfold(c, **unfold).view(batch, c.shape[1], kk, n)  # neighbours c_j
    inside = F.unfold(x.new_ones(1, 1, height, width), **unfold).view(1, kk, n) > 0.5

    logits = scale * torch.einsum("bcn,bckn->bkn", x.view(batch, -1, n), x_nb)
    logits = logits.masked_fill(~inside, float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    weights = torch.exp(logits - lse.unsqueeze(1))
    out = torch.einsum("bkn,bckn->bcn", weights, c_nb).view(batch, -1, height, width)
    return out.to(content.dtype), lse.view(batch, height, width)


def local_correlation(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float = 1.0,
) -> torch.Tensor:
    """Reference local correlation, same contract as :func:`lcblock_cuda.local_correlation`."""
    return local_correlation_with_lse(pattern, content, kernel_size, dilation, scale)[0]
