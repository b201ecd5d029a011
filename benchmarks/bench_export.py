"""LCNet exported to ONNX: ONNX Runtime on CPU against PyTorch eager, in one process.

The model (the default :class:`LCNetConfig`, random Xavier weights with seed 0, or
``--checkpoint CKPT``) goes through :func:`lcnet.export.export_model`, the code path of
``lcnet export --out FILE.onnx``; a random-init model is first written as a checkpoint in a
temporary folder. Then, on one 1x3xHxW input (default 720x1280, a GOPRO frame), three
implementations are timed:

* ``ort``        -- an ONNX Runtime ``InferenceSession`` (``CPUExecutionProvider``,
  ``intra_op_num_threads`` = the thread count, ``inter_op_num_threads`` = 1, the default graph
  optimisations) on the exported graph;
* ``fused``      -- PyTorch eager with the compiled op (the model as ``lcnet deblur`` runs it);
* ``decomposed`` -- PyTorch eager with the standard-op decomposition that was exported.

Both PyTorch models run in channels_last (``--layout``), as ``lcnet deblur`` does, under
``torch.inference_mode``, with ``torch.set_num_threads`` = the thread count. For every thread
count (``--threads``, default 1,2) each implementation is warmed up (``--warmup`` calls), then
``--reps`` rounds time one call of each, each round in another order (interleaved: a shared
machine whose speed drifts favours none); the table gives the median, min and max of the rounds
and the median per-round ratio to ``fused``. The outputs of ``ort`` and ``decomposed`` are
checked against ``fused`` (max abs difference). Session creation and export times are reported
apart.

Usage::

    python benchmarks/bench_export.py                          # 1x3x720x1280, 1 and 2 threads
    python benchmarks/bench_export.py --reps 5 --json export_bench.json
    python benchmarks/bench_export.py --checkpoint runs/x/last.pt --keep-onnx lcnet.onnx
    python benchmarks/bench_export.py --onnx lcnet.onnx --threads 1   # re-time, no export
    python benchmarks/bench_export.py --height 36 --width 44 --reps 1   # a smoke test

Needs the ``[export]`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lcnet.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from lcnet.errors import LCNetError  # noqa: E402
from lcnet.export import INPUT_NAME, MIN_SIDE, ExportConfig, export_model  # noqa: E402
from lcnet.model import LCNet, LCNetConfig  # noqa: E402

IMPLS = ("ort", "fused", "decomposed")
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
SEED = 0
MS_PER_S = 1e3
MAX_ORT_DIFF = 1e-3  # ORT vs fused, float32: 3e-5 measured at 720x1280


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{name} expects a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{name} expects a positive integer, got {value}")
    return value


def _thread_list(text: str) -> list[int]:
    counts = [_positive_int("--threads", t.strip()) for t in text.split(",") if t.strip()]
    if not counts:
        raise argparse.ArgumentTypeError(f"--threads expects e.g. 1,2, got {text!r}")
    return list(dict.fromkeys(counts))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time LCNet in ONNX Runtime (CPU) against PyTorch eager, fused and "
        "decomposed, in one process."
    )
    parser.add_argument("--checkpoint", default=None, help="an LCNet checkpoint (default: "
                        "the default model config with random weights, seed 0)")  # fmt: skip
    parser.add_argument("--height", type=lambda t: _positive_int("--height", t), default=720)
    parser.add_argument("--width", type=lambda t: _positive_int("--width", t), default=1280)
    parser.add_argument(
        "--threads", type=_thread_list, default=[1, 2], help="comma-separated (default 1,2)"
    )
    parser.add_argument(
        "--reps", type=lambda t: _positive_int("--reps", t), default=5, help="timed rounds"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per thread count")
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="channels_last",
                        help="memory format of the PyTorch models and input")  # fmt: skip
    parser.add_argument("--keep-onnx", type=Path, default=None, help="also keep the .onnx file")
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="time this .onnx (a --keep-onnx file of the same model) instead of exporting; its "
        "output must match the fused model's to 1e-3 or the run stops",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results")
    args = parser.parse_args(argv)
    for name in ("height", "width"):
        if getattr(args, name) < MIN_SIDE:
            parser.error(
                f"--{name} {getattr(args, name)}: the exported graph takes sides >= {MIN_SIDE}"
            )
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.keep_onnx is not None and args.keep_onnx.suffix != ".onnx":
        parser.error(f"--keep-onnx {args.keep_onnx}: expected a file name ending in .onnx")
    if args.onnx is not None and (args.onnx.suffix != ".onnx" or not args.onnx.is_file()):
        parser.error(f"--onnx {args.onnx}: expected an existing file ending in .onnx")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    return args


def _ort_session(path: Path, threads: int):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time_call(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * MS_PER_S


def _time_one_thread_count(
    onnx_path: Path,
    threads: int,
    models: dict[str, LCNet],
    x_torch: torch.Tensor,
    x_numpy: np.ndarray,
    reps: int,
    warmup: int,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray], float]:
    """Samples (ms) per implementation, the last outputs, and the ORT session's build time."""
    start = time.perf_counter()
    session = _ort_session(onnx_path, threads)
    session_s = time.perf_counter() - start
    outputs: dict[str, np.ndarray] = {}

    def torch_call(backend: str) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                out = models[backend](x_torch)
            outputs[backend] = out.contiguous().numpy()
            return out

        return call

    def ort_call() -> object:
        (out,) = session.run(None, {INPUT_NAME: x_numpy})
        outputs["ort"] = out
        return out

    calls = {"ort": ort_call, "fused": torch_call("fused"), "decomposed": torch_call("decomposed")}
    for impl in IMPLS:
        for _ in range(warmup):
            calls[impl]()
    samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for rep in range(reps):
        shift = rep % len(IMPLS)
        for impl in IMPLS[shift:] + IMPLS[:shift]:
            samples[impl].append(_time_call(calls[impl]))
    return samples, outputs, session_s


