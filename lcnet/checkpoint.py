"""Checkpoints: atomic save, checked load, the model of a checkpoint, RNG state.

A checkpoint holds only tensors and primitive containers, so it loads with
``torch.load(..., weights_only=True)`` (no code runs from the file). It is written through
:func:`lcnet.io.atomic_write`, and never with non-finite weights (docs/DESIGN.md, "Trainer
guarantees").
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LCNetError, one_line
from .io import atomic_write
from .model import LCNet, LCNetConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "MODEL_KEYS",
    "RESUME_KEYS",
    "config_from_checkpoint",
    "get_rng_state",
    "load_checkpoint",
    "load_weights",
    "model_from_checkpoint",
    "non_finite_parameters",
    "save_checkpoint",
    "set_rng_state",
    "state_digest",
]

CHECKPOINT_FORMAT = "lcnet-checkpoint"
CHECKPOINT_VERSION = 1
#: Keys every checkpoint has; a resumable one also has RESUME_KEYS.
MODEL_KEYS = ("model", "model_config")
RESUME_KEYS = ("optimizer", "scheduler", "step", "epoch", "step_in_epoch", "rng", "train_args")


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """``torch.save`` atomically: temporary file in the same folder, fsync, ``os.replace``."""
    atomic_write(Path(path), lambda f: torch.save(dict(state), f))


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers holding a NaN or an infinity."""
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state dict (data-parallel ranks compare theirs)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    resumable: bool = False,
) -> dict[str, Any]:
    """Load an LCNet checkpoint with ``weights_only=True``; :class:`LCNetError` if it is not one."""
    path = Path(path)
    if not path.exists():
        raise LCNetError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise LCNetError(f"checkpoint is not a file: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # random bytes, truncated zip, foreign pickles: all the same to us
        reason = one_line(exc, prefer="WeightsUnpickler error:")
        raise LCNetError(
            f"{path} is not an LCNet checkpoint (torch.load failed: {reason[:160]})"
        ) from exc
    if not isinstance(ckpt, dict):
        raise LCNetError(f"{path} is not an LCNet checkpoint (it holds a {type(ckpt).__name__})")
    needed = MODEL_KEYS + (RESUME_KEYS if resumable else ())
    missing = [k for k in needed if k not in ckpt]
    if missing:
        what = "a resumable LCNet checkpoint" if resumable else "an LCNet checkpoint"
        raise LCNetError(f"{path} is not {what} (missing keys: {', '.join(missing)})")
    return ckpt


def config_from_checkpoint(ckpt: Mapping[str, Any], path: Path) -> LCNetConfig:
    raw = ckpt["model_config"]
    if not isinstance(raw, Mapping):
        raise LCNetError(f"{path}: its model_config is a {type(raw).__name__}, not a dict")
    try:
        return LCNetConfig.from_dict(dict(raw))
    except (TypeError, ValueError) as exc:
        raise LCNetError(f"{path}: its model config is not understood ({exc})") from exc


def model_from_checkpoint(
    ckpt: Mapping[str, Any], path: str | os.PathLike[str], lc_backend: str | None = None
) -> LCNet:
    """Build the checkpoint's model and load its weights (on CPU); ``lc_backend`` overrides."""
    path = Path(path)
    config = config_from_checkpoint(ckpt, path)
    if lc_backend is not None:
        config = dataclasses.replace(config, lc_backend=lc_backend)
    try:
        model = LCNet(config)
    except ValueError as exc:
        raise LCNetError(f"{path}: its model config is not valid ({exc})") from exc
    load_weights(model, ckpt["model"], path)
    return model


def load_weights(model: torch.nn.Module, state: Any, path: Path) -> None:
    if not isinstance(state, Mapping):
        raise LCNetError(f"{path}: its 'model' entry is a {type(state).__name__}, not weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = one_line(exc)
        raise LCNetError(
            f"{path}: its weights do not fit the model config {_describe(model)} ({detail[:200]})"
        ) from exc


def _describe(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__
    return f"widths={tuple(config.widths)} kernel_size={config.kernel_size}"


# --------------------------------------------------------------------------------------------
# Random number generator states, as tensors and primitives (weights_only=True loads them)


def get_rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global one)
    version, py_state, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (user code may draw from the global generator)
        (
            "MT19937",
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
