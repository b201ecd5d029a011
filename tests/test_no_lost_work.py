"""No lost work: a run stopped by a signal to its whole process group, by an error, or by a
kill leaves a folder that can be resumed (or says why not)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_TRAIN_ARGS

from lcnet.cli import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _steps_logged(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if '"train"' in line)


def _tiny(*extra: str) -> list[str]:
    """TINY_TRAIN_ARGS with ``extra`` flags replacing theirs."""
    args = list(TINY_TRAIN_ARGS)
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += list(extra[i : i + 2])
    return args


# --------------------------------------------------------------------------------------------
# Finding 1: SIGTERM to the whole process group, with data-loading workers


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_saves_and_exits_130(
    tiny_gopro: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lcnet", "train", "--data", str(tiny_gopro), "--out", str(run)]
    cmd += [*_tiny("--workers", "2"), "--max-steps", "100000", "--save-every", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # Its own session: the process group is the trainer and its workers, as under systemd.
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while _steps_logged(run) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.killpg(proc.pid, signal.SIGTERM)  # like systemd's KillMode=control-group
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "SIGTERM received" in stderr and "Traceback" not in stderr, stderr
    saved = _load(run / "last.pt")["step"]
    assert saved >= 3
    assert main(["train", "--out", str(run), "--resume", "--max-steps", str(saved + 1)]) == 0
    assert _load(run / "last.pt")["step"] == saved + 1
