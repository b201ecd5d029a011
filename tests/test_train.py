"""Tests of `lcnet train`: run folder, checkpoints, exact resumption, Ctrl-C, data parallel
(2 Gloo processes under torchrun) and every user error it reports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_TRAIN_ARGS

import lcblock_cuda
import lcnet.checkpoint
import lcnet.train
from lcnet.checkpoint import load_checkpoint
from lcnet.cli import main
from lcnet.errors import LCNetError
from lcnet.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # imageio, trying its plugins on a corrupt file, announces a deprecation of its own.
    pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning"),
]
RESUME_STATE = ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "step_in_epoch")


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN_ARGS, *extra])


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_equal(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint state."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _stop_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Make the next run receive Ctrl-C after ``steps`` optimiser steps."""
    real_step = lcnet.train._train_step
    calls = []

    def step_then_ctrl_c(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        loss = real_step(*args, **kwargs)
        if len(calls) == steps:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(lcnet.train, "_train_step", step_then_ctrl_c)


def _refused_resume(run: Path, capsys: Any, *flags: str) -> str:
    """Resume ``run`` with ``flags``, expect exit 2 with last.pt untouched; the error line."""
    before = (run / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", *flags]) == 2
    line = _error_line(capsys)
    assert (run / "last.pt").read_bytes() == before
    return line


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# A normal run


def test_run_folder_holds_config_logs_and_a_weights_only_checkpoint(tiny_run: Path) -> None:
    assert {p.name for p in tiny_run.iterdir()} == {
        "config.json",
        "train.log",
        "metrics.jsonl",
        "last.pt",
    }
    config = json.loads((tiny_run / "config.json").read_text())
    assert set(config["train"]) == {f for f in TrainConfig.__dataclass_fields__}
    assert config["train"]["batch_size"] == 2 and config["train"]["widths"] == [8, 16, 32]
    assert config["model"]["widths"] == [8, 16, 32] and config["world_size"] == 1

    ckpt = _load(tiny_run / "last.pt")  # weights_only=True: tensors and primitives only
    assert ckpt["step"] == 2 and ckpt["format"] == "lcnet-checkpoint"
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["train_args"]["max_steps"] == 2
    assert ckpt["model_config"]["widths"] == [8, 16, 32]

    records = _records(tiny_run)
    assert [r["step"] for r in records] == [1, 2]
    assert all({"loss", "lr", "images_per_s", "epoch"} <= r.keys() for r in records)
    assert "done at step 2" in (tiny_run / "train.log").read_text()


# That training lowers the loss (on a fixed batch) and beats the blurry input on held-out
# pairs: tests/test_learning.py (the old 8-step test here passed with a no-op optimiser step).


def test_blur_dir_both_trains_and_validates_on_blur(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = []
    real_list_pairs = lcnet.train.list_pairs

    def spy(root: Any, split: str = "train", blur_dir: str = "blur") -> Any:
        listed.append((split, blur_dir))
        return real_list_pairs(root, split, blur_dir)

    monkeypatch.setattr(lcnet.train, "list_pairs", spy)
    run = tmp_path / "run"
    assert (
        _train(tiny_gopro, run, "--blur-dir", "both", "--max-steps", "2", "--val-every", "1") == 0
    )
    assert json.loads((run / "config.json").read_text())["train"]["blur_dir"] == "both"
    assert listed == [("test", "blur")]  # validation on blur, as lcnet eval's default
    assert _load(run / "last.pt")["train_args"]["blur_dir"] == "both"


@pytest.mark.parametrize(
    ("batch", "total", "first"),
    [
        (2, 4, 2),  # 2 steps per epoch: resumes at an epoch boundary
        (1, 6, 3),  # 4 steps per epoch: resumes mid-epoch, then crosses a StepLR step
    ],
)
def test_resume_is_bitwise_exact(
    tiny_gopro: Path, tmp_path: Path, batch: int, total: int, first: int
) -> None:
    flags = ["--batch-size", str(batch), "--lr-step-epochs", "1", "--lr-gamma", "0.5"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _train(tiny_gopro, whole, *flags, "--max-steps", str(total)) == 0
    assert _train(tiny_gopro, split, *flags, "--max-steps", str(first)) == 0
    # Flags not given again come from the run itself.
    assert main(["train", "--out", str(split), "--resume", "--max-steps", str(total)]) == 0

    a, b = _load(whole / "last.pt"), _load(split / "last.pt")
    for key in (*RESUME_STATE, "rng"):
        _assert_equal(a[key], b[key], key)
    assert a["optimizer"]["param_groups"][0]["lr"] < 1e-3  # the schedule did step
    # The resumed run's metrics carry on without repeating or skipping a step.
    assert [r["step"] for r in _records(split)] == list(range(1, total + 1))


def test_ctrl_c_saves_a_checkpoint_and_exits_130(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stop_after(monkeypatch, 2)
    run = tmp_path / "run"
    assert _train(tiny_gopro, run, "--max-steps", "50") == 130
    assert _load(run / "last.pt")["step"] == 2
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3"]) == 0
    assert _load(run / "last.pt")["step"] == 3


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    lcnet.checkpoint.save_checkpoint(path, {"step": 1})

    def broken_save(obj: Any, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        lcnet.checkpoint.save_checkpoint(path, {"step": 2})
    assert _load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


# --------------------------------------------------------------------------------------------
# Data parallel


def test_torchrun_two_gloo_processes_stay_in_sync(
    tiny_gopro: Path, tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lcnet", "train", "--data", str(tiny_gopro), "--out", str(run),
        "--max-steps", "2", "--device", "cpu", *TINY_TRAIN_ARGS,
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = _load(run / "last.pt")
    assert ckpt["step"] == 2
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert _records(run)[-1] == {"kind": "sync", "step": 2, "ranks_in_sync": True}
    # Each rank trains on its half of the same global batches as a single process does.
    single = _load(tiny_run / "last.pt")["model"]
    for name, tensor in ckpt["model"].items():
        torch.testing.assert_close(tensor, single[name], atol=1e-3, rtol=0, msg=name)


def test_batch_must_split_across_processes(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert _train(tiny_gopro, tmp_path / "run", "--batch-size", "3") == 2
    assert "--batch-size 3 cannot be split evenly across 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# User errors: exit code 2, one line naming the culprit, nothing lost


def _error_line(capsys: Any) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected a message on stderr"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_existing_run_is_never_overwritten(tiny_gopro: Path, tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    assert _train(tiny_gopro, run, "--max-steps", "1") == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert _train(tiny_gopro, run, "--max-steps", "1") == 2
    line = _error_line(capsys)
    assert str(run) in line and "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    assert _train(tiny_gopro, run, "--max-steps", "1", "--overwrite", "--seed", "1") == 0
    assert _load(run / "last.pt")["train_args"]["seed"] == 1
    assert len(_records(run)) == 1  # the old metrics went with the old run


def test_resume_needs_a_checkpoint(tmp_path: Path, capsys: Any) -> None:
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in _error_line(capsys)


def test_resume_refuses_another_model_config(tiny_run: Path, tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "last.pt").read_bytes()
    assert main(["train", "--out", str(run), "--resume", "--widths", "16,32,64"]) == 2
    line = _error_line(capsys)
    assert "--widths" in line and "8,16,32" in line and "16,32,64" in line
    assert (run / "last.pt").read_bytes() == before


def test_resume_refuses_a_foreign_checkpoint(tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "model_config": {}}, run / "last.pt")  # lacks the training state
    assert main(["train", "--out", str(run), "--resume"]) == 2
    line = _error_line(capsys)
    assert str(run / "last.pt") in line and "missing keys" in line and "optimizer" in line


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--batch-size", "0"),
        ("--patch-size", "-8"),
        ("--lr", "0"),
        ("--lr", "fast"),
        ("--epochs", "0"),
        ("--max-steps", "0"),
        ("--lr-gamma", "-1"),
        ("--content-weight", "-0.1"),
        ("--widths", "8,x"),
        ("--workers", "-1"),
    ],
)
def test_bad_numeric_flags_name_flag_and_value(
    tiny_gopro: Path, tmp_path: Path, capsys: Any, flag: str, value: str
) -> None:
    assert _train(tiny_gopro, tmp_path / "run", flag, value) == 2
    err = capsys.readouterr().err
    assert flag in err and repr(value) in err
    assert not (tmp_path / "run").exists()


def test_model_flags_the_model_refuses(tiny_gopro: Path, tmp_path: Path, capsys: Any) -> None:
    assert _train(tiny_gopro, tmp_path / "run", "--kernel-size", "4") == 2
    assert "--kernel-size must be odd, got 4" in _error_line(capsys)
    assert _train(tiny_gopro, tmp_path / "run", "--widths", "8,15,32") == 2
    assert "--widths" in (line := _error_line(capsys)) and "divisible" in line
    assert not (tmp_path / "run").exists()


def test_fused_backend_without_compiled_kernels(
    tiny_gopro: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lcblock_cuda, "extension_error", lambda: ImportError("no _C here"))
    assert _train(tiny_gopro, tmp_path / "run") == 2
    line = _error_line(capsys)
    assert "no _C here" in line and "--lc-backend reference" in line
    assert not (tmp_path / "run").exists()


def test_missing_data_folder(tmp_path: Path, capsys: Any) -> None:
    assert _train(tmp_path / "nowhere", tmp_path / "run") == 2
    assert str(tmp_path / "nowhere") in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_patch_larger_than_images(tiny_gopro: Path, tmp_path: Path, capsys: Any) -> None:
    assert _train(tiny_gopro, tmp_path / "run", "--patch-size", "200") == 2
    assert "--patch-size 200 is larger than the training images" in _error_line(capsys)


def test_missing_vgg_weights_with_content_loss(
    tiny_gopro: Path, tmp_path: Path, capsys: Any
) -> None:
    missing = tmp_path / "vgg19.pth"
    flags = ["--content-weight", "0.1", "--vgg-weights", str(missing)]
    assert _train(tiny_gopro, tmp_path / "run", *flags) == 2
    line = _error_line(capsys)
    assert "VGG-19" in line and str(missing) in line and "--content-weight 0" in line
    assert not (tmp_path / "run").exists()


def test_corrupt_training_image(tiny_gopro: Path, tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_gopro, data)
    victim = sorted((data / "train").glob("*/sharp/*.png"))[-1]
    victim.write_bytes(os.urandom(300))
    assert _train(data, tmp_path / "run", "--max-steps", "4") == 2
    assert str(victim) in _error_line(capsys)


def test_load_checkpoint_rejects_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(LCNetError, match="noise.pt is not an LCNet checkpoint"):
        load_checkpoint(path)


def test_ranks_agree_on_a_stop_only_every_few_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under data parallelism the stop flag costs an all_reduce (a device sync under NCCL):
    it runs every STOP_CHECK_EVERY steps, not every step, and still stops every rank."""
    from lcnet.runtime import Dist, StopFlag

    reduced: list[int] = []

    def all_reduce(tensor: torch.Tensor, op: Any = None) -> None:
        reduced.append(int(tensor.item()))
        tensor.fill_(1)  # another rank asked to stop

    monkeypatch.setattr(lcnet.train.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(lcnet.train.dist, "get_backend", lambda: "gloo")
    ddp, stop = Dist(rank=0, world_size=2), StopFlag()
    every = lcnet.train.STOP_CHECK_EVERY
    assert every > 1
    stops = [lcnet.train._stop_requested(stop, ddp, step) for step in range(1, 2 * every + 1)]
    assert len(reduced) == 2  # steps `every` and 2 * `every`
    assert stops == [step % every == 0 for step in range(1, 2 * every + 1)]
    assert lcnet.train._stop_requested(stop, Dist(), 3) is False  # one process: no collective
    assert len(reduced) == 2


# ---------------------------------------------------- a cosine run's schedule survives a resume
COSINE = ["--schedule", "cosine", "--warmup-steps", "1"]


def test_cosine_resume_keeps_the_schedule_of_the_interrupted_run(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _train(tiny_gopro, whole, *COSINE, "--max-steps", "6") == 0
    _stop_after(monkeypatch, 3)
    assert _train(tiny_gopro, split, *COSINE, "--max-steps", "6") == 130
    monkeypatch.undo()
    assert main(["train", "--out", str(split), "--resume"]) == 0
    a, b = _load(whole / "last.pt"), _load(split / "last.pt")
    for key in (*RESUME_STATE, "rng"):
        _assert_equal(a[key], b[key], key)


def test_cosine_resume_may_stop_earlier_on_the_same_schedule(
    tiny_gopro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _train(tiny_gopro, whole, *COSINE, "--max-steps", "8") == 0
    _stop_after(monkeypatch, 2)
    assert _train(tiny_gopro, split, *COSINE, "--max-steps", "8") == 130
    monkeypatch.undo()
    assert main(["train", "--out", str(split), "--resume", "--max-steps", "5"]) == 0
    lrs = {r["step"]: r["lr"] for r in _records(whole) if "lr" in r}
    resumed = {r["step"]: r["lr"] for r in _records(split) if "lr" in r}
    assert max(resumed) == 5
    # Same learning rate at every step: the schedule still ends at step 8, not at 5.
    assert resumed == {step: lrs[step] for step in resumed}
    assert resumed[5] > 0


def test_cosine_resume_refuses_to_train_past_the_schedule(
    tiny_gopro: Path, tmp_path: Path, capsys: Any
) -> None:
    run = tmp_path / "run"
    assert _train(tiny_gopro, run, *COSINE, "--max-steps", "3") == 0
    line = _refused_resume(run, capsys, "--max-steps", "6")
    assert "cosine" in line and "step 3" in line and "--max-steps 6" in line


@pytest.mark.parametrize(
    ("flag", "value"), [("--schedule", "step"), ("--warmup-steps", "2"), ("--optimizer", "adamw")]
)
def test_resume_refuses_another_schedule_or_optimizer(
    tiny_gopro: Path, tmp_path: Path, capsys: Any, flag: str, value: str
) -> None:
    run = tmp_path / "run"
    assert _train(tiny_gopro, run, *COSINE, "--max-steps", "2") == 0
    line = _refused_resume(run, capsys, flag, value, "--max-steps", "2")
    assert flag in line and value in line


def test_resume_with_overwrite_is_refused_before_anything_else(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite exclude each other" in _error_line(capsys)
