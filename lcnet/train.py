"""Training of LCNet (section 3.1 of the paper), in one process or data-parallel.

The recipe of the paper is the default: batches of 32 random 200x200 crops (flips and channel
shuffle are done by :class:`lcnet.data.GoproDataset`), Adam at lr 1e-3 multiplied by 0.1 every
500 epochs, 1500 epochs, loss L1 + 0.1 * VGG-19 content loss.

Read top to bottom: :class:`TrainConfig` (the flags), :func:`train` (setup), :func:`_loop`
(the loop) and its parts :func:`_train_step`, :func:`_log`, :func:`_validate`, :func:`_save`.
The run folder is described in :mod:`lcnet.rundir`, the batch plan in :mod:`lcnet.batches`.

Guarantees (docs/DESIGN.md, "Trainer guarantees"): checkpoints are written atomically and never
with non-finite weights; a resumed run rebuilds the same batches and ends bitwise equal to an
uninterrupted one; Ctrl-C or SIGTERM (to the process or its whole group) stops after the
current step and saves; a run that stops on an error saves the steps done before reporting it.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains a
``DistributedDataParallel`` replica on its consecutive share of each global batch, so the
sequence of global batches does not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .batches import BatchPlan, EpochItems, PlanSampler, check_patch_size
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    config_from_checkpoint,
    get_rng_state,
    load_checkpoint,
    load_weights,
    non_finite_parameters,
    save_checkpoint,
    set_rng_state,
    state_digest,
)
from .data import BOTH_BLUR_DIRS, TRAIN_BLUR_DIRS, GoproDataset
from .errors import LCNetError, check_int, flag, one_line
from .evaluate import evaluate_pairs
from .io import (
    GOPRO_LAYOUT,
    check_output_folder,
    list_pairs,
    remove_stale_temp_files,
    write_json,
)
from .losses import DeblurLoss, VGGWeightsNotFoundError
from .model import INITS, LC_LOGITS, LCNet, LCNetConfig
from .progress import Progress
from .recipes import RECIPES, apply_recipe, cosine_factor, divergence_message
from .rundir import (
    RUN_FILES,
    MetricsLog,
    clear_run_files,
    merge_resumed_args,
    prepare_run_dir,
    show,
)
from .runtime import (
    Dist,
    StopFlag,
    check_backend,
    data_root,
    describe_device,
    dist_from_env,
    ignore_stop_signals,
    resolve_device,
)

__all__ = ["TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)

#: Under data parallelism the ranks agree on a stop request (one all_reduce, a device sync
#: under NCCL) only every this many steps.
STOP_CHECK_EVERY = 10
#: --amp: the autocast dtype per device type (float16 needs CUDA's gradient scaler).
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}


@dataclass
class TrainConfig:
    """Arguments of ``lcnet train``; the defaults are the paper's recipe (``--recipe paper``;
    :meth:`from_recipe` gives another recipe's values, see :mod:`lcnet.recipes`)."""

    data: str | None = None  # GOPRO-layout root; None: the bundled synthetic set
    blur_dir: str = "blur"  # "blur", "blur_gamma" (Nah et al.) or "both" (lcnet.data)
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
    amp: bool = False  # autocast: float16 + gradient scaling on CUDA, bfloat16 on the CPU
    workers: int | None = None  # data-loading processes per rank; None: min(8, CPU count)
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    # model options (the rest of LCNetConfig keeps its defaults)
    widths: tuple[int, ...] = (18, 36, 72)
    kernel_size: int = 5
    lc_backend: str = "fused"
    recipe: str = "paper"  # name of the recipe the values came from (lcnet.recipes)
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    schedule: str = "step"  # step: lr * lr_gamma every lr_step_epochs; cosine: per step
    warmup_steps: int = 0  # linear warm-up steps of the cosine schedule
    clip_grad_norm: float = 0.0  # clip the gradients' global norm to this; 0: no clipping
    frequency_weight: float = 0.0  # weight of the FFT L1 term (MIMO-UNet); 0: the paper's loss
    init: str = "xavier"  # xavier (paper) | identity (zero residual branches, docs/DESIGN.md)
    lc_logits: str = "dot"  # dot (paper) | cosine (bounded, learned temperature)
    channels_last: bool = True  # model and batches in channels_last (same results, faster)
    # bookkeeping
    val_every: int = 0  # steps between validations on the test split; 0: none
    val_images: int = 4
    log_every: int = 10
    save_every: int = 500  # steps between checkpoints (one is always written at the end)

    def validate(self) -> None:
        """Raise :class:`~lcnet.errors.LCNetError` naming the flag and the value of a bad one."""
        positive = ("epochs", "batch_size", "patch_size", "lr_step_epochs", "kernel_size")
        for name in (*positive, "val_images", "log_every", "save_every"):
            check_int(flag(name), getattr(self, name), 1)
        check_int("--max-steps", self.max_steps, 1, optional=True)
        check_int("--workers", self.workers, 0, optional=True)
        for name in ("val_every", "seed", "warmup_steps"):
            check_int(flag(name), getattr(self, name), 0)
        for name in ("weight_decay", "clip_grad_norm", "frequency_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise LCNetError(f"{flag(name)} must be a number >= 0, got {value!r}")
        if self.warmup_steps and self.schedule != "cosine":
            raise LCNetError(
                f"--warmup-steps {self.warmup_steps} needs --schedule cosine "
                f"(got --schedule {self.schedule})"
            )
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
            "blur_dir": TRAIN_BLUR_DIRS,
            "device": ("auto", "cpu", "cuda"),
            "lc_backend": ("fused", "reference"),
            "recipe": tuple(RECIPES),
            "optimizer": ("adam", "adamw"),
            "schedule": ("step", "cosine"),
            "init": INITS,
            "lc_logits": LC_LOGITS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LCNetError(
                    f"{flag(name)} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        self.check_run_mode()
        try:
            self.model_config()
        except ValueError as exc:  # e.g. a width that the LCBlock squeeze does not divide
            raise LCNetError(f"--widths / --kernel-size: {exc}") from exc

    def check_run_mode(self) -> None:
        """--resume and --overwrite exclude each other (checked before anything else)."""
        if self.resume and self.overwrite:
            raise LCNetError("--resume and --overwrite exclude each other")

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

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The values of recipe ``name`` (:data:`lcnet.recipes.RECIPES`); ``overrides`` win."""
        try:
            cfg = apply_recipe(cls(**overrides), name, overrides)
        except ValueError as exc:
            raise LCNetError(str(exc)) from exc
        return dataclasses.replace(cfg, recipe=name)

    def model_config(self) -> LCNetConfig:
        return LCNetConfig(
            widths=tuple(self.widths),
            kernel_size=self.kernel_size,
            lc_backend=self.lc_backend,
            init=self.init,
            lc_logits=self.lc_logits,
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


@dataclass
class _State:
    """What the loop advances; a checkpoint saves it."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_psnr: float | None = None
    last_loss: float | None = None
    saved_step: int | None = None  # step of the last.pt on disk, None: none yet


@dataclass
class _Run:
    """What setup builds for the loop; fixed while it runs."""

    cfg: TrainConfig
    ddp: Dist
    device: torch.device
    amp: bool
    out: Path
    model: LCNet
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    plan: BatchPlan
    total_steps: int
    val_pairs: list[Any]
    metrics: MetricsLog


# --------------------------------------------------------------------------------------------
# Setup


def train(cfg: TrainConfig, explicit: frozenset[str] | None = None) -> TrainResult:
    """Train LCNet as ``cfg`` says; returns where it stopped.

    ``explicit`` names the fields the user gave on the command line: with ``cfg.resume``,
    every other field is taken from the saved run (None: all fields count as given).
    Raises :class:`~lcnet.errors.LCNetError` for user errors. Under ``torchrun`` every process
    calls this.
    """
    cfg.check_run_mode()
    ddp = dist_from_env()
    if not cfg.resume:  # a resumed run is checked once its saved flags are merged in
        cfg.validate()
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


def _train(cfg: TrainConfig, explicit: frozenset[str] | None, ddp: Dist) -> TrainResult:
    # ---- checks that write nothing (all ranks make them, so all ranks fail alike) ----
    check_output_folder(cfg.out, "--out")
    out = prepare_run_dir(Path(cfg.out), cfg.resume, cfg.overwrite)
    ckpt: dict[str, Any] | None = None
    if cfg.resume:
        ckpt = load_checkpoint(out / "last.pt", resumable=True)
        cfg = merge_resumed_args(cfg, ckpt["train_args"], explicit, out / "last.pt")
        cfg.validate()
    _check_batch_split(cfg.batch_size, ddp.world_size)
    device = resolve_device(cfg.device, ddp.local_rank)
    check_backend(cfg.lc_backend, device)
    amp = cfg.amp and device.type in AMP_DTYPES
    if cfg.amp and not amp:
        log.warning("--amp: no mixed precision on %s; training in float32", device)
    workers = min(8, os.cpu_count() or 1) if cfg.workers is None else cfg.workers
    root, dataset, val_pairs = _data(cfg, ddp)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 (seeds the global generator for user code)
    random.seed(cfg.seed)
    model = _model(cfg, ckpt, out / "last.pt").to(device, memory_format=_memory_format(cfg))
    loss_fn = _loss(cfg).to(device)
    optimizer, scheduler = _optimizer(cfg, model)
    # Gradient scaling for float16 only: bfloat16 has float32's exponent range.
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    state, rng_state, horizon = _State(), None, None
    if ckpt is not None:
        horizon = _saved_cosine_horizon(ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = _State(ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"], ckpt.get("best_psnr"))
        state.saved_step, rng_state = state.step, ckpt["rng"]
    del ckpt
    net = model
    if ddp.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    plan = BatchPlan(len(dataset), cfg.batch_size, cfg.seed, ddp.rank, ddp.world_size)
    total_steps = cfg.epochs * plan.steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    schedule_steps = None
    if cfg.schedule == "cosine":  # a factor per step; the scheduler's state is its step count
        # A resumed run keeps the horizon it started with: its learning rate at every step is
        # that of the uninterrupted run, and it may stop earlier but not train past the end.
        if horizon is not None and total_steps > horizon:
            length = f"--max-steps {cfg.max_steps}" if cfg.max_steps else f"--epochs {cfg.epochs}"
            raise LCNetError(
                f"--resume: {out / 'last.pt'} follows a cosine schedule that ends at step "
                f"{horizon} (learning rate 0 there); {length} would train past it: resume "
                f"with --max-steps {horizon} or fewer, or start a new run"
            )
        schedule_steps = horizon or total_steps
        _set_cosine(scheduler, cfg.warmup_steps, schedule_steps)

    # ---- from here on rank 0 writes into the run folder ----
    ddp.barrier()
    with _run_folder(out, ddp, cfg.overwrite):
        if ddp.is_main:
            write_json(out / "config.json", {
                "train": cfg.to_dict(), "model": model.config.to_dict(), "data_root": str(root),
                "train_pairs": len(dataset), "steps_per_epoch": plan.steps_per_epoch,
                "total_steps": total_steps, "world_size": ddp.world_size,
                "schedule_steps": schedule_steps,
                "per_rank_batch": cfg.batch_size // ddp.world_size, "workers": workers,
                "device": describe_device(device), "amp": amp,
                "params": model.num_parameters(), "size_mib": model.size_mib(),
                "torch": str(torch.__version__), "command": sys.argv,
            })  # fmt: skip
        metrics = MetricsLog(
            out / "metrics.jsonl" if ddp.is_main else None, state.step if cfg.resume else None
        )
        log.info(
            "%s LCNet (%d parameters, %.2f MiB) on %s, %d process(es): %d train pairs from %s/%s, "
            "%d steps/epoch, batch %d of %d×%d crops, steps %d→%d",
            "resuming" if cfg.resume else "training", model.num_parameters(), model.size_mib(),
            describe_device(device), ddp.world_size, len(dataset), root, cfg.blur_dir,
            plan.steps_per_epoch, cfg.batch_size, cfg.patch_size, cfg.patch_size, state.step,
            total_steps,
        )  # fmt: skip
        loader = DataLoader(
            EpochItems(dataset),
            batch_sampler=PlanSampler(plan, state.epoch, state.step_in_epoch),
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals,  # the main process stops them, after saving
        )
        batches = iter(loader)  # draws the loader's base seed: before the RNG state is restored
        if rng_state is not None:
            set_rng_state(rng_state)
        run = _Run(
            cfg, ddp, device, amp, out, model, net, loss_fn, optimizer, scheduler, scaler, plan,
            total_steps, val_pairs, metrics,
        )  # fmt: skip
        return _loop(run, state, batches)


def _data(cfg: TrainConfig, ddp: Dist) -> tuple[Path, GoproDataset, list[Any]]:
    """The data root, the training set and the validation pairs."""
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
        val_dir = "blur" if cfg.blur_dir == BOTH_BLUR_DIRS else cfg.blur_dir  # eval's default
        val_pairs = list_pairs(root, "test", val_dir)[: cfg.val_images] if cfg.val_every else []
    except (FileNotFoundError, ValueError) as exc:
        raise LCNetError(f"--data {root}: {exc} ({GOPRO_LAYOUT})") from exc
    check_patch_size(dataset, cfg.patch_size)
    return root, dataset, val_pairs


def _model(cfg: TrainConfig, ckpt: Mapping[str, Any] | None, path: Path) -> LCNet:
    """A new model, or the checkpoint's (which must have the configured architecture)."""
    model_config = cfg.model_config()
    model = LCNet(model_config)
    if ckpt is not None:
        saved_config = config_from_checkpoint(ckpt, path)
        diff = saved_config.architecture_diff(model_config)
        if diff:
            what = ", ".join(f"{k}={show(a)} (asked: {show(b)})" for k, (a, b) in diff.items())
            raise LCNetError(f"--resume: {path} holds another model: {what}")
        load_weights(model, ckpt["model"], path)
    return model


def _memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _optimizer(
    cfg: TrainConfig, model: LCNet
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam (the paper) or AdamW, and the schedule: StepLR over epochs (the paper) or a
    per-step LambdaLR (warm-up + cosine) whose factor is set once the run length is known."""
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _CosineFactor(cfg.warmup_steps, 1)
        )
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma
        )
    return optimizer, scheduler


class _CosineFactor:
    """Picklable learning-rate factor of step i (warm-up, then cosine to 0 at total_steps)."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        return cosine_factor(step, self.warmup_steps, self.total_steps)


def _saved_cosine_horizon(ckpt: Mapping[str, Any]) -> int | None:
    """The step at which a checkpoint's cosine schedule ends (None: not a cosine run)."""
    lambdas = ckpt.get("scheduler", {}).get("lr_lambdas") or [None]
    saved = lambdas[0]  # LambdaLR keeps a callable object's attributes in its state
    if isinstance(saved, Mapping) and isinstance(saved.get("total_steps"), int):
        return saved["total_steps"]
    return None


def _set_cosine(scheduler: Any, warmup_steps: int, total_steps: int) -> None:
    scheduler.lr_lambdas = [_CosineFactor(warmup_steps, total_steps)] * len(scheduler.lr_lambdas)
    for group, base, fn in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(scheduler.last_epoch)


def _loss(cfg: TrainConfig) -> DeblurLoss:
    try:
        return DeblurLoss(
            content_weight=cfg.content_weight,
            vgg_weights=cfg.vgg_weights,
            frequency_weight=cfg.frequency_weight,
        )
    except VGGWeightsNotFoundError as exc:
        raise LCNetError(str(exc)) from exc
    except ValueError as exc:  # a file that is not VGG-19 weights
        raise LCNetError(f"--vgg-weights: {exc}") from exc


class _run_folder:  # noqa: N801 (used as a context manager, like a function)
    """Rank 0: prepares the folder (--overwrite clears the run's files, temporary files of
    killed writes go) and copies the log to train.log; the other ranks only report problems."""

    def __init__(self, out: Path, ddp: Dist, overwrite: bool) -> None:
        self.out, self.ddp, self.overwrite = out, ddp, overwrite
        self.package_log = logging.getLogger("lcnet")
        self.handler: logging.Handler | None = None

    def __enter__(self) -> None:
        self.saved_level = self.package_log.level
        if not self.ddp.is_main:
            self.package_log.setLevel(max(logging.WARNING, self.package_log.getEffectiveLevel()))
            return
        if self.package_log.getEffectiveLevel() > logging.INFO:  # train.log gets INFO lines
            self.package_log.setLevel(logging.INFO)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.overwrite:
            clear_run_files(self.out)
        self.handler = logging.FileHandler(self.out / "train.log")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.package_log.addHandler(self.handler)
        stale = remove_stale_temp_files(self.out, RUN_FILES)
        if stale:
            log.warning(
                "removed %d temporary file(s) left by an earlier killed run: %s",
                len(stale),
                " ".join(p.name for p in stale),
            )

    def __exit__(self, *exc: object) -> None:
        self.package_log.setLevel(self.saved_level)
        if self.handler is not None:
            self.package_log.removeHandler(self.handler)
            self.handler.close()


# --------------------------------------------------------------------------------------------
# The loop


def _loop(run: _Run, s: _State, batches: Iterator[Any]) -> TrainResult:
    cfg, interrupted = run.cfg, False
    window = _LossWindow(run.device)
    progress = Progress(run.total_steps, s.step, enabled=run.ddp.is_main)
    with StopFlag() as stop, progress:
        run.net.train()
        try:
            while s.step < run.total_steps:
                if _stop_requested(stop, run.ddp, s.step):
                    interrupted = True
                    break
                batch = _next_batch(batches, stop)
                if batch is None:  # Ctrl-C also reached the data workers
                    interrupted = True
                    break
                blur, sharp = (
                    t.to(run.device, non_blocking=True, memory_format=_memory_format(cfg))
                    for t in batch
                )
                loss, grad_norm = _train_step(run, s, blur, sharp)
                _advance(run, s)
                window.add(loss, grad_norm)
                progress.update()
                if s.step % cfg.log_every == 0 or s.step == run.total_steps:
                    _log(run, s, window, progress, blur[:1])
                if cfg.val_every and s.step % cfg.val_every == 0:
                    _validate(run, s)
                if s.step % cfg.save_every == 0 and s.step < run.total_steps:
                    _save(run, s, "last.pt")
        except Exception as exc:  # a bad image, a dead worker, a bug: keep the steps done
            _save_after_error(run, s, exc)
            raise
        path = _save(run, s, "last.pt")
    _check_ranks_in_sync(run, s)
    if interrupted:
        log.warning("interrupted at step %d: saved %s (continue with --resume)", s.step, path)
    else:
        log.info("done at step %d (epoch %d): saved %s", s.step, s.epoch, path)
    return TrainResult(
        s.step, s.epoch, path, interrupted, s.last_loss, s.best_psnr, run.metrics.history
    )


def _train_step(
    run: _Run, s: _State, blur: torch.Tensor, sharp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step; returns the (detached) loss of this rank's share of the batch and
    the gradients' global norm before clipping.

    A non-finite loss stops the run before it touches the weights (docs/DESIGN.md, 'Training
    recipe'): every rank sees its own loss, and the error says what to change.
    """
    optimizer, scaler = run.optimizer, run.scaler
    dtype = AMP_DTYPES.get(blur.device.type, torch.float16)
    with torch.autocast(device_type=blur.device.type, dtype=dtype, enabled=run.amp):
        loss = run.loss_fn(run.net(blur), sharp)
    if not bool(torch.isfinite(loss)):
        raise _Diverged(
            divergence_message(
                s.step + 1,
                float(loss.detach()),
                optimizer.param_groups[0]["lr"],
                recipe=run.cfg.recipe,
                clip_grad_norm=run.cfg.clip_grad_norm,
                warmup_steps=run.cfg.warmup_steps,
                lc_logits=run.cfg.lc_logits,
            )
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # no-op without amp; clipping needs the true gradients
    max_norm = run.cfg.clip_grad_norm if run.cfg.clip_grad_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), grad_norm.detach()


class _Diverged(LCNetError):
    """The training loss is NaN or infinite: the run stops with one line (exit 2)."""


def _advance(run: _Run, s: _State) -> None:
    s.step, s.step_in_epoch = s.step + 1, s.step_in_epoch + 1
    if run.cfg.schedule == "cosine":
        run.scheduler.step()  # a factor per step
    if s.step_in_epoch == run.plan.steps_per_epoch:
        s.epoch, s.step_in_epoch = s.epoch + 1, 0
        if run.cfg.schedule == "step":
            run.scheduler.step()  # StepLR counts epochs


def _next_batch(batches: Iterator[Any], stop: StopFlag) -> Any:
    """The next batch; None when a stop was requested and the workers are gone."""
    try:
        return next(batches)
    except RuntimeError:
        if stop.requested:
            return None
        raise
    except (OSError, ValueError) as exc:  # a missing, corrupt or too small image
        raise LCNetError(one_line(exc)) from exc


def _stop_requested(stop: StopFlag, ddp: Dist, step: int) -> bool:
    """Every rank stops at the same step: the flag is OR-ed across processes, every
    STOP_CHECK_EVERY steps (each check is a device sync under NCCL)."""
    if not ddp.enabled:
        return stop.requested
    if step % STOP_CHECK_EVERY:
        return False
    flag_ = torch.tensor([1 if stop.requested else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag_ = flag_.cuda()
    dist.all_reduce(flag_, op=dist.ReduceOp.MAX)
    return bool(flag_.item())


class _LossWindow:
    """Sum of the losses and largest gradient norm since the last log line, kept on the
    device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.total, self.steps, self.start = torch.zeros((), device=device), 0, time.perf_counter()
        self.grad_norm = torch.zeros((), device=device)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.total += loss
        torch.maximum(self.grad_norm, grad_norm.to(self.grad_norm.dtype), out=self.grad_norm)
        self.steps += 1

    def reset(self) -> None:
        self.total.zero_()
        self.grad_norm.zero_()
        self.steps, self.start = 0, time.perf_counter()


def _log(
    run: _Run, s: _State, window: _LossWindow, progress: Progress, probe: torch.Tensor
) -> None:
    """One metrics line: mean loss, largest gradient norm and the LCBlocks' largest logits
    (on ``probe``, one training crop) since the last line, learning rate, images/s."""
    if run.ddp.enabled:
        dist.all_reduce(window.total)
        window.total /= run.ddp.world_size
    s.last_loss = window.total.item() / window.steps
    elapsed = time.perf_counter() - window.start
    images_per_s = window.steps * run.cfg.batch_size / max(elapsed, 1e-9)
    grad_norm = float(window.grad_norm)
    logits = [round(v, 3) for v in run.model.lc_logit_bounds(probe)]
    lr = run.optimizer.param_groups[0]["lr"]
    progress.report(
        s.step,
        epoch=s.epoch,
        loss=f"{s.last_loss:.4f}",
        lr=f"{lr:.2e}",
        img_s=f"{images_per_s:.1f}",
    )
    record = {"kind": "train", "step": s.step, "epoch": s.epoch, "loss": s.last_loss}
    record.update(lr=lr, images_per_s=images_per_s, grad_norm_max=grad_norm)
    record.update(lc_logit_max=logits, time=time.time())
    run.metrics.write(record)
    window.reset()


def _validate(run: _Run, s: _State) -> None:
    """Rank 0: mean PSNR on the validation pairs (whole images); keeps best.pt."""
    if run.ddp.is_main:
        records = evaluate_pairs(run.model, run.val_pairs, run.device)
        psnr = float(np.mean([r["psnr"] for r in records]))
        improved = s.best_psnr is None or psnr > s.best_psnr
        s.best_psnr = psnr if improved else s.best_psnr
        run.metrics.write({"kind": "val", "step": s.step, "epoch": s.epoch, "val_psnr": psnr})
        log.info("step %d: validation PSNR %.2f dB on %d images%s", s.step, psnr,
                 len(run.val_pairs), " (best)" if improved else "")  # fmt: skip
        if improved:
            _save(run, s, "best.pt")
    run.ddp.barrier()
    run.net.train()


def _save(run: _Run, s: _State, name: str) -> Path:
    """Rank 0 writes ``name`` atomically; refuses non-finite weights (the file on disk then
    keeps its earlier, good state)."""
    path = run.out / name
    if not run.ddp.is_main:
        return path
    bad = non_finite_parameters(run.model)
    if bad:
        raise _NonFiniteWeights(
            f"step {s.step}: the weights are not finite ({', '.join(bad[:3])}); {path} was not "
            f"written ({_on_disk(run, s)})"
        )
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model": run.model.state_dict(), "model_config": run.model.config.to_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(), "step": s.step, "epoch": s.epoch,
        "step_in_epoch": s.step_in_epoch, "best_psnr": s.best_psnr, "rng": get_rng_state(),
        "train_args": run.cfg.to_dict(), "torch_version": str(torch.__version__),
    })  # fmt: skip
    if name == "last.pt":
        s.saved_step = s.step
    return path


class _NonFiniteWeights(LCNetError):
    """Raised instead of writing a checkpoint with NaN or infinite weights."""


def _on_disk(run: _Run, s: _State) -> str:
    if s.saved_step is None:
        return f"no checkpoint was saved; see {run.out / 'train.log'}"
    return f"last.pt holds step {s.saved_step}: continue from it with --resume"


def _save_after_error(run: _Run, s: _State, exc: Exception) -> None:
    """Rank 0 saves the steps done since the last checkpoint, unless the weights are not
    finite; the error then says what is on disk. A user error (LCNetError) is re-raised with
    that added, any other keeps its traceback and the log says it."""
    if not run.ddp.is_main or isinstance(exc, _NonFiniteWeights):
        return
    if s.step == (s.saved_step or 0):
        note = _on_disk(run, s)
    elif non_finite_parameters(run.model):
        note = f"the weights are not finite, so last.pt was not updated ({_on_disk(run, s)})"
    else:
        try:
            _save(run, s, "last.pt")
            note = f"saved step {s.step} to {run.out / 'last.pt'}: continue with --resume"
        except Exception as save_error:  # a full disk, say: report the first error
            note = f"saving last.pt failed too ({one_line(save_error)}; {_on_disk(run, s)})"
    if isinstance(exc, LCNetError):
        raise LCNetError(f"{one_line(exc)} (stopped at step {s.step}; {note})") from exc
    log.error("stopped at step %d by %s; %s", s.step, type(exc).__name__, note)


def _check_ranks_in_sync(run: _Run, s: _State) -> None:
    if not run.ddp.enabled:
        return
    digests: list[str | None] = [None] * run.ddp.world_size
    dist.all_gather_object(digests, state_digest(run.model))
    in_sync = len(set(digests)) == 1
    run.metrics.write({"kind": "sync", "step": s.step, "ranks_in_sync": in_sync})
    if not in_sync:
        log.error("the %d processes ended with different weights", run.ddp.world_size)
