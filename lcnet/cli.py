"""The ``lcnet`` command line (also ``python -m lcnet``): synth, train, eval, deblur, plot.

User errors (a missing file, a corrupt image, a foreign checkpoint, a bad flag value, a run
folder that already exists) end with one line on stderr and exit code 2, never a traceback;
an interrupted training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import plot, synth
from .data import TRAIN_BLUR_DIRS
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, LCNetError, one_line
from .evaluate import EvalConfig, evaluate, format_table
from .export import ExportConfig, export_model
from .inference import DeblurConfig, deblur_files
from .layouts import LAYOUTS
from .losses import VGGWeightsNotFoundError
from .model import LC_BACKENDS
from .recipes import RECIPES, apply_recipe
from .train import TrainConfig, train

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

_TRAIN_DEFAULTS = TrainConfig()


# --------------------------------------------------------------------------------------------
# Argument types: each message names the value; argparse adds the flag.


def _int(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _int(text, 0, "an integer >= 0")


def tile_size(text: str) -> int:
    return _int(text, 16, "a tile size >= 16")


def _float(text: str, allow_zero: bool) -> float:
    what = "a number >= 0" if allow_zero else "a positive number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (value > 0 or (allow_zero and value == 0)) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _float(text, allow_zero=False)


def nonnegative_float(text: str) -> float:
    return _float(text, allow_zero=True)


def widths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 18,36,72, got {text!r}"
        )
    return values


# --------------------------------------------------------------------------------------------
# Parsers


def _add_device(p: argparse.ArgumentParser, default: Any = "auto") -> None:
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=default,
        help="where to run (default: auto, i.e. CUDA when a GPU is visible)",
    )


def _add_train_arguments(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """The flags of ``lcnet train``; with ``suppress``, no defaults (to see what was given)."""
    d = _TRAIN_DEFAULTS

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="ROOT",
        default=default(d.data),
        help="GOPRO-layout root ({train,test}/SEQ/{blur,blur_gamma,sharp}/*.png); "
        "default: the bundled synthetic set (built on first use)",
    )
    data.add_argument(
        "--blur-dir",
        choices=TRAIN_BLUR_DIRS,
        default=default(d.blur_dir),
        help="blurry images of the pairs; both: blur or blur_gamma, drawn per crop "
        "(default: blur; the quick recipe: both)",
    )
    data.add_argument(
        "--patch-size", type=positive_int, default=default(d.patch_size), help="crop side"
    )
    data.add_argument(
        "--workers",
        type=nonnegative_int,
        default=default(d.workers),
        help="data-loading processes per rank (default: min(8, CPU count))",
    )

    optim = p.add_argument_group("optimisation (defaults: the paper's recipe)")
    optim.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=default(d.recipe),
        help="paper: the paper's schedule (the defaults below); quick: minutes on a CPU "
        "(warm-up + cosine, clipping, identity init, L1 + FFT loss, its own --max-steps). "
        "Flags given explicitly override the recipe's values",
    )
    optim.add_argument("--epochs", type=positive_int, default=default(d.epochs))
    optim.add_argument(
        "--max-steps",
        type=positive_int,
        default=default(d.max_steps),
        help="stop after this many optimiser steps in total (whichever of this and "
        "--epochs ends first)",
    )
    optim.add_argument(
        "--batch-size",
        type=positive_int,
        default=default(d.batch_size),
        help="global batch, split evenly across processes",
    )
    optim.add_argument("--lr", type=positive_float, default=default(d.lr))
    optim.add_argument(
        "--lr-step-epochs",
        type=positive_int,
        default=default(d.lr_step_epochs),
        help="multiply the learning rate by --lr-gamma every this many epochs",
    )
    optim.add_argument("--lr-gamma", type=positive_float, default=default(d.lr_gamma))
    optim.add_argument("--optimizer", choices=("adam", "adamw"), default=default(d.optimizer))
    optim.add_argument("--weight-decay", type=nonnegative_float, default=default(d.weight_decay))
    optim.add_argument(
        "--schedule",
        choices=("step", "cosine"),
        default=default(d.schedule),
        help="step: times --lr-gamma every --lr-step-epochs; cosine: warm-up, then cosine to 0",
    )
    optim.add_argument(
        "--warmup-steps",
        type=nonnegative_int,
        default=default(d.warmup_steps),
        help="linear warm-up of the cosine schedule",
    )
    optim.add_argument(
        "--clip-grad-norm",
        type=nonnegative_float,
        default=default(d.clip_grad_norm),
        help="clip the gradients' global norm (0: no clipping)",
    )
    optim.add_argument(
        "--content-weight",
        type=nonnegative_float,
        default=default(d.content_weight),
        help="weight of the VGG-19 content loss (0: L1 only, no VGG weights needed)",
    )
    optim.add_argument(
        "--frequency-weight",
        type=nonnegative_float,
        default=default(d.frequency_weight),
        help="weight of a frequency-domain L1 term (MIMO-UNet; 0: the paper's loss)",
    )
    optim.add_argument(
        "--vgg-weights",
        metavar="PATH",
        default=default(d.vgg_weights),
        help="torchvision VGG-19 state dict (default: torchvision's cache vgg19-dcbb9e9d.pth)",
    )
    optim.add_argument(
        "--amp",
        action="store_true",
        default=default(d.amp),
        help="mixed precision: float16 autocast and gradient scaling on CUDA, bfloat16 on the CPU",
    )
    optim.add_argument("--seed", type=nonnegative_int, default=default(d.seed))

    model = p.add_argument_group("model")
    model.add_argument(
        "--widths",
        type=widths,
        default=default(d.widths),
        help="channels of the three scales (default: 18,36,72, about 2.7 MiB as in the paper)",
    )
    model.add_argument(
        "--kernel-size",
        type=positive_int,
        default=default(d.kernel_size),
        help="window of the local correlation (odd)",
    )
    model.add_argument(
        "--lc-backend",
        choices=LC_BACKENDS,
        default=default(d.lc_backend),
        help="fused: the compiled kernels; reference: pure PyTorch (slow); decomposed: "
        "standard ops offset by offset (the ONNX export form)",
    )
    model.add_argument(
        "--init",
        choices=("xavier", "identity"),
        default=default(d.init),
        help="xavier: the paper; identity: residual branches and output start at zero",
    )
    model.add_argument(
        "--lc-logits",
        choices=("dot", "cosine"),
        default=default(d.lc_logits),
        help="dot: the paper's dot products; cosine: cosine similarity x learned temperature",
    )
    model.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=default(d.channels_last),
        help="run the model and batches in channels_last (default; same results, faster)",
    )

    run = p.add_argument_group("run")
    run.add_argument(
        "--out",
        metavar="RUN_DIR",
        default=default(d.out),
        help="run folder for checkpoints and logs (default: %(default)s)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        default=default(False),
        help="continue the run in --out from last.pt; flags not given again are the run's own",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        default=default(False),
        help="start afresh in an existing --out (replaces its checkpoints and logs)",
    )
    if not suppress:
        _add_device(run)
    else:
        run.add_argument("--device", default=argparse.SUPPRESS)
    run.add_argument(
        "--val-every",
        type=nonnegative_int,
        default=default(d.val_every),
        help="validate on the test split every N steps and keep best.pt (0: never)",
    )
    run.add_argument(
        "--val-images",
        type=positive_int,
        default=default(d.val_images),
        help="test images used by --val-every",
    )
    run.add_argument("--log-every", type=positive_int, default=default(d.log_every))
    run.add_argument(
        "--save-every",
        type=positive_int,
        default=default(d.save_every),
        help="steps between checkpoints (one is always written at the end and on Ctrl-C)",
    )


def _add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="CKPT", required=True, help="a .pt from lcnet train")
    p.add_argument(
        "--tile",
        type=tile_size,
        default=None,
        metavar="N",
        help="run on overlapping N×N tiles (saves memory on large images)",
    )
    p.add_argument(
        "--tile-overlap",
        type=nonnegative_int,
        default=None,
        metavar="PX",
        help="pixels shared by neighbouring tiles, blended smoothly (default: min(32, N/4))",
    )
    _add_device(p)
    p.add_argument(
        "--lc-backend",
        choices=LC_BACKENDS,
        default=None,
        help="override the checkpoint's local-correlation backend (fused, reference: pure "
        "PyTorch, decomposed: standard ops offset by offset)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcnet",
        description="LCNet: image deblurring with local correlation blocks (Su, Yuan, Wang).",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "synth",
        help="make a synthetic GOPRO-layout data set",
        description="Make a synthetic GOPRO-layout data set from images bundled with "
        "installed packages, blurred along random camera trajectories.",
    )
    synth.add_synth_arguments(p)
    p.set_defaults(func=_run_synth)

    p = sub.add_parser(
        "train",
        help="train LCNet",
        description="Train LCNet (defaults: the paper's recipe). Data parallel under "
        "torchrun: torchrun --nproc_per_node N -m lcnet train ...",
    )
    _add_train_arguments(p)
    p.set_defaults(func=_run_train)

    p = sub.add_parser(
        "eval",
        help="PSNR / SSIM / size / runtime of a checkpoint (Table 1; GOPRO, HIDE, RealBlur)",
        description="Evaluate a checkpoint on GOPRO (a GOPRO-layout split), HIDE or RealBlur "
        "(their test sets, in the layouts they are distributed in; docs/evaluation.md): PSNR "
        "and SSIM per image, the blurry input as baseline, parameter count, size and runtime. "
        "GOPRO prints a table like the paper's Table 1; HIDE adds its two subsets; RealBlur "
        "is scored with its own protocol (intensity matching, ECC alignment; needs the "
        "[realblur] extra).",
    )
    p.add_argument("--data", metavar="ROOT", default=None, help="default: the bundled set")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="layout of --data (default: detected). gopro: ROOT/{train,test}/SEQ/{blur,sharp}; "
        "hide: ROOT/test/test-{close-ups,long-shot}, ROOT/GT; realblur: "
        "ROOT/RealBlur_{J,R}_test_list.txt (realblur-j / realblur-r: one list only)",
    )
    p.add_argument("--split", choices=("train", "test"), default="test", help="GOPRO only")
    p.add_argument(
        "--blur-dir",
        choices=("blur", "blur_gamma"),
        default=None,
        help="GOPRO only: blurry images to use (default: those the checkpoint was trained on)",
    )
    p.add_argument("--out", metavar="RESULTS_JSON", default=None, help="write results here")
    p.add_argument(
        "--save-images",
        metavar="DIR",
        default=None,
        help="write deblurred images and blurry|deblurred|sharp strips here",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="first N pairs only")
    p.add_argument(
        "--sharp-identity",
        action="store_true",
        help="feed the split's sharp images in and compare the output with them (a deblurrer "
        "should leave a sharp image alone: 40 dB or more)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_checkpoint_arguments(p)
    p.set_defaults(func=_run_eval)

    p = sub.add_parser(
        "deblur",
        help="deblur image files or folders",
        description="Deblur images (files, or folders of images) of any size and any format "
        "scikit-image reads; writes OUT/<stem>.png of the same size.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", metavar="DIR", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace existing PNGs in --out")
    _add_checkpoint_arguments(p)
    p.set_defaults(func=_run_deblur)

    p = sub.add_parser(
        "plot",
        help="draw a run's training curve to a PNG",
        description="Draw the training loss, validation PSNR and learning rate of a run "
        "(RUN_DIR/metrics.jsonl) to a PNG (default RUN_DIR/curve.png).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by lcnet train")
    p.add_argument("--out", metavar="PNG", default=None, help="default: RUN_DIR/curve.png")
    p.set_defaults(func=_run_plot)

    _add_export_parser(sub)
    return parser


def _add_export_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX (.onnx) or torch.export (.pt2)",
        description="Export a checkpoint; the format comes from the suffix of --out. "
        ".onnx: standard ONNX operators (no custom op; ONNX Runtime runs it), dynamic batch, "
        "height and width >= 16; needs the [export] extra. .pt2: torch.export with the fused "
        "op, dynamic height and width in 16..4096; load it where lcblock_cuda is importable.",
    )
    p.add_argument("--checkpoint", metavar="CKPT", required=True, help="a .pt from lcnet train")
    p.add_argument("--out", metavar="FILE", required=True, help="FILE.onnx or FILE.pt2")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    export_model(ExportConfig(checkpoint=args.checkpoint, out=args.out, overwrite=args.overwrite))
    return 0


# --------------------------------------------------------------------------------------------
# Commands


def _run_synth(args: argparse.Namespace, argv: Sequence[str]) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LCNetError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise LCNetError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    try:
        return int(synth.run_synth(args) or 0)
    except (FileExistsError, ValueError) as exc:  # --out in the way, a bad count or size
        raise LCNetError(str(exc)) from exc


def _explicit_train_flags(argv: Sequence[str]) -> frozenset[str]:
    """Names of the train flags present on the command line."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_train_arguments(parser, suppress=True)
    rest = list(argv)[list(argv).index("train") + 1 :]
    given, _ = parser.parse_known_args(rest)
    return frozenset(vars(given))


