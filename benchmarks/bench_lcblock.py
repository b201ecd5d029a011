"""Benchmark of local correlation: fused kernels against three pure-PyTorch implementations.

Implementations (all with the semantics of docs/DESIGN.md, "Operator semantics" and
"Border rule": window clipped and masked):

* ``fused``   -- :func:`lcblock_cuda.local_correlation`, the compiled kernels;
* ``unfold``  -- :func:`lcblock_cuda.reference.local_correlation` (``F.unfold`` + masked softmax);
* ``shifted`` -- :func:`benchmarks.baselines.shifted_local_correlation`, one shifted view per
  window offset, no unfolded tensor (the best plain-PyTorch version we know);
* ``flex``    -- :func:`benchmarks.baselines.flex_local_correlation`,
  ``torch.compile(flex_attention)`` with a 2-D window ``mask_mod``; its ``BlockMask`` is built
  once per shape outside the timed region.

For each shape, memory format (``--memory-format``: NCHW ``contiguous`` and/or
``channels_last`` inputs, timed in the same interleaved rounds) and implementation it reports
the median time of a forward (under ``torch.no_grad``, as in inference) and of a forward +
backward (gradients w.r.t. pattern and content for a fixed random ``grad_output``, in the
inputs' layout), and the peak memory one forward + backward adds on top of its inputs (outputs,
gradients, temporaries and everything autograd keeps for backward). An implementation that
cannot run a measurement (fused kernels not built, no flex_attention backward on CPU, a dtype
without kernels, out of memory) gets "n/a" there, with the reason in a footnote; one that would
be too slow or too big is skipped with a note.

Timing: CPU -- ``torch.utils.benchmark.Timer.blocked_autorange`` (median over blocks, after
warm-up); CUDA -- CUDA events around each call after warm-up, median. The implementations of a
shape are timed in ``--rounds`` interleaved rounds (default 3 on CPU, 1 on CUDA), each round in
another order, and the reported time is the median of the rounds: a shared machine whose speed
drifts over seconds then biases no implementation against another. Steps slower than 250 ms
(unfold, flex on CPU) are timed in the first round only. Memory: CUDA --
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
before; CPU -- the allocation and free events of ``torch.profiler`` (``profile_memory=True``)
summed in time order, whose running maximum is the peak.

Roofline: every timed row also reports its useful GFLOP/s (forward, forward + backward) and
their percentage of the sgemm rate measured in the same process (a square float32 ``torch.mm``
of ``SGEMM_SIZE``, at the same thread count, before and after the shapes; the higher is the
reference). Useful flops count 2 per multiply-add of the direct algorithm over the in-image
window offsets n, without the pair symmetry the CPU kernels exploit: forward 2n(Cp+Cc) (logits,
weighted sum), backward 2n(2Cp+2Cc) + 2·B·H·W·Cc (logits again, <dy_i, c_j>, the dx and dc
gathers, D_i = <dy_i, y_i>); the softmax (max, exp, sums, log) is not counted.

Usage::

    python benchmarks/bench_lcblock.py                      # default shapes of the device
    python benchmarks/bench_lcblock.py --quick              # one small shape, few repeats
    python benchmarks/bench_lcblock.py --device cuda --dtype float16 --shapes headline,gopro
    python benchmarks/bench_lcblock.py --impl fused,shifted --shapes 2x32x128x128k7,1x16/8x64x64k5d2
    python benchmarks/bench_lcblock.py --json results.json
    python benchmarks/bench_lcblock.py --plot times.svg      # the figure (benchmarks/plot_svg.py)
    python benchmarks/bench_lcblock.py --memory-format channels_last   # default: both layouts

A custom shape is ``BxCPxHxWkK`` (``B x Cp x H x W``, kernel size K), with optional ``/CC``
after Cp when content has another channel count and ``dD`` at the end for dilation D.
Presets: ``headline`` (the issue's 2x32x128x128k7), ``lcnet`` (the LCBlocks of LCNet on a batch
of four 200x200 training patches), ``big`` (1x32x256x256k5), ``gopro`` (the LCBlocks of LCNet
on one 1280x720 GOPRO frame; CUDA only by default), ``all``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.benchmark import Timer

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lcblock_cuda  # noqa: E402
from benchmarks.baselines import (  # noqa: E402
    flex_backward_unavailable,
    flex_local_correlation,
    shifted_local_correlation,
    window_block_mask,
)
from benchmarks.plot_svg import write_svg  # noqa: E402

LOG = logging.getLogger("bench_lcblock")

IMPLS = ("fused", "unfold", "shifted", "flex")
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
SEED = 0
SCALE = 1.0  # the paper's eq. 3
MIB = 2**20
MS_PER_S = 1e3
WARMUP_MIN_S = 0.5  # seconds of warm-up calls, at least
LATER_ROUND_WARMUP_S = 0.1  # the process is warm by then; a few calls re-fill the caches
LATER_ROUND_MAX_MS = 250.0  # slower steps are timed in the first round only
WARMUP_CALLS = 2  # first calls compile (flex), fill caches and allocate
DEFAULT_MIN_RUN_TIME_S = 1.0
DEFAULT_REPEATS = {"cpu": 3, "cuda": 20}  # minimum number of timed samples
DEFAULT_ROUNDS = {"cpu": 3, "cuda": 1}  # interleaved timing rounds per shape
QUICK_MIN_RUN_TIME_S = 0.05
QUICK_REPEATS = 1
MAX_CUDA_EVENT_REPEATS = 1000
MIN_STEP_ESTIMATE_S = 1e-6  # guards the repeat count against a zero event time
# unfold materialises B·(Cp+Cc)·k²·H·W values (and autograd copies of them); above this many
# bytes it is skipped: on CPU it would take minutes, on CUDA it would not fit.
UNFOLD_MAX_BYTES = {"cpu": 2 * 2**30, "cuda": 8 * 2**30}
# torch.compile(flex_attention) recompiles for every shape and grad mode; the default limit (8)
# would silently fall back to the eager, (H·W)²-materialising flex_attention.
FLEX_RECOMPILE_LIMIT = 64
LCNET_WIDTHS = (18, 36, 72)  # EBlock widths; an LCBlock squeezes C to C/2
LCNET_KERNEL = 5
MEMORY_METHOD = {
    "cpu": "torch.profiler memory events (profile_memory=True) summed in time order; "
    "peak of the running sum",
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the "
    "memory allocated before the step",
}
TIMING_METHOD = {
    "cpu": "torch.utils.benchmark.Timer.blocked_autorange, median of blocks, after warm-up",
    "cuda": "CUDA events around each call after warm-up, median",
}


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: pattern (B, Cp, H, W), content (B, Cc, H, W), window k, d."""

    batch: int
    pattern_channels: int
    content_channels: int
    height: int
    width: int
    kernel_size: int
    dilation: int = 1

    _SPEC = re.compile(r"(\d+)x(\d+)(?:/(\d+))?x(\d+)x(\d+)k(\d+)(?:d(\d+))?")

    @classmethod
    def parse(cls, spec: str) -> Shape:
        """Parse ``BxCPxHxWkK`` with optional ``/CC`` after CP and ``dD`` at the end."""
        match = cls._SPEC.fullmatch(spec.strip())
        if match is None:
            raise ValueError(
                f"bench_lcblock: cannot parse shape {spec!r}; expected BxCPxHxWkK, e.g. "
                "2x32x128x128k7, 1x16/8x64x64k5d2, or a preset name"
            )
        b, cp, cc, h, w, k, d = match.groups()
        return cls(int(b), int(cp), int(cc or cp), int(h), int(w), int(k), int(d or 1))

    @property
    def label(self) -> str:
        """The spec string that :meth:`parse` reads back."""
        channels = str(self.pattern_channels)
        if self.content_channels != self.pattern_channels:
            channels += f"/{self.content_channels}"
        text = f"{self.batch}x{channels}x{self.height}x{self.width}k{self.kernel_size}"
        return text + (f"d{self.dilation}" if self.dilation != 1 else "")

    def unfolded_bytes(self, element_size: int) -> int:
        """Bytes of the two unfolded tensors the ``unfold`` reference materialises."""
        taps = self.kernel_size**2
        pixels = self.height * self.width
        channels = self.pattern_channels + self.content_channels
        return self.batch * channels * taps * pixels * element_size


