"""Training loop of LCNet (section 3.1 of the paper), in one process or data-parallel.

The recipe of the paper is the default: batches of 32 random 200×200 crops (flips and channel
shuffle are done by :class:`lcnet.data.GoproDataset`), Adam at lr 1e-3 multiplied by 0.1 every
500 epochs, 1500 epochs, loss L1 + 0.1 · VGG-19 content loss.

What a run leaves in its folder (only rank 0 writes):

* ``config.json``: every training argument, the model config and the derived numbers;
* ``train.log``: the log; ``metrics.jsonl``: one JSON object per logged step or validation;
* ``last.pt`` (and ``best.pt`` by validation PSNR): checkpoints that hold only tensors and
  primitive containers, so they load with ``torch.load(..., weights_only=True)``.

Exact resumption: every random draw of the data depends only on (seed, epoch, item) and the
order of an epoch's items on a ``torch.Generator`` seeded with (seed, epoch), so a resumed run
rebuilds the same batches, skipping those of the current epoch already done. The learning
rate is a ``StepLR`` over epochs whose state travels in the checkpoint.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains a
``DistributedDataParallel`` replica on its consecutive share of each global batch, so the
sequence of global batches does not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import lcblock_cuda

from .data import GoproDataset, ensure_default_dataset, list_pairs, read_image
from .losses import DeblurLoss, VGGWeightsNotFoundError
from .model import LCNet, LCNetConfig

__all__ = [
    "EXIT_INTERRUPTED",
    "LCNetError",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
    "train",
    "write_json",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lcnet-checkpoint"
CHECKPOINT_VERSION = 1
#: Keys every checkpoint has; a resumable one also has RESUME_KEYS.
MODEL_KEYS = ("model", "model_config")
RESUME_KEYS = ("optimizer", "scheduler", "step", "epoch", "step_in_epoch", "rng", "train_args")
#: Files of a run folder; --overwrite removes exactly these (never the folder itself).
RUN_FILES = ("config.json", "train.log", "metrics.jsonl", "last.pt", "best.pt")
EXIT_INTERRUPTED = 130  # the shell's code for "ended by SIGINT"
GOPRO_LAYOUT = "expected ROOT/{train,test}/SEQUENCE/{blur,blur_gamma,sharp}/*.png"

# Flags that describe the model or the optimiser's schedule: a resumed run cannot change them,
# because the checkpoint's weights or its optimiser / scheduler state would contradict them.
_FROZEN_ON_RESUME = ("widths", "kernel_size", "lr", "lr_step_epochs", "lr_gamma")
# Flags that change which batches are drawn or how the loss is computed: a resumed run may
# change them, but then it no longer matches an uninterrupted run, which the log says.
_CHANGES_TRAJECTORY = (
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
_PER_INVOCATION = ("out", "resume", "overwrite")


class LCNetError(Exception):
    """A user error: a missing or unreadable file, a bad flag value, a clash with a previous run.

    The command line prints its message as one line on stderr and exits with code 2.
    """


@dataclass
class TrainConfig:
    """Arguments of ``lcnet train``; the defaults are the paper's recipe."""

    data: str | None = None  # GOPRO-layout root; None: the bundled synthetic set
    blur_dir: str = "blur"  # "blur" or "blur_gamma" (Nah et al.)
    out: str = "runs/lcnet"
    epochs: int = 1500
    max_steps: int | None = None  # stop after this many optimiser steps (whichever ends first)
    batch_size: int = 32  # global batch, split across processes
    patch_size: int = 200
    lr: float = 1e-3
    lr_step_epochs: int = 500
    lr_gamma: float = 0.1
    content_weight: float = 0.1
    vgg_weights: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # float16 autocast + gradient scaling, CUDA only
    workers: int | None = None  # data-loading processes per rank; None: min(8, CPU count)
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    # model options (the rest of LCNetConfig keeps its defaults)
    widths: tuple[int, ...] = (18, 36, 72)
    kernel_size: int = 5
    lc_backend: str = "fused"
    # bookkeeping
    val_every: int = 0  # steps between validations on the test split; 0: none
    val_images: int = 4
    log_every: int = 10
    save_every: int = 500  # steps between checkpoints (one is always written at the end)

    def validate(self) -> None:
        """Raise :class:`LCNetError` naming the flag and the value for a bad setting."""
        positive = ("epochs", "batch_size", "patch_size", "lr_step_epochs", "kernel_size")
        positive += ("val_images", "log_every", "save_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LCNetError(f"{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("max_steps",):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise LCNetError(f"{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("val_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise LCNetError(f"{_flag(name)} must be an integer >= 0, got {value!r}")
        if self.workers is not None and self.workers < 0:
            raise LCNetError(f"--workers must be an integer >= 0, got {self.workers!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise LCNetError(f"--lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.lr_gamma) and self.lr_gamma > 0):
            raise LCNetError(f"--lr-gamma must be a positive number, got {self.lr_gamma!r}")
        if not (math.isfinite(self.content_weight) and self.content_weight >= 0):
            raise LCNetError(f"--content-weight must be a number >= 0, got {self.content_weight!r}")
        if self.kernel_size % 2 == 0:
            raise LCNetError(f"--kernel-size must be odd, got {self.kernel_size}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise LCNetError(f"--widths must be positive integers, got {self.widths!r}")
        choices = {
            "blur_dir": ("blur", "blur_gamma"),
            "device": ("auto", "cpu", "cuda"),
            "lc_backend": ("fused", "reference"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LCNetError(
                    f"{_flag(name)} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.resume and self.overwrite:
            raise LCNetError("--resume and --overwrite exclude each other")
        try:
            self.model_config()
        except ValueError as exc:  # e.g. a width that the LCBlock squeeze does not divide
            raise LCNetError(f"--widths / --kernel-size: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Primitive values only (a checkpoint loads with weights_only=True)."""
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "widths" in kwargs:
            kwargs["widths"] = tuple(kwargs["widths"])
        return cls(**kwargs)

    def model_config(self) -> LCNetConfig:
        return LCNetConfig(
            widths=tuple(self.widths), kernel_size=self.kernel_size, lc_backend=self.lc_backend
        )


@dataclass
class TrainResult:
    step: int
    epoch: int
    checkpoint: Path
    interrupted: bool = False
    last_loss: float | None = None
    best_psnr: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --------------------------------------------------------------------------------------------
# Files: atomic writes and checkpoints


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets one open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(fileobj)`` to a temporary file next to ``path``, fsync, rename.

    An interrupted write leaves the previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, allow_nan=True) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """``torch.save`` atomically: temporary file in the same folder, fsync, ``os.replace``."""
    _atomic_write(Path(path), lambda f: torch.save(dict(state), f))


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
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        unpickler = [line for line in lines if line.startswith("WeightsUnpickler error:")]
        reason = (unpickler or lines or [type(exc).__name__])[0]
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


def _config_from_checkpoint(ckpt: Mapping[str, Any], path: Path) -> LCNetConfig:
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
    config = _config_from_checkpoint(ckpt, path)
    if lc_backend is not None:
        config = dataclasses.replace(config, lc_backend=lc_backend)
    try:
        model = LCNet(config)
    except ValueError as exc:
        raise LCNetError(f"{path}: its model config is not valid ({exc})") from exc
    _load_weights(model, ckpt["model"], path)
    return model


def _load_weights(model: torch.nn.Module, state: Any, path: Path) -> None:
    if not isinstance(state, Mapping):
        raise LCNetError(f"{path}: its 'model' entry is a {type(state).__name__}, not weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
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


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: Mapping[str, Any]) -> None:
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


# --------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class _Dist:
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


def _dist_from_env() -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    return _Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


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


def check_backend(backend: str, device: torch.device) -> None:
    """The fused backend needs the compiled kernels (with CUDA ones for a GPU): say so early,
    with the way out, instead of failing inside the first forward pass."""
    if backend != "fused":
        return
    error = lcblock_cuda.extension_error()
    if error is not None:
        raise LCNetError(
            f"--lc-backend fused: the compiled lcblock_cuda kernels could not be loaded "
            f"({error}); rebuild the package (pip install --no-build-isolation .) or pass "
            "--lc-backend reference"
        )
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


def data_root(data: str | None, ddp: _Dist | None = None) -> Path:
    """``--data`` as a Path; None: the bundled synthetic set, built on first use (by rank 0
    while the other ranks wait)."""
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise LCNetError(f"--data {root}: no such folder")
        return root
    ddp = ddp or _Dist()
    try:
        if ddp.is_main:
            ensure_default_dataset()
        ddp.barrier()
        return ensure_default_dataset()
    except (OSError, ValueError) as exc:
        raise LCNetError(f"the bundled data set could not be built: {exc}") from exc


def _check_patch_size(dataset: GoproDataset, patch_size: int) -> None:
    """Crops must fit the images (checked on the first pair; GOPRO's are all 1280x720)."""
    pair = dataset.pairs[0]
    try:
        height, width = read_image(pair.blur).shape[:2]
    except (OSError, ValueError) as exc:
        raise LCNetError(str(exc)) from exc
    if patch_size > min(height, width):
        raise LCNetError(
            f"--patch-size {patch_size} is larger than the training images "
            f"({width}x{height} for {pair.blur})"
        )


# --------------------------------------------------------------------------------------------
# Which items each step trains on


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed mixed from (seed, epoch), for the epoch's torch.Generator."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class _BatchPlan:
    """The items of every step of every epoch, for one rank.

    Epoch e visits the items in the order of ``torch.randperm`` drawn from a generator seeded
    with (seed, e); step s of the epoch takes places [s·B, (s+1)·B) of that order (B the global
    batch), repeating the order when the set holds fewer than B items. An epoch has
    max(1, N // B) steps: the remainder is dropped, as DataLoader(drop_last=True) does. Rank r
    of W takes the r-th of the W consecutive equal shares of each global batch.
    """

    num_items: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_items // self.global_batch)

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_items, generator=generator).tolist()
        needed = self.steps_per_epoch * self.global_batch
        return (order * math.ceil(needed / self.num_items))[:needed]

    def rank_batch(self, order: list[int], step_in_epoch: int) -> list[int]:
        per_rank = self.global_batch // self.world_size
        start = step_in_epoch * self.global_batch + self.rank * per_rank
        return order[start : start + per_rank]


class _PlanSampler(Sampler[list[tuple[int, int]]]):
    """Endless batch sampler: yields [(epoch, item), ...] from (epoch, step) onwards."""

    def __init__(self, plan: _BatchPlan, epoch: int, step_in_epoch: int) -> None:
        self.plan, self.epoch, self.step_in_epoch = plan, epoch, step_in_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.step_in_epoch
        while True:
            order = self.plan.order(epoch)
            for step in range(start, self.plan.steps_per_epoch):
                yield [(epoch, item) for item in self.plan.rank_batch(order, step)]
            epoch, start = epoch + 1, 0


class _EpochItems(Dataset):
    """Indexes a GoproDataset by (epoch, item), so worker processes see the right epoch."""

    def __init__(self, base: GoproDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, item = key
        self.base.set_epoch(epoch)
        return self.base[item]


# --------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


class _StopFlag:
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

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():  # signal() needs it
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------
# Run folder


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    """Check the run folder against --resume / --overwrite; writes nothing."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise LCNetError(f"--out {out} exists and is not a folder")
    if cfg.resume:
        if not (out / "last.pt").is_file():
            raise LCNetError(f"--resume: no checkpoint {out / 'last.pt'} to resume from")
        return out
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise LCNetError(
            f"--out {out} already exists and is not empty; pass --resume to continue that run "
            "or --overwrite to start it again"
        )
    return out


def _clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def _merge_resumed_args(
    cfg: TrainConfig, saved: Mapping[str, Any], explicit: frozenset[str] | None, path: Path
) -> TrainConfig:
    """The saved run's arguments, except those given again on the command line."""
    try:
        saved_cfg = TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise LCNetError(f"--resume: {path} holds unreadable training arguments ({exc})") from exc
    merged = dataclasses.replace(cfg)
    for f in dataclasses.fields(TrainConfig):
        name = f.name
        if name in _PER_INVOCATION:
            continue
        given = explicit is None or name in explicit
        new, old = getattr(cfg, name), getattr(saved_cfg, name)
        if not given:
            setattr(merged, name, old)
            continue
        if _same(new, old):
            continue
        if name in _FROZEN_ON_RESUME:
            raise LCNetError(
                f"--resume: {path} was trained with {_flag(name)} {_show(old)}, "
                f"not {_show(new)}; a run cannot change it"
            )
        if name in _CHANGES_TRAJECTORY:
            log.warning(
                "resuming with %s %s instead of %s: the run will differ from an uninterrupted one",
                _flag(name),
                _show(new),
                _show(old),
            )
    return merged


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------------------------
# The loop


def _train_step(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    blur: torch.Tensor,
    sharp: torch.Tensor,
    amp: bool,
) -> torch.Tensor:
    """One optimiser step; returns the (detached) loss of this rank's share of the batch."""
    with torch.autocast(device_type=blur.device.type, dtype=torch.float16, enabled=amp):
        loss = loss_fn(model(blur), sharp)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _checkpoint_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    step: int,
    epoch: int,
    step_in_epoch: int,
    best_psnr: float | None,
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "best_psnr": best_psnr,
        "rng": _rng_state(),
        "train_args": cfg.to_dict(),
        "torch_version": str(torch.__version__),
    }


class _MetricsLog:
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
            _atomic_write(path, lambda f: f.write("".join(k + "\n" for k in kept).encode()))

    def write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, explicit: frozenset[str] | None = None) -> TrainResult:
    """Train LCNet as ``cfg`` says; returns where it stopped.

    ``explicit`` names the fields the user gave on the command line: with ``cfg.resume``,
    every other field is taken from the saved run (None: all fields count as given).
    Raises :class:`LCNetError` for user errors. Under ``torchrun`` every process calls this.
    """
    cfg.validate()
    ddp = _dist_from_env()
    _check_batch_split(cfg.batch_size, ddp.world_size)
    if ddp.enabled and not dist.is_initialized():
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ddp.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
    try:
        return _train(cfg, explicit, ddp)
    finally:
        if ddp.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _check_batch_split(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise LCNetError(
            f"--batch-size {batch_size} cannot be split evenly across {world_size} processes"
        )


def _train(cfg: TrainConfig, explicit: frozenset[str] | None, ddp: _Dist) -> TrainResult:
    # ---- checks that write nothing (all ranks make them, so all ranks fail alike) ----
    out = _prepare_run_dir(cfg)
    ckpt: dict[str, Any] | None = None
    if cfg.resume:
        ckpt = load_checkpoint(out / "last.pt", resumable=True)
        cfg = _merge_resumed_args(cfg, ckpt["train_args"], explicit, out / "last.pt")
        cfg.validate()
    _check_batch_split(cfg.batch_size, ddp.world_size)
    device = resolve_device(cfg.device, ddp.local_rank)
    check_backend(cfg.lc_backend, device)
    amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not amp:
        log.warning("--amp: mixed precision needs CUDA; training in float32 on %s", device)
    workers = min(8, os.cpu_count() or 1) if cfg.workers is None else cfg.workers

    root = data_root(cfg.data, ddp)
    try:
        dataset = GoproDataset(
            root,
            split="train",
            blur_dir=cfg.blur_dir,
            patch_size=cfg.patch_size,
            augment=True,
            seed=cfg.seed,
        )
        val_pairs = (
            list_pairs(root, "test", cfg.blur_dir)[: cfg.val_images] if cfg.val_every else []
        )
    except (FileNotFoundError, ValueError) as exc:
        raise LCNetError(f"--data {root}: {exc} ({GOPRO_LAYOUT})") from exc
    _check_patch_size(dataset, cfg.patch_size)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 (seeds the global generator for user code)
    random.seed(cfg.seed)
    model_config = cfg.model_config()
    model = LCNet(model_config)
    if ckpt is not None:
        saved_config = _config_from_checkpoint(ckpt, out / "last.pt")
        diff = saved_config.architecture_diff(model_config)
        if diff:
            what = ", ".join(f"{k}={_show(a)} (asked: {_show(b)})" for k, (a, b) in diff.items())
            raise LCNetError(f"--resume: {out / 'last.pt'} holds another model: {what}")
        _load_weights(model, ckpt["model"], out / "last.pt")
    model.to(device)
    try:
        loss_fn = DeblurLoss(content_weight=cfg.content_weight, vgg_weights=cfg.vgg_weights)
    except VGGWeightsNotFoundError as exc:
        raise LCNetError(str(exc)) from exc
    except ValueError as exc:  # a file that is not VGG-19 weights
        raise LCNetError(f"--vgg-weights: {exc}") from exc
    loss_fn.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    step, epoch, step_in_epoch, best_psnr = 0, 0, 0, None
    rng_state: dict[str, Any] | None = None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, epoch, step_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]
        best_psnr = ckpt.get("best_psnr")
        rng_state = ckpt["rng"]
    del ckpt
    net = model
    if ddp.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)

    plan = _BatchPlan(len(dataset), cfg.batch_size, cfg.seed, ddp.rank, ddp.world_size)
    total_steps = cfg.epochs * plan.steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    # ---- from here on rank 0 writes into the run folder ----
    ddp.barrier()
    package_log = logging.getLogger("lcnet")
    saved_level = package_log.level
    if not ddp.is_main:  # one voice: the other ranks only report problems
        package_log.setLevel(max(logging.WARNING, package_log.getEffectiveLevel()))
    elif package_log.getEffectiveLevel() > logging.INFO:  # train.log gets the INFO lines
        package_log.setLevel(logging.INFO)
    file_handler: logging.Handler | None = None
    try:
        if ddp.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                _clear_run_files(out)
            file_handler = logging.FileHandler(out / "train.log")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            package_log.addHandler(file_handler)
            write_json(
                out / "config.json",
                {
                    "train": cfg.to_dict(),
                    "model": model_config.to_dict(),
                    "data_root": str(root),
                    "train_pairs": len(dataset),
                    "steps_per_epoch": plan.steps_per_epoch,
                    "total_steps": total_steps,
                    "world_size": ddp.world_size,
                    "per_rank_batch": cfg.batch_size // ddp.world_size,
                    "workers": workers,
                    "device": describe_device(device),
                    "amp": amp,
                    "params": model.num_parameters(),
                    "size_mib": model.size_mib(),
                    "torch": str(torch.__version__),
                    "command": sys.argv,
                },
            )
        metrics = _MetricsLog(
            out / "metrics.jsonl" if ddp.is_main else None, step if cfg.resume else None
        )
        log.info(
            "%s LCNet (%d parameters, %.2f MiB) on %s, %d process(es): %d train pairs from %s/%s, "
            "%d steps/epoch, batch %d of %d×%d crops, steps %d→%d",
            "resuming" if cfg.resume else "training",
            model.num_parameters(),
            model.size_mib(),
            describe_device(device),
            ddp.world_size,
            len(dataset),
            root,
            cfg.blur_dir,
            plan.steps_per_epoch,
            cfg.batch_size,
            cfg.patch_size,
            cfg.patch_size,
            step,
            total_steps,
        )
        loader = DataLoader(
            _EpochItems(dataset),
            batch_sampler=_PlanSampler(plan, epoch, step_in_epoch),
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        batches = iter(loader)  # draws the loader's base seed: before the RNG state is restored
        if rng_state is not None:
            _set_rng_state(rng_state)
        result = _loop(
            cfg, ddp, net, model, loss_fn, optimizer, scheduler, scaler, batches, plan, metrics,
            val_pairs, device, amp, out, total_steps, step, epoch, step_in_epoch, best_psnr,
        )  # fmt: skip
    finally:
        package_log.setLevel(saved_level)
        if file_handler is not None:
            package_log.removeHandler(file_handler)
            file_handler.close()
    return result


def _loop(
    cfg: TrainConfig,
    ddp: _Dist,
    net: torch.nn.Module,
    model: LCNet,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    batches: Iterator[Any],
    plan: _BatchPlan,
    metrics: _MetricsLog,
    val_pairs: list[Any],
    device: torch.device,
    amp: bool,
    out: Path,
    total_steps: int,
    step: int,
    epoch: int,
    step_in_epoch: int,
    best_psnr: float | None,
) -> TrainResult:
    def save(name: str) -> Path:
        path = out / name
        if ddp.is_main:
            state = _checkpoint_state(
                model, optimizer, scheduler, scaler, cfg, step, epoch, step_in_epoch, best_psnr
            )
            save_checkpoint(path, state)
        return path

    interrupted, last_loss = False, None
    window_loss, window_steps, window_start = torch.zeros((), device=device), 0, time.perf_counter()
    bar = tqdm(
        total=total_steps, initial=step, desc="train", unit="step", disable=not ddp.is_main,
        dynamic_ncols=True, file=sys.stderr,
    )  # fmt: skip
    with _StopFlag() as stop, logging_redirect_tqdm(loggers=[logging.getLogger("lcnet")]), bar:
        net.train()
        while step < total_steps:
            if _stop_requested(stop, ddp):
                interrupted = True
                break
            try:
                blur, sharp = next(batches)
            except RuntimeError:
                if stop.requested:  # Ctrl-C also reached the data workers
                    interrupted = True
                    break
                raise
            except (OSError, ValueError) as exc:  # a missing, corrupt or too small image
                raise LCNetError(_last_line(exc)) from exc
            blur = blur.to(device, non_blocking=True)
            sharp = sharp.to(device, non_blocking=True)
            loss = _train_step(net, loss_fn, optimizer, scaler, blur, sharp, amp)
            step, step_in_epoch = step + 1, step_in_epoch + 1
            if step_in_epoch == plan.steps_per_epoch:
                epoch, step_in_epoch = epoch + 1, 0
                scheduler.step()  # StepLR counts epochs
            window_loss += loss
            window_steps += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == total_steps:
                if ddp.enabled:
                    dist.all_reduce(window_loss)
                    window_loss /= ddp.world_size
                last_loss = window_loss.item() / window_steps
                elapsed = time.perf_counter() - window_start
                images_per_s = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(
                    loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}"
                )
                record = {"kind": "train", "step": step, "epoch": epoch, "loss": last_loss}
                record.update(lr=lr, images_per_s=images_per_s, time=time.time())
                metrics.write(record)
                log.debug("step %d epoch %d loss %.5f lr %.3g", step, epoch, last_loss, lr)
                window_loss.zero_()
                window_steps, window_start = 0, time.perf_counter()

            if cfg.val_every and step % cfg.val_every == 0:
                if ddp.is_main:
                    psnr = _validate(model, val_pairs, device)
                    improved = best_psnr is None or psnr > best_psnr
                    best_psnr = psnr if improved else best_psnr
                    metrics.write({"kind": "val", "step": step, "epoch": epoch, "val_psnr": psnr})
                    log.info("step %d: validation PSNR %.2f dB on %d images%s", step, psnr,
                             len(val_pairs), " (best)" if improved else "")  # fmt: skip
                    if improved:
                        save("best.pt")
                ddp.barrier()
                net.train()

            if step % cfg.save_every == 0 and step < total_steps:
                save("last.pt")

        path = save("last.pt")
    if ddp.enabled:
        digests: list[str | None] = [None] * ddp.world_size
        dist.all_gather_object(digests, _state_digest(model))
        in_sync = len(set(digests)) == 1
        metrics.write({"kind": "sync", "step": step, "ranks_in_sync": in_sync})
        if not in_sync:
            log.error("the %d processes ended with different weights", ddp.world_size)
    if interrupted:
        log.warning("interrupted at step %d: saved %s (continue with --resume)", step, path)
    else:
        log.info("done at step %d (epoch %d): saved %s", step, epoch, path)
    return TrainResult(step, epoch, path, interrupted, last_loss, best_psnr, metrics.history)


def _last_line(exc: BaseException) -> str:
    """The message of an error; DataLoader workers re-raise with the worker's traceback,
    whose last line is ``module.Type: message``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].startswith("Caught "):
        head, sep, tail = lines[-1].partition(": ")
        return tail if sep and " " not in head else lines[-1]
    return " ".join(lines)


def _stop_requested(stop: _StopFlag, ddp: _Dist) -> bool:
    """Every rank stops at the same step: the flag is OR-ed across processes."""
    if not ddp.enabled:
        return stop.requested
    flag = torch.tensor([1 if stop.requested else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _validate(model: LCNet, pairs: list[Any], device: torch.device) -> float:
    """Mean PSNR of the model on the given test pairs (whole images)."""
    from .evaluate import evaluate_pairs  # evaluate imports this module

    records = evaluate_pairs(model, pairs, device)
    return float(np.mean([r["psnr"] for r in records]))
