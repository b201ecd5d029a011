"""No lost work: a run stopped by a signal to its whole process group, by an error, or by a
kill leaves a folder that can be resumed (or says why not)."""

from __future__ import annotations

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
from lcnet.io import ImageReadError

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


# --------------------------------------------------------------------------------------------
# Finding 2: a run that stops on an error saves the steps done (never non-finite weights)


def _error_line(capsys: Any) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def _train_until(
    monkeypatch: pytest.MonkeyPatch, steps: int, then: Any, data: Path, run: Path, *extra: str
) -> int:
    """Train with ``then(model)`` called right after step ``steps``."""
    import lcnet.train

    real_advance = lcnet.train._advance

    def advance(run_: Any, state: Any) -> None:
        real_advance(run_, state)
        if state.step == steps:
            then(run_.model)

    monkeypatch.setattr(lcnet.train, "_advance", advance)
    args = ["train", "--data", str(data), "--out", str(run), *TINY_TRAIN_ARGS, *extra]
    try:
        return main(args)
    finally:
        monkeypatch.setattr(lcnet.train, "_advance", real_advance)


def _images_become_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every training item fails as a corrupt file does (in this process: the
    tiny runs load data without worker processes, and whatever the dataset caches)."""
    import lcnet.batches

    def unreadable(self: Any, key: Any) -> Any:
        raise ImageReadError("cannot read image train/SEQ/blur/000001.png: truncated file")

    monkeypatch.setattr(lcnet.batches.EpochItems, "__getitem__", unreadable)


def test_error_saves_the_steps_done_and_resume_continues(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        code = _train_until(
            patch,
            3,
            lambda model: _images_become_unreadable(patch),
            tiny_gopro,
            run,
            "--max-steps",
            "50",
        )
    assert code == 2
    line = _error_line(capsys)
    assert "cannot read image" in line and "saved step 3" in line and "--resume" in line, line
    assert _load(run / "last.pt")["step"] == 3
    # The message's advice works as given: no --overwrite needed.
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "4"]) == 0
    assert _load(run / "last.pt")["step"] == 4


def test_error_after_weights_became_non_finite_keeps_the_good_checkpoint(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    run = tmp_path / "run"

    def poison_and_break(model: Any) -> None:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        _images_become_unreadable(monkeypatch)

    code = _train_until(
        monkeypatch, 3, poison_and_break, tiny_gopro, run, "--max-steps", "50", "--save-every", "2"
    )
    assert code == 2
    line = _error_line(capsys)
    assert "not finite" in line and "step 2" in line, line
    ckpt = _load(run / "last.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_non_finite_weights_are_never_saved(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    run = tmp_path / "run"

    def poison(model: Any) -> None:
        with torch.no_grad():
            next(model.parameters()).fill_(float("inf"))

    code = _train_until(
        monkeypatch, 2, poison, tiny_gopro, run, "--max-steps", "5", "--save-every", "1"
    )
    assert code == 2
    line = _error_line(capsys)
    assert "not finite" in line and "last.pt holds step 1" in line, line
    assert _load(run / "last.pt")["step"] == 1


def test_run_that_saved_nothing_explains_itself(
    tiny_gopro: Path, tmp_path: Path, capsys: Any
) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    subprocess.run(["cp", "-r", str(tiny_gopro), str(data)], check=True)
    for p in (data / "train").glob("*/sharp/*.png"):  # the first batch fails
        p.write_bytes(b"not a png")
    assert main(["train", "--data", str(data), "--out", str(run), *TINY_TRAIN_ARGS]) == 2
    capsys.readouterr()
    assert not (run / "last.pt").exists() and (run / "train.log").exists()
    for extra in ([], ["--resume"]):
        assert main(["train", "--data", str(data), "--out", str(run), *extra]) == 2
        line = _error_line(capsys)
        assert "no checkpoint" in line and "--overwrite" in line and "train.log" in line, line


# --------------------------------------------------------------------------------------------
# Finding 3: temporary files of killed writes are removed on start


def test_stale_temporary_files_are_removed_on_start(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(tiny_run), str(run)], check=True)
    stale = [run / ".last.pt.abc123.tmp", run / ".best.pt.x.tmp", run / ".config.json.q.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = run / "notes.tmp"  # not ours
    keep.write_text("mine")
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3"]) == 0
    assert not any(p.exists() for p in stale)
    assert keep.exists()
    assert "removed 3 temporary file(s)" in (run / "train.log").read_text()