def _lcnet_shapes(batch: int, height: int, width: int) -> list[Shape]:
    """The LCBlocks of LCNet at H/2, H/4, H/8 with C = width / 2 channels."""
    shapes = []
    for level, channels in enumerate(LCNET_WIDTHS, start=1):
        c = channels // 2
        shapes.append(Shape(batch, c, c, height >> level, width >> level, LCNET_KERNEL))
    return shapes


PRESETS: dict[str, list[Shape]] = {
    "headline": [Shape(2, 32, 32, 128, 128, 7)],
    "lcnet": _lcnet_shapes(batch=4, height=200, width=200),
    "big": [Shape(1, 32, 32, 256, 256, 5)],
    "gopro": _lcnet_shapes(batch=1, height=720, width=1280),
    "quick": [Shape(1, 8, 8, 32, 32, 5)],
}
DEFAULT_PRESETS = {
    "cpu": ("headline", "lcnet", "big"),
    "cuda": ("headline", "lcnet", "big", "gopro"),
}


class Unavailable(Exception):
    """An implementation cannot run a measurement; the message is the footnote."""


@dataclass
class Row:
    """One (shape, implementation) result; None marks a measurement that is n/a or skipped."""

    shape: str
    batch: int
    pattern_channels: int
    content_channels: int
    height: int
    width: int
    kernel_size: int
    dilation: int
    impl: str
    memory_format: str = "contiguous"  # layout of pattern, content and grad_output
    status: str = "ok"  # "ok" (at least one measurement), "n/a", "skipped"
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_fwd_mib: float | None = None
    peak_fwd_bwd_mib: float | None = None
    speedup_fwd_vs_shifted: float | None = None
    speedup_fwd_bwd_vs_shifted: float | None = None
    memory_vs_unfold: float | None = None
    # Roofline (fill_roofline): useful GFLOP/s and its share of the same process's sgemm rate.
    gflops_fwd: float | None = None
    gflops_fwd_bwd: float | None = None
    sgemm_pct_fwd: float | None = None
    sgemm_pct_fwd_bwd: float | None = None
    max_abs_diff_vs_unfold: float | None = None
    fwd_ms_rounds: list[float] = field(default_factory=list)
    fwd_bwd_ms_rounds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Implementations, behind one interface: prepare(shape, device) -> fn(pattern, content) -> out


ImplFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def prepare(impl: str, shape: Shape, device: torch.device) -> ImplFn:
    """The callable to time for ``impl`` on ``shape``; raises :class:`Unavailable`."""
    k, d = shape.kernel_size, shape.dilation
    if impl == "fused":
        if lcblock_cuda.extension_error() is not None:
            raise Unavailable(
                f"fused: compiled kernels not loaded ({lcblock_cuda.extension_error()})"
            )
        if device.type == "cuda" and not lcblock_cuda.cuda_compiled():
            raise Unavailable("fused: the extension was built without its CUDA kernels")
        return lambda x, c: lcblock_cuda.local_correlation(x, c, k, d, SCALE)
    if impl == "unfold":
        return lambda x, c: lcblock_cuda.reference.local_correlation(x, c, k, d, SCALE)
    if impl == "shifted":
        return lambda x, c: shifted_local_correlation(x, c, k, d, SCALE)
    if impl == "flex":
        # Built once per shape, outside the timed region (the benchmark's contract).
        mask = window_block_mask(shape.height, shape.width, k, d, str(device))
        return lambda x, c: flex_local_correlation(x, c, k, d, SCALE, block_mask=mask)
    raise ValueError(f"bench_lcblock: unknown implementation {impl!r}; choose from {IMPLS}")


