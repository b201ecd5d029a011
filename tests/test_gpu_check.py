"""scripts/gpu_check.sh stops at once, with a message saying why, where no GPU is usable."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
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
    assert "usage: scripts/gpu_check.sh OUT_DIR" in proc.stderr


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
