"""LCNet end to end: training step and 1280x720 inference, NCHW vs channels_last, fused vs
reference op, against a yardstick, plus the trainer's images per second.

The yardstick is LCNet's own convolutions with every local-correlation op replaced by a copy of
its content input, in channels_last: what the network would cost if the op were free. The copy
passes a zero gradient to the pattern features so that the pattern convolutions' backward still
runs (a plain ``content.clone()``, the ``copy-no-pattern-grad`` row, lets autograd skip it and
so understates the convolutions). All variants run in ONE process, interleaved round by round;
times are medians over rounds and "x yardstick" is the median of the per-round ratios (the
machine may be shared).

Rows:

- ``train step``: forward + L1 loss + backward + Adam step on a batch of 8 random 96x96
  crops (float32), per variant;
- ``inference``: one 1280x720 image, ``torch.no_grad``, per variant;
- ``op share``: (fused - yardstick) / fused, in channels_last;
- ``trainer``: ``lcnet train`` (default workers, the quick recipe's batch and crops) as a
  subprocess for ``--trainer-steps`` steps; its median images/s from metrics.jsonl against the
  yardstick's 8 / step time.

Usage::

    python benchmarks/bench_lcnet.py                  # all rows, 5 rounds
    python benchmarks/bench_lcnet.py --rounds 3 --no-reference --trainer-steps 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lcnet.model import LCBlock, LCNet, LCNetConfig  # noqa: E402

BATCH, PATCH = 8, 96
INFER_H, INFER_W = 720, 1280


class _FreeOp(torch.autograd.Function):
    """A free local-correlation op: the output is a copy of the content features; backward
    hands content its gradient and pattern a zero gradient, so the pattern convolution's
    backward runs as it does with the real op."""

    @staticmethod
    def forward(ctx, pattern: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return content.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(grad), grad


class _Copy(torch.nn.Module):
    """Stands in for the local-correlation op (see :class:`_FreeOp`). ``pattern_grad=False``
    is the first yardstick: ``content.clone()``, which leaves the pattern convolution out of
    backward altogether (autograd prunes it), so it understates LCNet's own convolutions."""

    backend, scale = "copy", 1.0

    def __init__(self, pattern_grad: bool = True) -> None:
        super().__init__()
        self.pattern_grad = pattern_grad

    def forward(self, pattern: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        if self.pattern_grad:
            return _FreeOp.apply(pattern, content)
        return content.clone()


def build(variant: str, channels_last: bool) -> LCNet:
    """``variant``: "fused", "reference", "yardstick" (op replaced by a free copy) or
    "copy-no-pattern-grad" (the first yardstick: a plain copy; see :class:`_Copy`)."""
    backend = "reference" if variant == "reference" else "fused"
    torch.manual_seed(0)
    model = LCNet(LCNetConfig(lc_backend=backend))
    if variant in ("yardstick", "copy-no-pattern-grad"):
        for module in model.modules():
            if isinstance(module, LCBlock):
                module.correlation = _Copy(pattern_grad=variant == "yardstick")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def train_step_fn(variant: str, channels_last: bool) -> Callable[[], None]:
    model = build(variant, channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    mf = _format(channels_last)
    blur = torch.rand(BATCH, 3, PATCH, PATCH, generator=g).contiguous(memory_format=mf)
    sharp = torch.rand(BATCH, 3, PATCH, PATCH, generator=g).contiguous(memory_format=mf)

    def step() -> None:
        loss = F.l1_loss(model(blur), sharp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inference_fn(variant: str, channels_last: bool) -> Callable[[], None]:
    model = build(variant, channels_last).eval()
    x = torch.rand(1, 3, INFER_H, INFER_W, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=_format(channels_last))

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def _time(fn: Callable[[], None], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def trainer_images_per_s(steps: int, workers: int | None) -> float | None:
    """Median images/s of ``lcnet train`` (quick recipe's batch and crops) over its logged
    windows after the first, from metrics.jsonl; None when it could not run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lcnet", "train", "--out", str(out), "--max-steps",
               str(steps), "--batch-size", str(BATCH), "--patch-size", str(PATCH),
               "--content-weight", "0", "--log-every", "10"]  # fmt: skip
        if workers is not None:
            cmd += ["--workers", str(workers)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        metrics = out / "metrics.jsonl"
        if proc.returncode != 0 or not metrics.is_file():
            print(f"trainer failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
            return None
        rates = [
            r["images_per_s"]
            for r in map(json.loads, metrics.read_text().splitlines())
            if r.get("kind") == "train" and "images_per_s" in r
        ]
        return statistics.median(rates[1:]) if len(rates) > 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--step-repeats", type=int, default=5, help="training steps per timing")
    ap.add_argument("--infer-repeats", type=int, default=2, help="inferences per timing")
    ap.add_argument("--no-reference", action="store_true", help="skip the slow reference op")
    ap.add_argument("--trainer-steps", type=int, default=120, help="0: skip the trainer row")
    ap.add_argument("--workers", type=int, default=None, help="trainer's --workers (default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    variants = ["yardstick", "copy-no-pattern-grad", "fused"]
    variants += [] if args.no_reference else ["reference"]
    layouts = [("channels_last", True), ("NCHW", False)]
    fns: dict[tuple[str, str, str], Callable[[], None]] = {}
    for variant in variants:
        for layout, cl in layouts:
            fns[("train step", variant, layout)] = train_step_fn(variant, cl)
            fns[("inference", variant, layout)] = inference_fn(variant, cl)
    for key, fn in fns.items():  # warm-up (oneDNN primitives, allocator)
        fn()
        if key[0] == "train step":
            fn()
    times: dict[tuple[str, str, str], list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for key, fn in fns.items():
            repeats = args.step_repeats if key[0] == "train step" else args.infer_repeats
            times[key].append(_time(fn, repeats))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.rounds} interleaved rounds, medians")  # fmt: skip
    # "x yardstick": the median over rounds of the ratio within a round (the variant and the
    # yardstick timed seconds apart), with its range: steadier than a ratio of medians when
    # the machine's speed drifts.
    print(f"{'row':<12} {'op':<21} {'layout':<14} {'ms':>9} {'x yardstick':>12}  range")
    rows = []
    for what in ("train step", "inference"):
        base = times[(what, "yardstick", "channels_last")]
        for variant in variants:
            for layout, _ in layouts:
                ms = med[(what, variant, layout)] * 1e3
                timed = times[(what, variant, layout)]
                per_round = [t / b for t, b in zip(timed, base, strict=True)]
                ratio = statistics.median(per_round)
                rows.append({
                    "row": what, "op": variant, "layout": layout, "ms": ms, "x": ratio,
                    "x_min": min(per_round), "x_max": max(per_round),
                })  # fmt: skip
                print(f"{what:<12} {variant:<21} {layout:<14} {ms:9.1f} {ratio:12.2f}  "
                      f"{min(per_round):.2f}-{max(per_round):.2f}")  # fmt: skip
    for what in ("train step", "inference"):
        fused = med[(what, "fused", "channels_last")]
        share = (fused - med[(what, "yardstick", "channels_last")]) / fused
        print(f"op share of the {what} (channels_last, fused): {share:.0%}")
    yard_ips = BATCH / med[("train step", "yardstick", "channels_last")]
    fused_ips = BATCH / med[("train step", "fused", "channels_last")]
    print(f"images/s: yardstick {yard_ips:.1f}, fused model step {fused_ips:.1f}")
    trainer = None
    if args.trainer_steps:
        trainer = trainer_images_per_s(args.trainer_steps, args.workers)
        if trainer is not None:
            print(f"trainer (lcnet train, workers={args.workers or 'default'}): {trainer:.1f} "
                  f"images/s = {trainer / yard_ips:.2f}x the yardstick")  # fmt: skip
    if args.json is not None:
        args.json.write_text(
            json.dumps({"rows": rows, "yardstick_images_per_s": yard_ips, "trainer": trainer})
        )


if __name__ == "__main__":
    main()