def backward_unavailable(impl: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``impl`` cannot run a backward here (known before compiling anything), or None."""
    if impl == "flex":
        reason = flex_backward_unavailable(device.type, dtype)
        return None if reason is None else f"flex forward+backward: {reason}"
    return None


def skip_reason(impl: str, shape: Shape, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``impl`` is not even tried on ``shape`` (too slow or too big), or None."""
    if impl == "unfold":
        # The reference unfolds in at least float32.
        needed = shape.unfolded_bytes(torch.promote_types(dtype, torch.float32).itemsize)
        limit = UNFOLD_MAX_BYTES[device.type]
        if needed > limit:
            return (
                f"unfold: skipped on {device.type} where the unfolded tensors exceed "
                f"{limit / 2**30:.0f} GiB (this shape: {needed / 2**30:.1f} GiB)"
            )
    return None


# ---------------------------------------------------------------------------------------------
# Measurements


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    step: Callable[[], object],
    device: torch.device,
    min_run_time: float,
    repeats: int,
    warmup_s: float = WARMUP_MIN_S,
) -> float:
    """Median milliseconds of ``step()`` after warm-up (see the module docstring)."""
    # Warm up for a number of calls and a minimum time: the first measurement of a process was
    # seen 2-3x slow after a few calls only (thread pools and allocator still settling).
    warm_start = time.perf_counter()
    calls = 0
    while calls < WARMUP_CALLS or time.perf_counter() - warm_start < warmup_s:
        step()
        _synchronize(device)
        calls += 1
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        estimate_s = max(start.elapsed_time(end) / MS_PER_S, MIN_STEP_ESTIMATE_S)
        count = min(max(repeats, math.ceil(min_run_time / estimate_s)), MAX_CUDA_EVENT_REPEATS)
        pairs = []
        for _ in range(count):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in pairs)
    # Timer runs on one thread unless told otherwise; measure with the threads the header reports.
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    # blocked_autorange stops after min_run_time; slow steps (one per block) would then give a
    # single sample, so stretch the run time to get at least `repeats` blocks.
    estimate_s = timer.timeit(1).median
    run_time = max(min_run_time, repeats * estimate_s)
    return timer.blocked_autorange(min_run_time=run_time).median * MS_PER_S


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what the profiler's native code (Kineto) prints on fd 2 while it runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_mib(step: Callable[[], object], device: torch.device) -> float:
    """Peak MiB that ``step()`` allocates on top of what is live before it (module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MIB
    with (
        _quiet_native_stderr(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        raise Unavailable("memory: the profiler recorded no CPU allocations")
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # stable: same-ns order kept
        running += event.nbytes()  # > 0 allocation, < 0 free
        peak = max(peak, running)
    return peak / MIB


def make_inputs(
    shape: Shape, device: torch.device, dtype: torch.dtype, memory_format: str = "contiguous"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded pattern, content and grad_output for ``shape``, in ``memory_format`` (the same
    values in every layout)."""
    generator = torch.Generator().manual_seed(SEED)
    b, h, w = shape.batch, shape.height, shape.width
    layout = MEMORY_FORMATS[memory_format]

    def randn(channels: int) -> torch.Tensor:
        t = torch.randn((b, channels, h, w), generator=generator).to(device, dtype)
        return t.contiguous(memory_format=layout)

    return (
        randn(shape.pattern_channels),
        randn(shape.content_channels),
        randn(shape.content_channels),
    )


def measure(
    impl: str,
    fn: ImplFn,
    row: Row,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
    min_run_time: float,
    repeats: int,
) -> dict[str, Callable[[], object]]:
    """Fill ``row``'s times and peaks; a failing measurement becomes n/a with a note.

    Returns the steps that ran, by the name of their time field, for the later rounds.
    """
    pattern, content, grad_out = inputs

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return fn(pattern, content)

    leaf_pattern = pattern.detach().requires_grad_(True)
    leaf_content = content.detach().requires_grad_(True)

    def forward_backward() -> tuple[torch.Tensor, ...]:
        out = fn(leaf_pattern, leaf_content)
        return torch.autograd.grad(out, (leaf_pattern, leaf_content), grad_out)

    no_backward = backward_unavailable(impl, device, pattern.dtype)
    if no_backward is not None:
        row.notes.append(no_backward)
    steps: dict[str, Callable[[], object]] = {}
    for name, step, time_field, peak_field in (
        ("forward", forward, "fwd_ms", "peak_fwd_mib"),
        ("forward+backward", forward_backward, "fwd_bwd_ms", "peak_fwd_bwd_mib"),
    ):
        if step is forward_backward and no_backward is not None:
            continue
        try:
            getattr(row, f"{time_field}_rounds").append(
                time_ms(step, device, min_run_time, repeats)
            )
            setattr(row, time_field, getattr(row, f"{time_field}_rounds")[0])
            setattr(row, peak_field, peak_mib(step, device))
            steps[time_field] = step
        except Exception as exc:  # noqa: BLE001
            # Deliberately broad: one measurement of one implementation failing (no kernel for
            # this dtype or device, an Inductor compile error, out of memory) must not end the
            # benchmark. The reason goes into the table's footnotes, the traceback into the
            # debug log.
            if device.type == "cuda":
                torch.cuda.empty_cache()
            note = (
                str(exc) if isinstance(exc, Unavailable) else f"{impl} {name}: {_first_line(exc)}"
            )
            row.notes.append(note)
            LOG.debug("%s %s on %s failed", impl, name, row.shape, exc_info=True)
    if row.fwd_ms is None and row.fwd_bwd_ms is None:
        row.status = "n/a"
    return steps


