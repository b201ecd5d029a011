"""The run folder of ``lcnet train``: what may be started or resumed in it, the merge of a
resumed run's arguments, and ``metrics.jsonl``.

What a run leaves in its folder (only rank 0 writes):

* ``config.json``: every training argument, the model config and the derived numbers;
* ``train.log``: the log; ``metrics.jsonl``: one JSON object per logged step or validation;
* ``last.pt`` (and ``best.pt`` by validation PSNR): checkpoints (:mod:`lcnet.checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import LCNetError, flag
from .io import atomic_write

__all__ = [
    "RUN_FILES",
    "MetricsLog",
    "clear_run_files",
    "merge_resumed_args",
    "prepare_run_dir",
    "show",
]

log = logging.getLogger(__name__)

#: Files of a run folder; --overwrite removes exactly these (never the folder itself).
RUN_FILES = ("config.json", "train.log", "metrics.jsonl", "last.pt", "best.pt")

# Flags that describe the model or the optimiser's schedule: a resumed run cannot change them,
# because the checkpoint's weights or its optimiser / scheduler state would contradict them.
FROZEN_ON_RESUME = (
    "widths",
    "kernel_size",
    "lr",
    "lr_step_epochs",
    "lr_gamma",
    "schedule",
    "warmup_steps",
    "optimizer",
)
# Flags that change which batches are drawn or how the loss is computed: a resumed run may
# change them, but then it no longer matches an uninterrupted run, which the log says.
CHANGES_TRAJECTORY = (
    "data",
    "blur_dir",
    "batch_size",
    "patch_size",
    "content_weight",
    "vgg_weights",
    "seed",
    "amp",
)
# Flags that never come from the saved run.
PER_INVOCATION = ("out", "resume", "overwrite")

C = TypeVar("C")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> Path:
    """Check the run folder against --resume / --overwrite; writes nothing. A folder that a
    crash left without a checkpoint is explained, with the way on."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LCNetError(f"--out {out} exists and is not a folder")
    has_checkpoint = (out / "last.pt").is_file()
    used = out.is_dir() and any(out.iterdir())
    if used and not has_checkpoint and (resume or not overwrite):
        # config.json / train.log but no last.pt: the run stopped before its first save.
        log_file = out / "train.log"
        why = f" (see {log_file})" if log_file.is_file() else ""
        raise LCNetError(
            f"{'--resume' if resume else '--out'}: {out} holds no checkpoint to continue from: "
            f"the run there stopped before its first save{why}; pass --overwrite to start it "
            "again"
        )
    if resume:
        if not has_checkpoint:
            raise LCNetError(f"--resume: no checkpoint {out / 'last.pt'} to resume from")
        return out
    if used and not overwrite:
        raise LCNetError(
            f"--out {out} already exists and is not empty; pass --resume to continue that run "
            "or --overwrite to start it again"
        )
    return out


def clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def merge_resumed_args(
    cfg: C, saved: Mapping[str, Any], explicit: frozenset[str] | None, path: Path
) -> C:
    """The saved run's arguments, except those given again on the command line."""
    try:
        saved_cfg = type(cfg).from_dict(saved)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise LCNetError(f"--resume: {path} holds unreadable training arguments ({exc})") from exc
    merged = dataclasses.replace(cfg)
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        name = f.name
        if name in PER_INVOCATION:
            continue
        given = explicit is None or name in explicit
        new, old = getattr(cfg, name), getattr(saved_cfg, name)
        if not given:
            setattr(merged, name, old)
            continue
        if same(new, old):
            continue
        if name in FROZEN_ON_RESUME:
            raise LCNetError(
                f"--resume: {path} was trained with {flag(name)} {show(old)}, "
                f"not {show(new)}; a run cannot change it"
            )
        if name in CHANGES_TRAJECTORY:
            log.warning(
                "resuming with %s %s instead of %s: the run will differ from an uninterrupted one",
                flag(name),
                show(new),
                show(old),
            )
    return merged


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class MetricsLog:
    """Appends JSON lines to metrics.jsonl (rank 0 only) and keeps them in memory."""

    def __init__(self, path: Path | None, keep_until_step: int | None) -> None:
        self.path, self.history = path, []
        if path is not None and keep_until_step is not None and path.exists():
            # A resumed run drops the lines written after its checkpoint: they will be redone.
            kept = []
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= keep_until_step:
                        kept.append(line)
            atomic_write(path, lambda f: f.write("".join(k + "\n" for k in kept).encode()))

    def write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
