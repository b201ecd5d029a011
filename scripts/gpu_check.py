"""The steps of scripts/gpu_check.sh: one run on a CUDA machine that must count (docs/cuda.md).

    python scripts/gpu_check.py OUT_DIR             # on a GPU (gpu_check.sh checks one is there)
    python scripts/gpu_check.py --dry-run OUT_DIR   # anywhere: the CPU stand-in of each step

Correctness first (build, import, the CUDA tests by file, the emulation-vs-GPU comparison,
kernel resources, compute-sanitizer memcheck / racecheck / synccheck / initcheck with the
caching allocator off), then speed (the op benchmark, LCNet inference, a short AMP +
channels_last training of LCNet on a synthetic set and its dB gain on the test split). Each
step has a time cap; the caps add up to at most the budget (GPU_CHECK_BUDGET_S, default 470 s),
and a step that would start with too little budget left is recorded as "skipped" with the
reason, apart from "failed". OUT_DIR is emptied first; it receives gpu_check.json (the steps as
{"name", "status", "seconds", "cap_s", "reason", "log", ...}, status one of ok / failed /
skipped / n/a), gpu_check.md and logs/<step>.log. The exit status is 0 when no step failed or
was skipped (n/a steps, which exist only in a dry run, do not count), else 1.

With --dry-run every step runs its CPU stand-in where one exists (the CUDA tests' CPU
counterparts, the benchmark's CPU rows, LCNet inference and a few training steps on the CPU),
and is "n/a" with a reason where none does (the sanitizers); gpu_check.json says
"dry_run": true. It runs within 8 minutes on a 2-core machine (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BUDGET_S = int(os.environ.get("GPU_CHECK_BUDGET_S", "470"))
MIN_START_S = 10  # a step is not started with less budget left than this
STATUSES = ("ok", "failed", "skipped", "n/a")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
# CUDA tests, by file: one module failing to import (an optional package missing) costs only
# its own step, never the others' (pytest -m cuda over tests/ would stop at collection).
CUDA_TEST_FILES = ("test_local_correlation.py", "test_cuda_emulation.py")


@dataclass
class Step:
    name: str
    cap_s: int
    gpu: list[str] | None  # command on a GPU
    dry: list[str] | None  # its CPU stand-in; None: n/a in a dry run
    what: str  # one line for the report
    na_reason: str = ""
    dry_what: str = ""
    needs_kernels: bool = True  # skipped when the extension did not load
    env: dict[str, str] = field(default_factory=dict)
    signal_at_s: int | None = None  # SIGINT after this many seconds (a time-boxed run)
    dry_cap_s: int | None = None  # the stand-in's cap when it differs (a CPU is slower)
    after: Callable[[Path, dict], None] | None = None  # adds results to the step's record


def sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and Path(home, "bin", "compute-sanitizer").exists():
            return str(Path(home, "bin", "compute-sanitizer"))
    return None


def ninja_available() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available

        return bool(is_ninja_available())
    except ImportError:
        return shutil.which("ninja") is not None


# A small forward + backward of every dtype the sanitizers check, NCHW and NHWC, with 16 and
# 24 channels so that float16/bfloat16 NHWC takes the 16-byte vector staging, and 9/18 (LCNet).
SMALL_CASE = textwrap.dedent(
    """
    import sys, torch
    import lcblock_cuda  # noqa: F401
    device = sys.argv[1]
    ops = torch.ops.lcblock_cuda
    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    for dtype in dtypes if device == "cuda" else dtypes[:2]:
        for fmt in (torch.contiguous_format, torch.channels_last):
            for cp, cc, k, d in ((9, 18, 7, 1), (16, 24, 5, 2)):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(2, cp, 19, 70, generator=g).to(device, dtype)
                c = torch.randn(2, cc, 19, 70, generator=g).to(device, dtype)
                x, c = x.contiguous(memory_format=fmt), c.contiguous(memory_format=fmt)
                y, lse = ops.local_correlation_forward(x, c, k, d, 1.0)
                gx, gc = ops.local_correlation_backward(torch.ones_like(y), x, c, y, lse, k, d, 1.0)
                if device == "cuda":
                    torch.cuda.synchronize()
                print(dtype, fmt, cp, cc, float(y.float().abs().sum()), float(gx.abs().sum()))
    """
)

LCNET_INFERENCE = textwrap.dedent(
    """
    import json, statistics, sys, time
    import torch
    from lcnet.model import LCNet
    device, out = sys.argv[1], sys.argv[2]
    cuda = device == "cuda"
    h, w, repeats = (720, 1280, 10) if cuda else (128, 128, 2)
    dtypes = (torch.float32, torch.float16, torch.bfloat16) if cuda else (torch.float32,)

    def timed(fn):
        fn()
        if cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)

    rows = []
    torch.manual_seed(0)
    for dtype in dtypes:
        for fmt in (torch.contiguous_format, torch.channels_last):
            layout = "nchw" if fmt is torch.contiguous_format else "channels_last"
            net = LCNet().to(device).eval().to(dtype=dtype, memory_format=fmt)
            x = torch.rand(1, 3, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
            with torch.inference_mode():
                y = net(x)
                assert torch.isfinite(y).all(), f"non-finite output ({dtype}, {layout})"
                ms = timed(lambda: net(x))
            rows.append({"what": f"inference 1x3x{h}x{w}", "dtype": str(dtype).split(".")[1],
                         "layout": layout, "ms": ms})
            print(rows[-1], flush=True)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    json.dump({"device": name, "rows": rows}, open(out, "w"), indent=1)
    """
)


def _junit(path: Path) -> dict | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pytest_step(name, cap, gpu_args, dry_args, what, dry_what, out: Path, dry_cap=120) -> Step:
    base = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra"]
    xml = out / f"{name}.xml"

    def after(_out: Path, record: dict) -> None:
        record["tests"] = _junit(xml)

    return Step(
        name,
        cap,
        [*base, *gpu_args, f"--junitxml={xml}"],
        [*base, *dry_args, f"--junitxml={xml}"],
        what,
        dry_what=dry_what,
        after=after,
        dry_cap_s=dry_cap,
    )


def steps_for(out: Path, arch: str | None, jobs: int) -> list[Step]:
    """The steps in order, correctness first. Caps add up to BUDGET_S (470 s) at most."""
    tests = ROOT / "tests"
    small = out / "small_case.py"
    infer = out / "lcnet_inference.py"
    data, run = out / "data", out / "run"
    steps = [
        Step(
            "build",
            120,
            [PY, "setup.py", "build_ext", "--inplace"],
            [PY, "-c", "import lcblock_cuda, sys; print(lcblock_cuda.__file__)"],
            f"LCBLOCK_CUDA=1 TORCH_CUDA_ARCH_LIST={arch} MAX_JOBS={jobs} setup.py build_ext",
            dry_what="no rebuild: the existing in-place build is used",
            needs_kernels=False,
            env={"LCBLOCK_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch or "", "MAX_JOBS": str(jobs)},
        ),
        Step(
            "import",
            10,
            [PY, str(ROOT / "scripts" / "gpu_check.py"), "--import-check", "cuda"],
            [PY, str(ROOT / "scripts" / "gpu_check.py"), "--import-check", "cpu"],
            "lcblock_cuda loads, with its CUDA kernels (else extension_error() and its advice)",
            dry_what="lcblock_cuda loads (extension_error() and advice otherwise)",
            needs_kernels=False,
        ),
        pytest_step(
            "tests_cuda_local_correlation",
            20,
            ["-m", "cuda", str(tests / "test_local_correlation.py")],
            ["-m", "not cuda and not slow", "-x", str(tests / "test_local_correlation.py")],
            "pytest -m cuda tests/test_local_correlation.py",
            "its CPU counterparts: pytest -m 'not cuda' tests/test_local_correlation.py",
            out,
        ),
        pytest_step(
            "tests_cuda_emulation",
            25,
            ["-m", "cuda", "-k", "not cpu_emulation", str(tests / "test_cuda_emulation.py")],
            ["-m", "not cuda", str(tests / "test_cuda_emulation.py")],
            "pytest -m cuda tests/test_cuda_emulation.py (the real kernels vs the reference)",
            "the block code in the CPU emulator vs the reference (every thread order)",
            out,
        ),
        pytest_step(
            "emulation_vs_gpu",
            10,
            ["-m", "cuda", "-k", "cpu_emulation", str(tests / "test_cuda_emulation.py")],
            ["-k", "matches_the_cpu_kernels", str(tests / "test_cuda_emulation.py")],
            "the CUDA kernels against their CPU emulation",
            "the CPU emulation against the CPU kernels",
            out,
        ),
        pytest_step(
            "resources",
            15,
            [str(tests / "test_cuda_resources.py")],
            [str(tests / "test_cuda_resources.py")],
            "registers / STACK / LOCAL / barriers / PTX of every kernel, read with cuobjdump",
            "the same test: parser tests, and the binary's resources where it holds CUDA code",
            out,
        ),
    ]
    tool = sanitizer()
    for name in SANITIZER_TOOLS:
        command = None
        if tool:
            # Only our kernels are instrumented (kernel-name substring), which keeps this fast.
            command = [tool, "--tool", name, "--error-exitcode", "1", "--kernel-name",
                       "kns=lcblock", PY, str(small), "cuda"]  # fmt: skip
        steps.append(
            Step(
                name,
                20,
                command,
                None,
                f"compute-sanitizer --tool {name} over a small forward+backward, every dtype, "
                "NCHW and NHWC, caching allocator off",
                na_reason="compute-sanitizer needs a GPU",
                env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
            )
        )
    for dtype in ("float32", "bfloat16"):
        json_out = out / f"bench_{dtype}.json"

        def after(_out: Path, record: dict, json_out=json_out) -> None:
            record["bench"] = _load_json(json_out)

        steps.append(
            Step(
                f"bench_{dtype}",
                12,
                [PY, "benchmarks/bench_lcblock.py", "--device", "cuda", "--dtype", dtype,
                 "--shapes", "lcnet", "--impl", "fused,unfold,shifted", "--min-run-time",
                 "0.1", "--json", str(json_out)],
                [PY, "benchmarks/bench_lcblock.py", "--device", "cpu", "--dtype", dtype,
                 "--quick", "--impl", "fused,unfold", "--json", str(json_out)],
                f"benchmarks/bench_lcblock.py, LCNet shapes, {dtype}, fused/unfold/shifted",
                dry_what="its CPU rows (--quick)",
                after=after,
                dry_cap_s=60,
            )
        )  # fmt: skip

    def after_infer(_out: Path, record: dict) -> None:
        record["lcnet"] = _load_json(out / "lcnet.json")

    steps.append(
        Step(
            "lcnet_inference",
            20,
            [PY, str(infer), "cuda", str(out / "lcnet.json")],
            [PY, str(infer), "cpu", str(out / "lcnet.json")],
            "LCNet inference at 1280x720, float32/float16/bfloat16, NCHW and channels_last",
            dry_what="LCNet inference at 128x128 on the CPU, float32",
        )
    )
    steps[-1].after = after_infer
    lcnet = [PY, "-m", "lcnet"]
    steps.append(
        Step(
            "data",
            15,
            [*lcnet, "synth", "--out", str(data), "--train-pairs", "64", "--test-pairs", "8",
             "--workers", str(jobs)],
            [*lcnet, "synth", "--out", str(data), "--train-pairs", "4", "--test-pairs", "2",
             "--size", "48x64", "--workers", "1"],
            "a synthetic GOPRO-layout set: 64 train and 8 test pairs of 256x256",
            dry_what="4 train and 2 test pairs of 48x64",
            needs_kernels=False,
        )
    )  # fmt: skip
    train_common = ["train", "--data", str(data), "--out", str(run), "--recipe", "quick",
                    "--val-every", "0", "--log-every", "10", "--save-every", "100000"]  # fmt: skip
    steps.append(
        Step(
            "train",
            115,
            [*lcnet, *train_common, "--amp", "--channels-last", "--device", "cuda",
             "--workers", str(min(jobs, 8))],
            [*lcnet, *train_common, "--device", "cpu", "--max-steps", "4", "--batch-size", "2",
             "--patch-size", "32", "--widths", "8,16,32", "--workers", "0", "--log-every", "1"],
            "lcnet train --recipe quick --amp --channels-last for 95 s (stopped by SIGINT, "
            "which saves last.pt)",
            dry_what="4 quick-recipe steps of a small LCNet on the CPU",
            signal_at_s=95,
        )
    )  # fmt: skip
    steps[-1].after = _after_train
    steps.append(
        Step(
            "eval",
            15,
            [*lcnet, "eval", "--checkpoint", str(run / "last.pt"), "--data", str(data),
             "--out", str(out / "eval.json"), "--device", "cuda"],
            [*lcnet, "eval", "--checkpoint", str(run / "last.pt"), "--data", str(data),
             "--out", str(out / "eval.json"), "--device", "cpu"],
            "PSNR of the trained LCNet on the synthetic test split, and its gain over the input",
            dry_what="the same on the CPU",
        )
    )  # fmt: skip
    steps[-1].after = _after_eval
    small.write_text(SMALL_CASE)
    infer.write_text(LCNET_INFERENCE)
    return steps


def _after_train(out: Path, record: dict) -> None:
    metrics = out / "run" / "metrics.jsonl"
    rows = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r]
    steps = [r["step"] for r in rows if "step" in r]
    record["train"] = {
        "steps": max(steps) if steps else None,
        "images_per_s": speeds[-1] if speeds else None,
        "checkpoint": (out / "run" / "last.pt").exists(),
    }


def _after_eval(out: Path, record: dict) -> None:
    results = _load_json(out / "eval.json")
    if results:
        s = results["summary"]
        record["eval"] = {
            "psnr": s["psnr"],
            "blurry_psnr": s["blurry_psnr"],
            "gain_db": s["psnr"] - s["blurry_psnr"],
            "images": s["images"],
            "checkpoint_step": s.get("checkpoint_step"),
        }


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = [t for t in log.read_text(errors="replace").splitlines() if t.strip()]
    except OSError:
        return ""
    return " | ".join(t.strip()[:200] for t in text[-lines:])


def run_step(step: Step, out: Path, dry: bool, deadline: float, kernels_error: str | None):
    """Runs one step; returns its record."""
    record = {"name": step.name, "status": "ok", "seconds": 0.0,
              "cap_s": (step.dry_cap_s or max(step.cap_s, 60)) if dry else step.cap_s,
              "what": step.dry_what or step.what if dry else step.what}  # fmt: skip
    command = step.dry if dry else step.gpu
    if dry and command is None:
        record.update(status="n/a", reason=step.na_reason or "no CPU stand-in")
        return record
    if command is None:
        record.update(status="failed", reason="compute-sanitizer not found (PATH, "
                      "CUDA_HOME/bin, /usr/local/cuda/bin)")  # fmt: skip
        return record
    if step.needs_kernels and kernels_error:
        record.update(status="skipped", reason=f"the extension did not load: {kernels_error}")
        return record
    left = deadline - time.monotonic()
    if left < MIN_START_S:
        record.update(status="skipped", reason=f"skipped for time: {left:.0f} s of the budget left")
        return record
    cap = (step.dry_cap_s or max(step.cap_s, 60)) if dry else step.cap_s
    limit = min(cap, left)
    log = out / "logs" / f"{step.name}.log"
    record["log"] = f"logs/{step.name}.log"
    env = dict(os.environ, **({} if dry else step.env))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    with log.open("w") as sink:
        sink.write("$ " + " ".join(command) + "\n")
        sink.flush()
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        timed_out = interrupted = False
        try:
            first = step.signal_at_s if step.signal_at_s and not dry else limit
            try:
                proc.wait(timeout=min(first, limit))
            except subprocess.TimeoutExpired:
                if first < limit:  # the time-boxed run: stop it as Ctrl-C would
                    interrupted = True
                    os.killpg(proc.pid, signal.SIGINT)
                    proc.wait(timeout=max(1.0, limit - (time.monotonic() - t0)))
                else:
                    raise
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    record["seconds"] = round(time.monotonic() - t0, 1)
    record["rc"] = proc.returncode
    if timed_out:
        record.update(status="failed", reason=f"timed out after {limit:.0f} s (cap {cap} s)")
    elif interrupted and proc.returncode in (0, 130):
        record["reason"] = f"stopped by SIGINT after {step.signal_at_s} s, as planned"
    elif proc.returncode != 0:
        record.update(status="failed", reason=f"exit {proc.returncode}: {_tail(log)}")
    if step.after is not None:
        try:
            step.after(out, record)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            record.setdefault("reason", f"could not read its results: {exc}")
    return record


def import_check(device: str) -> int:
    """The `import` step: exit 0 when lcblock_cuda loads (with CUDA kernels for "cuda")."""
    import lcblock_cuda

    error = lcblock_cuda.extension_error()
    if error is not None:
        print(f"lcblock_cuda did not load: {lcblock_cuda.extension_advice()}")
        return 1
    compiled = lcblock_cuda.cuda_compiled()
    print(f"lcblock_cuda loaded from {lcblock_cuda.__file__}; CUDA kernels: {compiled}")
    if device == "cuda" and not compiled:
        print("the build holds no CUDA kernels: see logs/build.log (toolkit, LCBLOCK_CUDA)")
        return 1
    return 0


def empty_out(out: Path) -> None:
    """Empties OUT_DIR (stale reports must not be read back), refusing folders that are not
    plausibly only a report folder: the file system root, the home folder, or this checkout."""
    out = out.resolve()
    if out == Path(out.anchor) or out == Path.home().resolve() or out in (ROOT, *ROOT.parents):
        raise SystemExit(f"gpu_check: refusing to empty OUT_DIR {out}; give a new folder")
    if (out / ".git").exists():
        raise SystemExit(f"gpu_check: refusing to empty OUT_DIR {out}: it holds a .git")
    if out.exists():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    (out / "logs").mkdir(parents=True, exist_ok=True)


def environment(dry: bool) -> dict:
    info = {"python": platform.python_version(), "machine": platform.node()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if not dry and torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name()
            info["capability"] = "{}.{}".format(*torch.cuda.get_device_capability())
        else:
            info["device"] = "cpu (dry run)" if dry else "no GPU visible"
    except ImportError as exc:
        info["device"] = f"unknown: {exc}"
    return info


def markdown(report: dict) -> str:
    md = [
        f"# gpu_check{' --dry-run' if report['dry_run'] else ''}: {report.get('device')}",
        "",
        f"torch {report.get('torch')}, CUDA {report.get('cuda')}, Python {report.get('python')};"
        f" {report['total_seconds']:.0f} s of a {report['budget_s']} s budget.",
        "",
        "| step | status | seconds | cap | what / reason |",
        "|---|---|---:|---:|---|",
    ]
    for s in report["steps"]:
        note = s.get("reason") or s.get("what", "")
        md.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['cap_s']} | {note} |")
    for s in report["steps"]:
        if s.get("tests"):
            md.append(f"\n{s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["tests"].items()))
    for s in report["steps"]:
        for r in (s.get("lcnet") or {}).get("rows", []):
            md.append(f"\n{r['what']} {r['dtype']} {r['layout']}: {r['ms']:.2f} ms")
        if s.get("train"):
            md.append(f"\ntraining: {s['train']}")
        if s.get("eval"):
            md.append(f"\nevaluation: {s['eval']}")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="report folder (emptied first)")
    parser.add_argument("--dry-run", action="store_true", help="CPU stand-ins, no GPU needed")
    parser.add_argument("--import-check", choices=("cpu", "cuda"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.import_check:
        return import_check(args.import_check)
    if not args.out:
        parser.error("OUT_DIR is required")
    start = time.monotonic()
    deadline = start + BUDGET_S
    out = Path(args.out).resolve()
    empty_out(out)
    dry = args.dry_run
    arch = None
    if not dry:
        import torch

        arch = "{}.{}".format(*torch.cuda.get_device_capability())
    jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 2)
    steps = steps_for(out, arch, jobs)
    report = {"dry_run": dry, "budget_s": BUDGET_S, **environment(dry), "steps": []}
    if not dry and not ninja_available():
        report["warnings"] = ["ninja not found: the build compiles serially and may pass its cap"]
    kernels_error = None
    for step in steps:
        print(f"gpu_check: {step.name} ...", flush=True)
        record = run_step(step, out, dry, deadline, kernels_error)
        if step.name == "build" and record["status"] != "ok" and "warnings" in report:
            record["reason"] = f"{record.get('reason', '')}; {report['warnings'][0]}"
        if step.name == "import" and record["status"] != "ok":
            kernels_error = _tail(out / "logs" / "import.log", 2) or record.get("reason")
        report["steps"].append(record)
        print(f"gpu_check: {step.name} {record['status']} ({record['seconds']:.0f} s)"
              + (f": {record['reason']}" if record.get("reason") else ""), flush=True)  # fmt: skip
        report["total_seconds"] = round(time.monotonic() - start, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    report["total_seconds"] = round(time.monotonic() - start, 1)
    bad = [s["name"] for s in report["steps"] if s["status"] in ("failed", "skipped")]
    report["passed"] = not bad
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