def run_shape(
    shape: Shape,
    impls: Sequence[str],
    device: torch.device,
    dtype: torch.dtype,
    min_run_time: float,
    repeats: int,
    check_outputs: bool,
    rounds: int = 1,
    memory_formats: Sequence[str] = ("contiguous",),
) -> list[Row]:
    """Benchmark every implementation in every memory format on one shape; fill the relative
    columns (within each format)."""
    rows: dict[tuple[str, str], Row] = {}
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    steps: dict[tuple[str, str], dict[str, Callable[[], object]]] = {}
    inputs_of = {fmt: make_inputs(shape, device, dtype, fmt) for fmt in memory_formats}
    for fmt in memory_formats:
        inputs = inputs_of[fmt]
        for impl in impls:
            key = (impl, fmt)
            row = Row(shape.label, *asdict(shape).values(), impl=impl, memory_format=fmt)
            rows[key] = row
            reason = skip_reason(impl, shape, device, dtype)
            if reason is not None:
                row.status, row.notes = "skipped", [reason]
                continue
            try:
                fn = prepare(impl, shape, device)
            except Unavailable as exc:
                row.status, row.notes = "n/a", [str(exc)]
                continue
            LOG.info("%s %s %s ...", shape.label, impl, fmt)
            steps[key] = measure(impl, fn, row, inputs, device, min_run_time, repeats)
            if check_outputs and row.fwd_ms is not None:
                with torch.no_grad():
                    outputs[key] = fn(inputs[0], inputs[1]).float()
            gc.collect()
    # Later rounds, each starting with another (implementation, format); a step that fails now
    # (it ran once) keeps the rounds it has. Steps slower than LATER_ROUND_MAX_MS are timed
    # once: they are far from the others, and re-timing them would triple the run time.
    order = list(steps)
    for round_index in range(1, rounds):
        shift = round_index % max(len(order), 1)
        for key in order[shift:] + order[:shift]:
            for time_field, step in steps[key].items():
                if getattr(rows[key], f"{time_field}_rounds")[0] > LATER_ROUND_MAX_MS:
                    continue
                try:
                    sample = time_ms(step, device, min_run_time, repeats, LATER_ROUND_WARMUP_S)
                except Exception:  # noqa: BLE001 -- see measure()
                    LOG.debug("%s %s round %d failed", key, time_field, round_index, exc_info=True)
                    continue
                getattr(rows[key], f"{time_field}_rounds").append(sample)
            gc.collect()
    for row in rows.values():
        if row.fwd_ms_rounds:
            row.fwd_ms = statistics.median(row.fwd_ms_rounds)
        if row.fwd_bwd_ms_rounds:
            row.fwd_bwd_ms = statistics.median(row.fwd_bwd_ms_rounds)
    for fmt in memory_formats:
        of_fmt = {impl: row for (impl, f), row in rows.items() if f == fmt}
        _fill_relative(of_fmt)
        if check_outputs:
            outs = {impl: out for (impl, f), out in outputs.items() if f == fmt}
            _fill_differences(of_fmt, outs, shape, inputs_of[fmt])
    return list(rows.values())


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _fill_relative(rows: dict[str, Row]) -> None:
    shifted, unfold = rows.get("shifted"), rows.get("unfold")
    for row in rows.values():
        if shifted is not None:
            row.speedup_fwd_vs_shifted = _ratio(shifted.fwd_ms, row.fwd_ms)
            row.speedup_fwd_bwd_vs_shifted = _ratio(shifted.fwd_bwd_ms, row.fwd_bwd_ms)
        if unfold is not None:
            row.memory_vs_unfold = _ratio(row.peak_fwd_bwd_mib, unfold.peak_fwd_bwd_mib)


