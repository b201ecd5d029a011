"""Shared fixtures of the command-line tests: a tiny GOPRO-layout tree and a tiny trained run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

#: Flags that make `lcnet train` take a fraction of a second per step on a 2-core CPU.
TINY_TRAIN_ARGS = [
    "--batch-size", "2",
    "--patch-size", "32",
    "--widths", "8,16,32",
    "--content-weight", "0",
    "--workers", "0",
    "--log-every", "1",
]  # fmt: skip
TINY_SIZE = (48, 64)  # (height, width) of the tiny tree's images


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster than two, and immune to a busy machine, where
    OpenMP threads spin-wait for each other. Restores the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_gopro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train and 2 test pairs of 48x64 synthetic images in the GOPRO layout."""
    from lcnet.synth import make_synthetic_gopro

    root = tmp_path_factory.mktemp("data") / "gopro"
    return make_synthetic_gopro(root, train_pairs=4, test_pairs=2, size=TINY_SIZE, workers=1)


@pytest.fixture(scope="session")
def tiny_run(tiny_gopro: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder after 2 training steps on the tiny tree (treat it as read-only)."""
    from lcnet.cli import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["train", "--data", str(tiny_gopro), "--out", str(run), "--max-steps", "2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread does
    try:
        assert main([*args, *TINY_TRAIN_ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return run
