"""Progress for machines: with stderr not a terminal (CI, nohup, a log file) training writes
plain lines, never carriage-return bars."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_TRAIN_ARGS

import lcnet.progress
from lcnet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
LINE = re.compile(r"^step (\d+)/6 \(\d+%\) epoch \d+ loss \d+\.\d+ lr \S+ img_s \S+")


def _train(tiny_gopro: Path, out: Path) -> int:
    args = ["train", "--data", str(tiny_gopro), "--out", str(out), "--max-steps", "6"]
    return main([*args, *TINY_TRAIN_ARGS, "--log-every", "2"])


def test_plain_lines_when_stderr_is_not_a_terminal(
    tiny_gopro: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lcnet.progress, "PLAIN_EVERY_S", 0.0)
    assert _train(tiny_gopro, tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    steps = [int(m.group(1)) for line in err.splitlines() if (m := LINE.match(line))]
    assert steps == [2, 4, 6], err
    log = (tmp_path / "run" / "train.log").read_text()
    assert sum(1 for line in log.splitlines() if " step 4/6 " in line) == 1


def test_plain_lines_are_spaced_in_time(
    tiny_gopro: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lcnet.progress, "PLAIN_EVERY_S", 3600.0)
    assert _train(tiny_gopro, tmp_path / "run") == 0
    err = capsys.readouterr().err
    steps = [int(m.group(1)) for line in err.splitlines() if (m := LINE.match(line))]
    assert steps == [2, 6], err  # the first report, then the last step only