def _fill_differences(
    rows: dict[str, Row],
    outputs: dict[str, torch.Tensor],
    shape: Shape,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """Max |out - unfold reference| of every implementation that ran, on the same inputs."""
    reference = outputs.get("unfold")
    if reference is None:
        if skip_reason("unfold", shape, inputs[0].device, inputs[0].dtype) is not None:
            return
        with torch.no_grad():
            reference = lcblock_cuda.reference.local_correlation(
                inputs[0], inputs[1], shape.kernel_size, shape.dilation, SCALE
            ).float()
    for impl, out in outputs.items():
        rows[impl].max_abs_diff_vs_unfold = (out - reference).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Roofline: useful flops of a step against the sgemm rate measured in the same process


SGEMM_SIZE = 1024  # square float32 torch.mm, (2·n³ flops)
GIGA = 1e9
FLOP_COUNT_RULE = (
    "useful flops: 2 per multiply-add of the direct algorithm over the in-image window offsets "
    "n (no pair symmetry): fwd 2n(Cp+Cc) (logits, weighted sum); bwd 2n(2Cp+2Cc) + 2·BHW·Cc "
    "(logits again, <dy_i,c_j>, dx and dc gathers, D_i = <dy_i,y_i>); softmax, exp and "
    "log not counted"
)


def _valid_offsets_per_axis(size: int, radius: int, dilation: int) -> int:
    """Σ over positions of an axis of the window offsets that land inside it."""
    return sum(
        sum(1 for a in range(-radius, radius + 1) if 0 <= pos + a * dilation < size)
        for pos in range(size)
    )


def useful_flops(shape: Shape) -> tuple[int, int]:
    """(forward, forward + backward) useful flops of ``shape`` (:data:`FLOP_COUNT_RULE`)."""
    radius = shape.kernel_size // 2
    pairs = (
        shape.batch
        * _valid_offsets_per_axis(shape.height, radius, shape.dilation)
        * _valid_offsets_per_axis(shape.width, radius, shape.dilation)
    )
    cp, cc = shape.pattern_channels, shape.content_channels
    forward = 2 * pairs * (cp + cc)
    backward = 2 * pairs * (2 * cp + 2 * cc) + 2 * shape.batch * shape.height * shape.width * cc
    return forward, forward + backward


def sgemm_gflops(
    device: torch.device,
    min_run_time: float,
    repeats: int,
    size: int = SGEMM_SIZE,
) -> float:
    """GFLOP/s of a square float32 ``torch.mm`` at the process's thread count on ``device``."""
    generator = torch.Generator().manual_seed(SEED)
    a = torch.randn((size, size), generator=generator).to(device)
    b = torch.randn((size, size), generator=generator).to(device)
    ms = time_ms(lambda: torch.mm(a, b), device, min_run_time, repeats)
    return 2 * size**3 / (ms / MS_PER_S) / GIGA


def fill_roofline(rows: Sequence[Row], sgemm: float | None) -> None:
    """Fill each timed row's useful GFLOP/s and, given the sgemm rate, its percentage of it."""
    for row in rows:
        shape = Shape(
            row.batch,
            row.pattern_channels,
            row.content_channels,
            row.height,
            row.width,
            row.kernel_size,
            row.dilation,
        )
        flops = useful_flops(shape)
        for suffix, ms, count in (
            ("fwd", row.fwd_ms, flops[0]),
            ("fwd_bwd", row.fwd_bwd_ms, flops[1]),
        ):
            if ms is None or ms <= 0:
                continue
            rate = count / (ms / MS_PER_S) / GIGA
            setattr(row, f"gflops_{suffix}", rate)
            if sgemm is not None and sgemm > 0:
                setattr(row, f"sgemm_pct_{suffix}", 100.0 * rate / sgemm)


def roofline_cells(row: Row, missing: str) -> str:
    """The report's "GFLOP/s" and "% of sgemm" cells (fwd / fwd+bwd) of ``row``."""
    gflops = f"{_fmt(row.gflops_fwd, '.1f', missing)} / {_fmt(row.gflops_fwd_bwd, '.1f', missing)}"
    share = (
        f"{_fmt(row.sgemm_pct_fwd, '.0f', '–', '%')} / "
        f"{_fmt(row.sgemm_pct_fwd_bwd, '.0f', '–', '%')}"
    )
    return f"| {gflops} | {share} "


def roofline_header(env: dict[str, object]) -> list[str]:
    """The report's line on the sgemm reference and the flop count (none if not measured)."""
    rates = env.get("sgemm_gflops")
    if not rates:
        return []
    text = ", ".join(f"{rate:.1f}" for rate in rates)  # type: ignore[attr-defined]
    return [
        f"- roofline: sgemm (torch.mm, {env['sgemm_size']}² float32, {env['threads']} threads, "
        f"before / after the shapes) {text} GFLOP/s; % of sgemm uses the higher; "
        f"{FLOP_COUNT_RULE}"
    ]


# ---------------------------------------------------------------------------------------------
# Environment and output


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device, dtype: torch.dtype, rounds: int = 1) -> dict[str, object]:
    """What a reader needs to compare two runs."""
    error = lcblock_cuda.extension_error()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fused_available": error is None,
        "fused_error": None if error is None else str(error),
        "scale": SCALE,
        "timing_method": TIMING_METHOD[device.type],
        "rounds": rounds,
        "memory_method": MEMORY_METHOD[device.type],
    }


