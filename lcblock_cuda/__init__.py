"""lcblock_cuda: the fused local-correlation op of the LCBlock (Su, Yuan, Wang).

Public surface: :func:`local_correlation`, :class:`LocalCorrelation`, and the pure-PyTorch
oracle :mod:`lcblock_cuda.reference`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import _buildcfg, decomposed, reference
from ._checks import check_arguments

__version__ = "0.1.0"
__all__ = [
    "LocalCorrelation",
    "cuda_compiled",
    "extension_advice",
    "extension_error",
    "local_correlation",
    "reference",
    "decomposed",
]

try:
    from . import _C  # noqa: F401  (registers the torch.ops.lcblock_cuda.* kernels)
except ImportError as exc:  # not silent: local_correlation re-raises it with advice
    _EXTENSION_ERROR: ImportError | None = exc
else:
    _EXTENSION_ERROR = None
    from . import ops as _ops


def extension_error() -> ImportError | None:
    """The error met while loading the compiled kernels, or None when they loaded."""
    return _EXTENSION_ERROR


def extension_advice() -> str | None:
    """What to do about extension_error(): for a _C built against another torch, both torch
    versions and the rebuild command; None when the kernels loaded."""
    if _EXTENSION_ERROR is None:
        return None
    # A _C built against another torch fails with the loader's "undefined symbol": name both
    # torch versions (setup.py records the build's in _build_info.py) and the rebuild command.
    built = _buildcfg.read_build_torch(Path(__file__).parent)
    return _buildcfg.explain_load_error(_EXTENSION_ERROR, built, torch.__version__)


def cuda_compiled() -> bool:
    """Whether the installed extension was built with its CUDA kernels."""
    return _EXTENSION_ERROR is None and bool(torch.ops.lcblock_cuda.cuda_compiled())


def local_correlation(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float = 1.0,
) -> torch.Tensor:
    if _EXTENSION_ERROR is not None:
        raise RuntimeError(f"lcblock_cuda: {extension_advice()}") from _EXTENSION_ERROR
    return _ops.local_correlation(pattern, content, kernel_size, dilation, scale)


if _EXTENSION_ERROR is None:
    local_correlation.__doc__ = _ops.local_correlation.__doc__


class LocalCorrelation(torch.nn.Module):
    """Module form of :func:`local_correlation`, called as ``module(pattern, content)``.

    Args:
        kernel_size: odd window size >= 1.
        dilation: spacing between window taps, >= 1.
        scale: multiplier of the dot products.
        backend: ``"fused"`` (the compiled kernels) or ``"reference"`` (pure PyTorch,
            slow, materialises k²-sized tensors; for checking and for machines without the
            compiled extension) or ``"decomposed"`` (standard ops offset by offset, no
            k²·C tensor; the form exported to ONNX, see :mod:`lcblock_cuda.decomposed`).
    """

    def __init__(
        self, kernel_size: int, dilation: int = 1, scale: float = 1.0, backend: str = "fused"
    ) -> None:
        super().__init__()
        probe = torch.empty(1, 1, 1, 1)
        self.kernel_size, self.dilation, self.scale = check_arguments(
            probe, probe, kernel_size, dilation, scale
        )
        functions = {
            "fused": local_correlation,
            "reference": reference.local_correlation,
            "decomposed": decomposed.local_correlation,
        }
        if backend not in functions:
            raise ValueError(
                "LocalCorrelation: expected backend 'fused', 'reference' or 'decomposed', "
                f"got {backend!r}"
            )
        self.backend = backend
        self._fn = functions[backend]

    def forward(self, pattern: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return self._fn(pattern, content, self.kernel_size, self.dilation, self.scale)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"scale={self.scale}, backend={self.backend!r}"
        )
