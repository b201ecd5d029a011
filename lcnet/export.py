"""``lcnet export``: a checkpoint as ONNX (standard operators) or as a torch.export program.

* ``.onnx``: the LCBlocks use :mod:`lcblock_cuda.decomposed` (pad, slice, multiply, sum,
  softmax with out-of-image neighbours masked), so ONNX Runtime runs the graph with no custom
  op. Dynamic batch, height and width (sides >= :data:`MIN_SIDE`; the padding to a multiple
  of 8 and the crop back are inside the graph). Needs the ``[export]`` extra (onnx,
  onnxscript; onnxruntime to run it).
* ``.pt2``: ``torch.export`` of the model with the fused op, dynamic height and width in
  ``MIN_SIDE..MAX_SIDE``, saved with ``torch.export.save``. It calls
  ``torch.ops.lcblock_cuda.*``: load it where ``lcblock_cuda`` is importable
  (``import lcblock_cuda`` before ``torch.export.load``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, model_from_checkpoint
from .errors import LCNetError
from .model import LCNet

__all__ = ["ExportConfig", "MAX_SIDE", "MIN_SIDE", "ONNX_OPSET", "SUFFIXES", "export_model"]

log = logging.getLogger(__name__)

#: Smallest and largest height / width of the exported programs. Sides >= 8 (the padding
#: multiple) take one branch of the padding rule, so one graph covers them all.
MIN_SIDE = 16
MAX_SIDE = 4096
#: The ONNX opset written (ONNX Runtime >= 1.14 runs it).
ONNX_OPSET = 18
SUFFIXES = (".onnx", ".pt2")
#: Input and output names of the ONNX graph.
INPUT_NAME, OUTPUT_NAME = "blurry", "deblurred"


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str
    out: str
    overwrite: bool = False
    #: Side of the example input used for tracing (any size in MIN_SIDE..MAX_SIDE).
    example_side: int = 64


def _dynamic_shapes(batch: bool) -> dict[str, dict[int, torch.export.Dim]]:
    dims: dict[int, torch.export.Dim] = {
        2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
        3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE),
    }
    if batch:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    return {"x": dims}


def export_pt2(model: LCNet, out: Path, example: torch.Tensor) -> None:
    """torch.export with dynamic H, W (fused op), saved with torch.export.save."""
    model = model.eval().set_lc_backend("fused")
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(batch=False))
    torch.export.save(program, str(out))


def export_onnx(model: LCNet, out: Path, example: torch.Tensor) -> None:
    """ONNX of the decomposed model, dynamic batch, H and W."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise LCNetError(
            f"--out {out}: ONNX export needs the onnx and onnxscript packages ({exc}); "
            "install the extra: pip install --no-build-isolation -e '.[export]'"
        ) from exc
    model = model.eval().set_lc_backend("decomposed")
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=_dynamic_shapes(batch=True),
        opset_version=ONNX_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        verbose=False,
    )
    program.save(str(out))


def export_model(cfg: ExportConfig) -> Path:
    """Write ``cfg.checkpoint`` to ``cfg.out`` in the format its suffix names; returns the path."""
    out = Path(cfg.out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise LCNetError(
            f"--out {out}: expected a file ending in {' or '.join(SUFFIXES)} "
            f"(the format is taken from the suffix), got {out.suffix or 'no suffix'!r}"
        )
    if out.is_dir():
        raise LCNetError(f"--out {out} is a folder; give a file name ending in {suffix}")
    if out.exists() and not cfg.overwrite:
        raise LCNetError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise LCNetError(f"--out {out}: its folder {out.parent} does not exist")
    ckpt = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(ckpt, cfg.checkpoint)
    example = torch.rand(1, model.config.in_channels, cfg.example_side, cfg.example_side)
    with torch.no_grad():
        if suffix == ".onnx":
            export_onnx(model, out, example)
        else:
            export_pt2(model, out, example)
    log.info("wrote %s (%.1f MiB)", out, out.stat().st_size / 2**20)
    return out
