"""Which items each training step draws: a plan that depends only on (seed, epoch, step), so a
resumed run rebuilds the same batches and the global batches do not depend on the number of
processes (docs/DESIGN.md, "Trainer guarantees")."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .data import GoproDataset
from .errors import LCNetError
from .io import read_image

__all__ = ["BatchPlan", "EpochItems", "PlanSampler", "check_patch_size"]


def check_patch_size(dataset: GoproDataset, patch_size: int) -> None:
    """Crops must fit the images (checked on the first pair; GOPRO's are all 1280x720)."""
    pair = dataset.pairs[0]
    try:
        height, width = read_image(pair.blur).shape[:2]
    except (OSError, ValueError) as exc:
        raise LCNetError(str(exc)) from exc
    if patch_size > min(height, width):
        raise LCNetError(
            f"--patch-size {patch_size} is larger than the training images "
            f"({width}x{height} for {pair.blur})"
        )


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed mixed from (seed, epoch), for the epoch's torch.Generator."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class BatchPlan:
    """The items of every step of every epoch, for one rank.

    Epoch e visits the items in the order of ``torch.randperm`` drawn from a generator seeded
    with (seed, e); step s of the epoch takes places [s·B, (s+1)·B) of that order (B the global
    batch), repeating the order when the set holds fewer than B items. An epoch has
    max(1, N // B) steps: the remainder is dropped, as DataLoader(drop_last=True) does. Rank r
    of W takes the r-th of the W consecutive equal shares of each global batch.
    """

    num_items: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_items // self.global_batch)

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_items, generator=generator).tolist()
        needed = self.steps_per_epoch * self.global_batch
        return (order * math.ceil(needed / self.num_items))[:needed]

    def rank_batch(self, order: list[int], step_in_epoch: int) -> list[int]:
        per_rank = self.global_batch // self.world_size
        start = step_in_epoch * self.global_batch + self.rank * per_rank
        return order[start : start + per_rank]


class PlanSampler(Sampler[list[tuple[int, int]]]):
    """Endless batch sampler: yields [(epoch, item), ...] from (epoch, step) onwards."""

    def __init__(self, plan: BatchPlan, epoch: int, step_in_epoch: int) -> None:
        self.plan, self.epoch, self.step_in_epoch = plan, epoch, step_in_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.step_in_epoch
        while True:
            order = self.plan.order(epoch)
            for step in range(start, self.plan.steps_per_epoch):
                yield [(epoch, item) for item in self.plan.rank_batch(order, step)]
            epoch, start = epoch + 1, 0


class EpochItems(Dataset):
    """Indexes a GoproDataset by (epoch, item), so worker processes see the right epoch."""

    def __init__(self, base: GoproDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, item = key
        self.base.set_epoch(epoch)
        return self.base[item]
