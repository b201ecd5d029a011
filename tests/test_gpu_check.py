"""scripts/gpu_check.sh: stops at once, saying why, where no GPU is usable; its steps, caps and
report (scripts/gpu_check.py); and the --dry-run, run whole (marked slow, about 2 minutes)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


def fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run(args, path_dirs, python=sys.executable):
    env = dict(os.environ, PATH=os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"]))
    env["PYTHON"] = str(python)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_usage_without_out_dir():
    proc = run([], [])
    assert proc.returncode == 2
    assert "usage: scripts/gpu_check.sh [--dry-run] OUT_DIR" in proc.stderr


def test_stops_when_the_driver_lists_no_gpu(tmp_path):
    fake_tool(tmp_path, "nvidia-smi", "echo 'No devices were found'; exit 6")
    out = tmp_path / "out"
    proc = run([str(out)], [tmp_path])
    assert proc.returncode == 3
    assert "no CUDA GPU on this machine (nvidia-smi lists no GPU)" in proc.stderr
    assert not out.exists()  # stopped before doing anything


def test_stops_when_torch_sees_no_gpu(tmp_path):
    fake_tool(tmp_path, "nvidia-smi", "echo 'GPU 0: Fake (UUID: GPU-0)'")
    fake_tool(tmp_path, "fake-python", "exit 1")  # as torch.cuda.is_available() is False
    out = tmp_path / "out"
    proc = run([str(out)], [tmp_path], python=tmp_path / "fake-python")
    assert proc.returncode == 3
    assert "torch.cuda.is_available() is False" in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run")
def test_stops_on_this_machine(tmp_path):
    proc = run([str(tmp_path / "out")], [])
    assert proc.returncode == 3
    assert "no CUDA GPU on this machine" in proc.stderr


# ---- the harness itself (scripts/gpu_check.py), so that it cannot rot unseen ---------------

_SPEC = importlib.util.spec_from_file_location("gpu_check", SCRIPT.with_suffix(".py"))
gpu_check = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("gpu_check", gpu_check)  # dataclasses look their module up there
_SPEC.loader.exec_module(gpu_check)


def test_caps_fit_the_budget_and_correctness_comes_first(tmp_path):
    steps = gpu_check.steps_for(tmp_path, "9.0", 16)
    assert sum(s.cap_s for s in steps) <= 470
    names = [s.name for s in steps]
    assert names[:2] == ["build", "import"]
    correctness = [n for n in names if n.startswith("tests_") or n in gpu_check.SANITIZER_TOOLS]
    assert max(names.index(n) for n in correctness) < names.index("bench_float32")
    assert set(gpu_check.SANITIZER_TOOLS) <= set(names)
    # The CUDA tests run file by file: one module that cannot import costs only its own step.
    cuda_tests = [s for s in steps if s.name.startswith("tests_cuda")]
    assert len(cuda_tests) == len(gpu_check.CUDA_TEST_FILES)
    for s in cuda_tests:
        assert sum(a.endswith(".py") for a in s.gpu) == 1


def test_sanitizers_run_without_the_caching_allocator(tmp_path):
    steps = {s.name: s for s in gpu_check.steps_for(tmp_path, "9.0", 16)}
    for name in gpu_check.SANITIZER_TOOLS:
        assert steps[name].env == {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
        assert steps[name].dry is None and steps[name].na_reason


def test_a_step_over_its_cap_fails_and_one_out_of_budget_is_skipped(tmp_path):
    (tmp_path / "logs").mkdir()
    slow = gpu_check.Step("slow", 1, [sys.executable, "-c", "import time; time.sleep(30)"],
                          None, "sleeps", needs_kernels=False)  # fmt: skip
    record = gpu_check.run_step(slow, tmp_path, False, time.monotonic() + 100, None)
    assert record["status"] == "failed" and "timed out after 1 s" in record["reason"]
    record = gpu_check.run_step(slow, tmp_path, False, time.monotonic() + 5, None)
    assert record["status"] == "skipped" and record["reason"].startswith("skipped for time")
    broken = gpu_check.Step("broken", 10, [sys.executable, "-c", "raise SystemExit('no tool X')"],
                            None, "fails", needs_kernels=False)  # fmt: skip
    record = gpu_check.run_step(broken, tmp_path, False, time.monotonic() + 100, None)
    assert record["status"] == "failed" and "no tool X" in record["reason"]
    gated = gpu_check.Step("gated", 10, [sys.executable, "-c", "pass"], None, "needs kernels")
    record = gpu_check.run_step(gated, tmp_path, False, time.monotonic() + 100, "undefined symbol")
    assert record["status"] == "skipped" and "undefined symbol" in record["reason"]
    missing = gpu_check.Step("memcheck", 10, None, None, "a sanitizer")
    record = gpu_check.run_step(missing, tmp_path, False, time.monotonic() + 100, None)
    assert record["status"] == "failed" and "compute-sanitizer not found" in record["reason"]


def test_refuses_to_empty_a_checkout(tmp_path):
    with pytest.raises(SystemExit, match="refusing to empty"):
        gpu_check.empty_out(SCRIPT.parent.parent)
    (tmp_path / ".git").mkdir()
    with pytest.raises(SystemExit, match="holds a .git"):
        gpu_check.empty_out(tmp_path)


@pytest.mark.slow
def test_dry_run_passes_with_every_step_ok_or_na(tmp_path):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "gpu_check.json").write_text("stale")
    (out / "logs" / "old.log").write_text("stale")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(out)],
        capture_output=True, text=True, env=env, timeout=480,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (out / "logs" / "old.log").exists()  # OUT_DIR was emptied first
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["passed"] is True
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps)[:2] == ["build", "import"]
    for s in report["steps"]:
        assert set(s) >= {"name", "status", "seconds"}
        assert s["status"] in ("ok", "n/a"), s
    for name in gpu_check.SANITIZER_TOOLS:
        assert steps[name]["status"] == "n/a" and steps[name]["reason"]
    assert steps["tests_cuda_emulation"]["tests"]["failures"] == 0
    assert steps["tests_cuda_emulation"]["tests"]["tests"] > 50
    assert steps["train"]["train"]["checkpoint"] is True
    assert "gain_db" in steps["eval"]["eval"]
    assert (out / "gpu_check.md").read_text().startswith("# gpu_check --dry-run")
