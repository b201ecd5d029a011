"""Argument validation shared by the fused op and the reference implementation.

The C++ entry points repeat these checks (a user may call ``torch.ops.lcblock_cuda.*``
directly); doing them here first gives Python users a ``ValueError``/``TypeError`` with
the offending value instead of a ``RuntimeError`` from the dispatcher.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["INT64_MAX", "check_arguments", "effective_kernel_size", "lse_dtype", "memory_format_of"]

#: The bound of every integer argument: the kernels take them as int64.
INT64_MAX = 2**63 - 1


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a kernel size is a bug, not a request for 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"local_correlation: expected {name} to be an int, got {value!r} "
            f"({type(value).__name__})"
        )
    return int(value)


def _check_bound(name: str, value: int) -> None:
    if value > INT64_MAX:
        raise ValueError(f"local_correlation: expected {name} <= {INT64_MAX} (int64), got {value}")


def effective_kernel_size(kernel_size: int, dilation: int, height: int, width: int) -> int:
    """The kernel size that gives the identical result at the cost of the image.

    Window offsets beyond ``max(H, W) - 1`` never fall inside the image, so the radius is
    clamped to ``(max(H, W) - 1) // dilation``. Mirrors ``effective_kernel_size`` of
    ``csrc/checks.h``, which every C++ entry point applies too.
    """
    reach = max(max(height, width) - 1, 0)
    return 2 * min(kernel_size // 2, reach // dilation) + 1


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the saved log-sum-exp (and of the reference's arithmetic): float64 for
    float64 inputs, float32 otherwise. The one Python home of ``lse_dtype`` in csrc/checks.h."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout rule of the op's outputs (``layout_of`` in csrc/checks.h): ``out`` and
    ``grad_content`` take content's layout, ``grad_pattern`` pattern's; channels_last when the
    tensor is channels_last-contiguous and not plain-contiguous."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


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
    _check_bound("kernel_size", kernel_size)
    dilation = _check_int("dilation", dilation)
    if dilation < 1:
        raise ValueError(f"local_correlation: expected dilation >= 1, got {dilation}")
    _check_bound("dilation", dilation)
    if (kernel_size // 2) * dilation > INT64_MAX:
        raise ValueError(
            "local_correlation: expected the window extent (kernel_size // 2) * dilation "
            f"<= {INT64_MAX} (int64), got kernel_size={kernel_size}, dilation={dilation}"
        )
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"local_correlation: expected scale to be a float, got {scale!r}")
    scale = float(scale)
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise ValueError(f"local_correlation: expected a finite scale, got {scale}")
    return kernel_size, dilation, scale
