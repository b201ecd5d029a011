"""Argument validation shared by the fused op and the reference implementation.

The C++ entry points repeat these checks (a user may call ``torch.ops.lcblock_cuda.*``
directly); doing them here first gives Python users a ``ValueError``/``TypeError`` with
the offending value instead of a ``RuntimeError`` from the dispatcher.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["check_arguments"]


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a kernel size is a bug, not a request for 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"local_correlation: expected {name} to be an int, got {value!r} "
            f"({type(value).__name__})"
        )
    return int(value)


def check_arguments(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int,
    scale: float,
) -> tuple[int, int, float]:
    """Validate the arguments of ``local_correlation``; return (kernel_size, dilation, scale)."""
    for name, t in (("pattern", pattern), ("content", content)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"local_correlation: expected {name} to be a torch.Tensor, got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"local_correlation: expected {name} to be 4-D (B, C, H, W), "
                f"got {t.dim()}-D with shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"local_correlation: expected {name} to have a floating-point dtype, got {t.dtype}"
            )
    if pattern.dtype != content.dtype:
        raise TypeError(
            "local_correlation: expected pattern and content to have the same dtype, "
            f"got pattern {pattern.dtype} and content {content.dtype}"
        )
    if pattern.device != content.device:
        raise ValueError(
            "local_correlation: expected pattern and content on the same device, "
            f"got pattern on {pattern.device} and content on {content.device}"
        )
    pb, _, ph, pw = pattern.shape
    cb, _, ch, cw = content.shape
    if (pb, ph, pw) != (cb, ch, cw):
        raise ValueError(
            "local_correlation: expected pattern and content to share batch, height and width, "
            f"got pattern {tuple(pattern.shape)} and content {tuple(content.shape)}"
        )
    kernel_size = _check_int("kernel_size", kernel_size)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"local_correlation: expected kernel_size to be an odd integer >= 1, got {kernel_size}"
        )
    dilation = _check_int("dilation", dilation)
    if dilation < 1:
        raise ValueError(f"local_correlation: expected dilation >= 1, got {dilation}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"local_correlation: expected scale to be a float, got {scale!r}")
    scale = float(scale)
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise ValueError(f"local_correlation: expected a finite scale, got {scale}")
    return kernel_size, dilation, scale
