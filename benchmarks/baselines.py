"""Pure-PyTorch baselines of ``local_correlation`` for the benchmark (and its tests).

Two implementations a user could write without the compiled kernels, both with exactly the
semantics of :func:`lcblock_cuda.local_correlation` (docs/DESIGN.md, "Border rule": window
clipped to the image, out-of-image neighbours masked out of the softmax):

* :func:`shifted_local_correlation` -- no unfolding: one shifted *view* of the zero-padded input
  per window offset, the k² logits stacked into a (B, k², H, W) tensor, -inf where the neighbour
  lies outside the image, softmax over the offsets, and the output accumulated offset by offset.
  Plain autograd gives the backward.
* :func:`flex_local_correlation` -- ``torch.nn.attention.flex_attention`` with a 2-D window
  ``mask_mod`` (query = key = pattern, value = content, one head, sequence = the H·W pixels).
  :func:`window_block_mask` builds its ``BlockMask`` exactly as ``create_block_mask`` would, in
  O(H·W·k²) instead of O((H·W)²) time (``create_block_mask`` evaluates the mask on every
  query-key pair, which takes minutes for a 256×256 image on a CPU).

Both accept any floating dtype. ``shifted`` computes the logits, the softmax and the output in
at least float32, as the reference and the fused kernels do; ``flex`` has flex_attention's own
precision (16-bit inputs stay 16-bit in its matrix products).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from lcblock_cuda._checks import check_arguments

__all__ = [
    "FLEX_BLOCK_SIZE",
    "compiled_flex_attention",
    "flex_backward_unavailable",
    "flex_local_correlation",
    "shifted_local_correlation",
    "window_block_mask",
    "window_mask_mod",
]

#: Query and key/value tile of flex_attention's block-sparse mask (its own default).
FLEX_BLOCK_SIZE = 128


def _window_offsets(kernel_size: int, dilation: int) -> list[tuple[int, int]]:
    """Offsets (dh, dw) of the window taps, row-major, each a multiple of ``dilation``."""
    radius = kernel_size // 2
    taps = range(-radius * dilation, radius * dilation + 1, dilation)
    return [(dh, dw) for dh in taps for dw in taps]


def shifted_local_correlation(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float = 1.0,
) -> torch.Tensor:
    """Local correlation from shifted views of the padded inputs; no unfolded tensor.

    Same contract as :func:`lcblock_cuda.local_correlation`: pattern (B, Cp, H, W), content
    (B, Cc, H, W) -> (B, Cc, H, W) of content's dtype. Differentiable by autograd.

    Memory: besides the padded copies of the inputs, the only k²-sized tensors are the logits
    and the softmax weights, (B, k², H, W) each, in float32 (float64 for float64 input); the
    weights are what autograd keeps for backward. Choices that keep it fast and lean:

    * the dot products <x_i, x_j> are symmetric, so only (k² + 1) / 2 offsets need them; the
      other half are shifted copies of (B, H, W) logits (1.15x forward, 1.5x forward +
      backward at 2x32x128x128 k=7 on a CPU thread);
    * the per-offset logits are stacked (whose backward is a free ``unbind``) rather than
      written into a preallocated buffer (each slice write would add a ``CopySlices`` node
      that clones the whole k²-sized gradient in backward);
    * the weights are split with ``unbind`` (whose backward is one ``stack``) rather than
      sliced per offset (each slice's backward would allocate a zero k²-sized gradient);
    * the output is accumulated in place with ``addcmul_`` (no per-offset temporaries).
    """
    kernel_size, dilation, scale = check_arguments(pattern, content, kernel_size, dilation, scale)
    _, _, height, width = content.shape
    compute = torch.promote_types(pattern.dtype, torch.float32)
    halo = (kernel_size // 2) * dilation
    offsets = _window_offsets(kernel_size, dilation)

    # Zero padding only makes every shifted view in-bounds; the -inf mask below removes the
    # padded neighbours from the softmax, so the zeros never receive weight.
    # The pattern is promoted once (a no-op for float32/64): products of float16/bfloat16
    # values rounded to 16 bits would shift the logits by ~1e-2 against the reference and the
    # fused kernels. The content can stay as it is: addcmul_ into the float32 output promotes.
    padding = (halo, halo, halo, halo)
    pattern = pattern.to(compute)
    pattern_pad = F.pad(pattern, padding)
    content_pad = F.pad(content, padding)
    inside = torch.zeros(
        (height + 2 * halo, width + 2 * halo), dtype=torch.bool, device=pattern.device
    )
    inside[halo : halo + height, halo : halo + width] = True

    def shifted(t: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
        """View of the padded ``t`` whose pixel (h, w) is the input's (h + dh, w + dw)."""
        return t[..., halo + dh : halo + dh + height, halo + dw : halo + dw + width]

    query = pattern if scale == 1.0 else pattern * scale  # scale C·H·W values, not k²·H·W
    # Symmetry: s<x_i, x_{i-o}> at pixel i is s<x_j, x_{j+o}> at pixel j = i - o. So the
    # C-sized products are computed for the "positive" half of the offsets and the centre
    # only; the logits of offset -o are those of +o shifted by o (zero outside the image,
    # where the mask below applies anyway). This halves the logits' work, forward and backward.
    half = {
        (dh, dw): (query * shifted(pattern_pad, dh, dw)).sum(dim=1)
        for dh, dw in offsets
        if (dh, dw) >= (0, 0)
    }

    def logit(dh: int, dw: int) -> torch.Tensor:
        if (dh, dw) >= (0, 0):
            return half[(dh, dw)]
        return shifted(F.pad(half[(-dh, -dw)], padding), dh, dw)

    logits = torch.stack([logit(dh, dw) for dh, dw in offsets], dim=1)
    outside = torch.stack([~shifted(inside, dh, dw) for dh, dw in offsets])  # (k², H, W)
    logits = logits.masked_fill_(outside, float("-inf"))  # centre tap is never masked
    weights = torch.softmax(logits, dim=1)

    out = torch.zeros(content.shape, dtype=compute, device=content.device)
    for weight, (dh, dw) in zip(weights.unbind(dim=1), offsets, strict=True):
        out.addcmul_(weight.unsqueeze(1), shifted(content_pad, dh, dw))
    return out.to(content.dtype)


def window_mask_mod(
    width: int, kernel_size: int, dilation: int
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """flex_attention ``mask_mod`` of the dilated k×k window on a row-major image of ``width``.

    Query and key indices are flattened pixels ``h * width + w``; the key is kept when both
    offsets are within ``(kernel_size // 2) * dilation`` and multiples of ``dilation``. Keys
    outside the image do not exist in the sequence, so the window is clipped as in §1.
    """
    reach = (kernel_size // 2) * dilation

    def mask_mod(
        batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        dh = q_idx // width - kv_idx // width
        dw = q_idx % width - kv_idx % width
        return (
            (dh.abs() <= reach) & (dw.abs() <= reach) & (dh % dilation == 0) & (dw % dilation == 0)
        )

    return mask_mod


def _dense_to_ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_blocks, indices) of a dense 0/1 block table, as flex_attention orders them."""
    dense = dense.to(torch.int32)
    num_blocks = dense.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
    return num_blocks.contiguous(), indices.contiguous()


@functools.lru_cache(maxsize=16)
def window_block_mask(
    height: int,
    width: int,
    kernel_size: int,
    dilation: int = 1,
    device: str = "cpu",
    block_size: int = FLEX_BLOCK_SIZE,
) -> BlockMask:
    """The ``BlockMask`` of :func:`window_mask_mod`, equal to ``create_block_mask``'s.

    ``create_block_mask(mask_mod, None, None, H*W, H*W, device)`` evaluates the mask on all
    (H·W)² pairs. Here every in-image (pixel, tap) pair is mapped to its (query tile, key tile)
    and counted, which is O(H·W·k²): a tile pair is *partial* when 0 < count < tile², *full*
    when count == tile² (tiles cut by the sequence end are never full, as in flex_attention,
    which pads the mask with False). Cached per shape.
    """
    kernel_size, dilation, _ = check_arguments(
        torch.empty(1, 1, 1, 1), torch.empty(1, 1, 1, 1), kernel_size, dilation, 1.0
    )
    seq_len = height * width
    num_tiles = -(-seq_len // block_size)
    rows = torch.arange(height, device=device).view(height, 1)
    cols = torch.arange(width, device=device).view(1, width)
    query_tile = ((rows * width + cols) // block_size).flatten()
    counts = torch.zeros(num_tiles * num_tiles, dtype=torch.int64, device=device)
    for dh, dw in _window_offsets(kernel_size, dilation):
        inside = (rows + dh >= 0) & (rows + dh < height) & (cols + dw >= 0) & (cols + dw < width)
        inside = inside.flatten()
        key = (rows + dh) * width + (cols + dw)
        pair = query_tile * num_tiles + key.flatten() // block_size
        counts += torch.bincount(pair[inside], minlength=num_tiles * num_tiles)
    counts = counts.view(1, 1, num_tiles, num_tiles)
    full = counts == block_size * block_size
    partial = (counts > 0) & ~full
    kv_num, kv_idx = _dense_to_ordered(partial)
    full_num, full_idx = _dense_to_ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block_size,
        mask_mod=window_mask_mod(width, kernel_size, dilation),
        seq_lengths=(seq_len, seq_len),
    )


@functools.cache
def compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """``torch.compile(flex_attention, fullgraph=True)``, made once.

    Eager flex_attention materialises the full (H·W)² score matrix; only the compiled one is
    the fused kernel a user would time. ``fullgraph=True`` makes a failed compilation raise
    instead of falling back to eager: without it, one failure (e.g. a CPU backward) marks
    flex_attention's code to run eagerly from then on, for every later shape, silently.
    """
    return torch.compile(flex_attention, dynamic=False, fullgraph=True)


def flex_local_correlation(
    pattern: torch.Tensor,
    content: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float = 1.0,
    *,
    block_mask: BlockMask | None = None,
    compiled: bool = True,
) -> torch.Tensor:
    """Local correlation as one-head 2-D window attention with ``flex_attention``.

    query = key = pattern as (B, 1, H·W, Cp), value = content as (B, 1, H·W, Cc). The layout
    changes (NCHW <-> token-major) are part of the cost, as they would be for a user.

    Args:
        pattern, content, kernel_size, dilation, scale: as :func:`lcblock_cuda.local_correlation`.
        block_mask: from :func:`window_block_mask` for this (H, W, k, d, device); built (and
            cached) here when None.
        compiled: use :func:`compiled_flex_attention` (default) or eager ``flex_attention``
            (which materialises the (H·W)² scores: small inputs only).

    Limits (of flex_attention, not of this wrapper): on CPU only the forward is implemented
    (backward raises ``NotImplementedError``); CUDA kernels may reject some head dimensions.
    """
    kernel_size, dilation, scale = check_arguments(pattern, content, kernel_size, dilation, scale)
    batch, _, height, width = content.shape
    if block_mask is None:
        block_mask = window_block_mask(height, width, kernel_size, dilation, str(pattern.device))
    query = pattern.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
    value = content.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
    attend = compiled_flex_attention() if compiled else flex_attention
    out = attend(query, query, value, block_mask=block_mask, scale=scale)
    return out.squeeze(1).transpose(1, 2).reshape(content.shape)


#: Tiny problem on which :func:`flex_backward_unavailable` tries a backward.
_PROBE_SHAPE = (1, 1, 4, 2)  # (batch, heads, tokens, head dim)


@functools.cache
def flex_backward_unavailable(device: str, dtype: torch.dtype) -> str | None:
    """Why flex_attention has no backward on ``device`` for ``dtype``, or None when it has one.

    Tried eagerly on a tiny input: the compiled function would report the same refusal only as
    a long Dynamo ``Unsupported`` error.
    """
    query = torch.randn(_PROBE_SHAPE, device=device, dtype=dtype, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "called without torch.compile": intended here
            flex_attention(query, query, query).sum().backward()
    except (NotImplementedError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return None
