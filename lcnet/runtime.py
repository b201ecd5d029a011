"""Where and how a command runs: devices, the compiled kernels, data-parallel processes, the
data root, and Ctrl-C / SIGTERM.

Signals (docs/DESIGN.md, "Trainer guarantees"): the first SIGINT or SIGTERM asks the training
loop to stop after the current step and save; data-loading workers ignore both (systemd and
Slurm signal the whole process group, and a worker killed by its signal would otherwise end the
run with an error before the main process can save).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import lcblock_cuda

from .data import ensure_default_dataset
from .errors import LCNetError

__all__ = [
    "Dist",
    "StopFlag",
    "check_backend",
    "data_root",
    "describe_device",
    "dist_from_env",
    "extension_missing",
    "ignore_stop_signals",
    "resolve_device",
]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (``torchrun`` sets the variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def dist_from_env() -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible; ``cuda`` without one is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise LCNetError("--device cuda: no CUDA device is visible to PyTorch")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "cpu":
        return torch.device("cpu")
    raise LCNetError(f"--device must be auto, cpu or cuda, got {name!r}")


def extension_missing(error: BaseException | None = None) -> str:
    """The one message for "the compiled kernels did not load", with both ways out."""
    error = lcblock_cuda.extension_error() if error is None else error
    return (
        f"the compiled lcblock_cuda kernels could not be loaded ({error}); rebuild the package "
        "(pip install --no-build-isolation .) or use the pure-PyTorch backend "
        "(--lc-backend reference)"
    )


def check_backend(backend: str, device: torch.device) -> None:
    """The fused backend needs the compiled kernels (with CUDA ones for a GPU): say so early,
    with the way out, instead of failing inside the first forward pass."""
    if backend != "fused":
        return
    if lcblock_cuda.extension_error() is not None:
        raise LCNetError(f"--lc-backend fused: {extension_missing()}")
    if device.type == "cuda" and not lcblock_cuda.cuda_compiled():
        raise LCNetError(
            "--lc-backend fused: lcblock_cuda was built without CUDA kernels; rebuild it on a "
            "machine with the CUDA toolkit, or pass --lc-backend reference (slow) or --device cpu"
        )


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} thread(s))"


# --------------------------------------------------------------------------------------------
# Data


def data_root(data: str | None, ddp: Dist | None = None) -> Path:
    """``--data`` as a Path; None: the bundled synthetic set, built on first use (by rank 0
    while the other ranks wait)."""
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise LCNetError(f"--data {root}: no such folder")
        return root
    ddp = ddp or Dist()
    try:
        if ddp.is_main:
            ensure_default_dataset()
        ddp.barrier()
        return ensure_default_dataset()
    except (OSError, ValueError) as exc:
        raise LCNetError(f"the bundled data set could not be built: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


class StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current step (and save);
    a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # signal() needs it
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the training DataLoader: the workers ignore SIGINT and SIGTERM and
    leave stopping to the main process, which saves first (workers still exit when the main
    process does)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