def _fmt(value: float | None, spec: str, missing: str, suffix: str = "") -> str:
    return missing if value is None else format(value, spec) + suffix


def format_report(env: dict[str, object], rows: Sequence[Row]) -> str:
    """The markdown report: environment, table, footnotes, output check."""
    lines = [
        "# local_correlation benchmark",
        "",
        f"- torch {env['torch']}, CUDA {env['cuda']}, python {env['python']}",
        f"- device: {env['device']} ({env['device_name']}), {env['cpu_count']} CPUs, "
        f"{env['threads']} torch threads",
        f"- dtype: {env['dtype']}, scale {env['scale']}, date {env['date']}",
        f"- fused kernels: {'loaded' if env['fused_available'] else 'NOT AVAILABLE'}",
        f"- time: {env['timing_method']}; median of {env['rounds']} interleaved round(s); "
        "fwd runs under torch.no_grad, fwd+bwd computes the gradients of pattern and content",
        f"- peak: memory added by one step ({env['memory_method']})",
        *roofline_header(env),
        "",
        "| shape | impl | fwd ms | fwd+bwd ms | peak MiB (fwd) | peak MiB (fwd+bwd) "
        "| speed-up vs shifted (fwd / fwd+bwd) | memory vs unfold "
        "| GFLOP/s (fwd / fwd+bwd) | % of sgemm (fwd / fwd+bwd) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    footnotes: dict[str, int] = {}

    def mark(row: Row) -> str:
        numbers = []
        for note in row.notes:
            numbers.append(footnotes.setdefault(note, len(footnotes) + 1))
        return "".join(f" [{n}]" for n in numbers)

    for row in rows:
        missing = "skipped" if row.status == "skipped" else "n/a"
        speedup = (
            f"{_fmt(row.speedup_fwd_vs_shifted, '.2f', '–', '×')} / "
            f"{_fmt(row.speedup_fwd_bwd_vs_shifted, '.2f', '–', '×')}"
        )
        lines.append(
            f"| {row.shape} {row.memory_format} | {row.impl}{mark(row)} "
            f"| {_fmt(row.fwd_ms, '.2f', missing)} "
            f"| {_fmt(row.fwd_bwd_ms, '.2f', missing)} | {_fmt(row.peak_fwd_mib, '.2f', missing)} "
            f"| {_fmt(row.peak_fwd_bwd_mib, '.2f', missing)} | {speedup} "
            f"| {_fmt(row.memory_vs_unfold, '.3f', '–', '×')} "
            f"{roofline_cells(row, missing)}|"
        )
    if footnotes:
        lines.append("")
        lines.extend(f"[{number}] {note}" for note, number in footnotes.items())
    checked = [row for row in rows if row.max_abs_diff_vs_unfold is not None]
    if checked:
        lines += ["", f"Output check on {checked[0].shape}: max |out - unfold reference|"]
        lines.extend(
            f"- {row.impl} ({row.memory_format}): {row.max_abs_diff_vs_unfold:.3g}"
            for row in checked
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def resolve_shapes(specs: str | None, device: torch.device) -> list[Shape]:
    """Shapes from a comma-separated list of presets and custom specs."""
    names = DEFAULT_PRESETS[device.type] if specs is None else specs.split(",")
    shapes: list[Shape] = []
    for name in (n.strip() for n in names):
        if name == "all":
            shapes += [s for key in ("headline", "lcnet", "big", "gopro") for s in PRESETS[key]]
        elif name in PRESETS:
            shapes += PRESETS[name]
        else:
            shapes.append(Shape.parse(name))
    return list(dict.fromkeys(shapes))  # drop repeats, keep order


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_lcblock: --device cuda given but no CUDA device is visible")
    return torch.device(name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark fused local correlation against unfold, shifted-view and "
        "flex_attention implementations.",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument(
        "--impl", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}"
    )
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma-separated presets (" + ", ".join([*PRESETS, "all"]) + ") or custom specs "
        "like 2x32x128x128k7 or 1x16/8x64x64k5d2; default: the device's presets",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="minimum timed samples (cpu 3, cuda 20)"
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help=f"minimum seconds of timed runs per measurement (default {DEFAULT_MIN_RUN_TIME_S}"
        f", --quick {QUICK_MIN_RUN_TIME_S})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timing rounds per shape, median reported (default cpu 3, cuda 1; "
        "--quick 1)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--memory-format",
        default=None,
        help="comma-separated layouts of the inputs: "
        + ", ".join(MEMORY_FORMATS)
        + " (default: both, timed in the same interleaved rounds; --quick: contiguous)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write rows + environment")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH.svg",
        help="also draw the median times per shape, one series per implementation (SVG)",
    )
    parser.add_argument("--quick", action="store_true", help="one small shape, few repeats")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    impls = [name.strip() for name in args.impl.split(",") if name.strip()]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown or not impls:
        parser.error(f"--impl: unknown {unknown}; choose from {','.join(IMPLS)}")
    args.impl = list(dict.fromkeys(impls))
    if args.memory_format is None:
        args.memory_format = "contiguous" if args.quick else ",".join(MEMORY_FORMATS)
    formats = [name.strip() for name in args.memory_format.split(",") if name.strip()]
    unknown = sorted(set(formats) - set(MEMORY_FORMATS))
    if unknown or not formats:
        parser.error(f"--memory-format: unknown {unknown}; choose from {','.join(MEMORY_FORMATS)}")
    args.memory_format = list(dict.fromkeys(formats))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.min_run_time is not None and args.min_run_time <= 0:
        parser.error(f"--min-run-time must be > 0, got {args.min_run_time}")
    if args.plot is not None:  # checked before the run, not after minutes of timing
        if args.plot.suffix.lower() != ".svg":
            parser.error(f"--plot {args.plot}: expected a file name ending in .svg")
        if not args.plot.parent.is_dir():
            parser.error(f"--plot {args.plot}: its folder {args.plot.parent} does not exist")
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark; print the report; return the rows."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype]
    try:
        shapes = resolve_shapes(
            "quick" if args.quick and args.shapes is None else args.shapes, device
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS[device.type])
    min_run_time = args.min_run_time or (
        QUICK_MIN_RUN_TIME_S if args.quick else DEFAULT_MIN_RUN_TIME_S
    )
    rounds = args.rounds or (1 if args.quick else DEFAULT_ROUNDS[device.type])

    if "fused" in args.impl and lcblock_cuda.extension_error() is not None:
        LOG.warning(
            "the fused kernels are not available (%s); their rows read n/a. Build them with "
            "`pip install --no-build-isolation -e .` to benchmark them.",
            lcblock_cuda.extension_error(),
        )
    if "flex" in args.impl:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, FLEX_RECOMPILE_LIMIT)

    rows: list[Row] = []
    sgemm = [sgemm_gflops(device, min_run_time, repeats)]
    # A discarded pass over the first shape: even after per-measurement warm-up, the first
    # measurement of a process was seen up to 2x slow (thread pools, allocator, CPU clocks).
    run_shape(shapes[0], args.impl[:1], device, dtype, min_run_time, 1, check_outputs=False)
    for index, shape in enumerate(shapes):
        rows += run_shape(
            shape,
            args.impl,
            device,
            dtype,
            min_run_time,
            repeats,
            check_outputs=index == 0,
            rounds=rounds,
            memory_formats=args.memory_format,
        )
    sgemm.append(sgemm_gflops(device, min_run_time, repeats))
    fill_roofline(rows, max(sgemm))
    env = environment(device, dtype, rounds)
    env.update(sgemm_gflops=sgemm, sgemm_size=SGEMM_SIZE)
    print(format_report(env, rows))
    if args.json is not None:
        payload = {"environment": env, "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if args.plot is not None:
        write_svg([asdict(row) for row in rows], env, args.plot)
        print(f"\nplot: {args.plot}")
    return rows


if __name__ == "__main__":
    main()