def run(args: argparse.Namespace) -> dict[str, object]:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise SystemExit(
            f"bench_export: needs the [export] extra ({exc}); "
            "pip install --no-build-isolation -e '.[export]'"
        ) from exc

    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        if args.checkpoint is None:
            torch.manual_seed(SEED)
            config = LCNetConfig()
            checkpoint = work / "random_init.pt"
            model = LCNet(config)
            torch.save({"model": model.state_dict(), "model_config": config.to_dict()}, checkpoint)
        else:
            checkpoint = Path(args.checkpoint)
        export_s: float | None = None
        if args.onnx is not None:
            onnx_path = args.onnx
        else:
            onnx_path = work / "lcnet.onnx"
            start = time.perf_counter()
            try:
                export_model(ExportConfig(checkpoint=str(checkpoint), out=str(onnx_path)))
            except LCNetError as exc:
                raise SystemExit(f"bench_export: {exc}") from exc
            export_s = time.perf_counter() - start
        graph = onnx.load(str(onnx_path))
        opsets = {o.domain or "ai.onnx": o.version for o in graph.opset_import}
        custom = sorted({n.op_type for n in graph.graph.node if n.domain not in ("", "ai.onnx")})
        onnx_bytes = onnx_path.stat().st_size
        if args.keep_onnx is not None:
            shutil.copyfile(onnx_path, args.keep_onnx)

        ckpt = load_checkpoint(checkpoint)
        layout = LAYOUTS[args.layout]
        models = {
            backend: model_from_checkpoint(ckpt, checkpoint, lc_backend=backend)
            .to(memory_format=layout)
            .eval()
            for backend in ("fused", "decomposed")
        }
        generator = torch.Generator().manual_seed(SEED)
        x = torch.rand(1, 3, args.height, args.width, generator=generator)
        x_torch = x.contiguous(memory_format=layout)
        x_numpy = x.numpy()

        results: list[dict[str, object]] = []
        max_diff: dict[str, float] = {}
        session_s: dict[int, float] = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            samples, outputs, session_s[threads] = _time_one_thread_count(
                onnx_path, threads, models, x_torch, x_numpy, args.reps, args.warmup
            )
            for impl in ("ort", "decomposed"):
                diff = float(np.abs(outputs[impl] - outputs["fused"]).max())
                max_diff[impl] = max(max_diff.get(impl, 0.0), diff)
            if max_diff["ort"] > MAX_ORT_DIFF:
                raise SystemExit(
                    f"bench_export: ONNX Runtime's output differs from the fused model's by "
                    f"{max_diff['ort']:.3g} (> {MAX_ORT_DIFF}): "
                    + (
                        f"--onnx {args.onnx} is not an export of this model"
                        if args.onnx
                        else "the export is wrong"
                    )
                )
            for impl in IMPLS:
                ratios = [a / b for a, b in zip(samples[impl], samples["fused"], strict=True)]
                results.append(
                    {
                        "threads": threads,
                        "impl": impl,
                        "median_ms": statistics.median(samples[impl]),
                        "min_ms": min(samples[impl]),
                        "max_ms": max(samples[impl]),
                        "vs_fused": statistics.median(ratios),
                        "samples_ms": samples[impl],
                    }
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return {
        "environment": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "opset": opsets,
            "custom_ops": custom,
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "input": [1, 3, args.height, args.width],
            "layout": args.layout,
            "checkpoint": args.checkpoint or "random init (LCNetConfig(), seed 0)",
            "reps": args.reps,
            "warmup": args.warmup,
            "export_s": export_s,
            "onnx_file": None if args.onnx is None else str(args.onnx),
            "onnx_bytes": onnx_bytes,
            "session_s": session_s,
            "max_abs_diff_vs_fused": max_diff,
        },
        "rows": results,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_report(result: dict[str, object]) -> str:
    env = result["environment"]
    b, c, h, w = env["input"]
    opset = ", ".join(f"{d} {v}" for d, v in env["opset"].items())
    lines = [
        f"# LCNet {b}x{c}x{h}x{w}: ONNX Runtime CPU vs PyTorch eager",
        "",
        f"- {env['date']}, {env['cpu']} ({env['cpu_count']} CPUs), python {env['python']}",
        f"- torch {env['torch']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, "
        f"opset {opset}, custom ops: {', '.join(env['custom_ops']) or 'none'}",
        f"- model: {env['checkpoint']}; ONNX {env['onnx_bytes'] / 1e6:.1f} MB, "
        + (
            f"exported in {env['export_s']:.1f} s"
            if env["export_s"] is not None
            else f"read from {env['onnx_file']}"
        )
        + f"; PyTorch layout {env['layout']}",
        f"- {env['reps']} interleaved rounds after {env['warmup']} warm-up call(s); ort session "
        "created in " + ", ".join(f"{s:.2f} s ({t} thr)" for t, s in env["session_s"].items()),
        "- max |out - fused|: "
        + ", ".join(f"{k} {v:.2g}" for k, v in env["max_abs_diff_vs_fused"].items()),
        "",
        "| threads | impl | median ms | min ms | max ms | × fused (median of rounds) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['threads']} | {row['impl']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} "
            f"| {row['max_ms']:.1f} | {row['vs_fused']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        result = run(args)
    finally:
        torch.set_num_threads(threads)
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