def _run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    names = {f for f in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    explicit = _explicit_train_flags(argv)
    cfg = apply_recipe(cfg, cfg.recipe, explicit)  # explicit flags override the recipe
    result = train(cfg, explicit=explicit)
    return EXIT_INTERRUPTED if result.interrupted else 0


def _run_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    cfg = EvalConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        layout=args.layout,
        split=args.split,
        blur_dir=args.blur_dir,
        out=args.out,
        save_images=args.save_images,
        device=args.device,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        limit=args.limit,
        lc_backend=args.lc_backend,
        overwrite=args.overwrite,
        sharp_identity=args.sharp_identity,
    )
    results = evaluate(cfg)
    print(format_table(results))
    if cfg.out:
        log.info("wrote %s", cfg.out)
    return 0


def _run_plot(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
        path = plot.plot_run(args.run_dir, args.out)
    except plot.PlotError as exc:
        raise LCNetError(str(exc)) from exc
    log.info("wrote %s", path)
    return 0


def _run_deblur(args: argparse.Namespace, argv: Sequence[str]) -> int:
    cfg = DeblurConfig(
        checkpoint=args.checkpoint,
        inputs=args.inputs,
        out=args.out,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        device=args.device,
        lc_backend=args.lc_backend,
        overwrite=args.overwrite,
    )
    written = deblur_files(cfg)
    log.info("wrote %d image(s) to %s", len(written), cfg.out)
    return 0


# --------------------------------------------------------------------------------------------
# Entry point


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest and tqdm replace it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(level: int) -> None:
    """Messages of ``level`` and above go to stderr; the package logger itself passes INFO on,
    so that train.log is complete whatever -q says."""
    package_log = logging.getLogger("lcnet")
    package_log.setLevel(min(level, logging.INFO))
    handler = next((h for h in package_log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package_log.addHandler(handler)
    handler.setLevel(level)


# Errors a user can cause by what they pass; anything else is a bug and keeps its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (LCNetError, VGGWeightsNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lcnet`` command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    _setup_logging(level)
    func: Callable[[argparse.Namespace, Sequence[str]], int] = args.func
    try:
        return func(args, argv)
    except _USER_ERRORS as exc:
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(f"lcnet {args.command}: error: {one_line(exc)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"lcnet {args.command}: interrupted\n")
        return EXIT_INTERRUPTED
