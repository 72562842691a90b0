"""Training order as a function of (seed, epoch) only, so a resumed run sees the batches an uninterrupted
run would have seen, even when it stopped in the middle of an epoch.

A DataLoader's own shuffling draws from a generator whose state lives in the process: a resumed run starts
it afresh and replays epoch 0's order. Lightning also creates the first epoch's iterator (and prefetches a
batch) before any epoch hook runs, so reseeding from a hook is too late. This sampler instead asks, when
iteration actually begins, which epoch it is serving, and seeds its permutation from that. It also asks how
many batches of that epoch were already trained (non-zero only when a run resumes mid-epoch: Lightning
restores its batch count but starts the loader from the beginning) and skips them, so the epoch goes on
where it stopped.

It is a DistributedSampler, so Lightning does not wrap it for DDP: it splits the permutation between ranks
itself, padded as DistributedSampler pads, before skipping, so that every rank skips its own batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a function of the recipe's seed and the epoch number only."""
    return (seed * 1_000_003 + epoch) % (2**32)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of one training batch: a function of the recipe's seed, the epoch and the batch index."""
    return (epoch_seed(seed, epoch) * 1_000_033 + batch) % (2**32)


class EpochShuffle(DistributedSampler):
    """This rank's share of a random permutation seeded by `epoch_seed(seed, epoch())`, drawn lazily, less
    the first `done()` batches of `batch_size` (see the module docstring)."""

    def __init__(
        self,
        dataset: Sized,
        seed: int,
        epoch: Callable[[], int],
        batch_size: int,
        done: Callable[[], int],
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=False,
        )
        self.seed = seed
        self.serving = epoch
        self.batch_size = batch_size
        self.done = done

    @property
    def batches(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(self.num_samples / self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(len(self.dataset), generator=generator)  # type: ignore[arg-type]

    def first(self, epoch: int) -> int | None:
        """The dataset index this rank's share of `epoch` starts with (None when there is no data)."""
        order = self._order(epoch)
        return int(order[self.rank % len(order)]) if len(order) else None

    def __iter__(self) -> Iterator[int]:
        order = self._order(self.serving()).tolist()
        if order:  # padded as DistributedSampler pads, so that every rank gets as many
            order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]
        mine = order[self.rank : self.total_size : self.num_replicas]
        done = self.done()
        yield from mine[done * self.batch_size :] if 0 < done < self.batches else mine


def epoch_shuffled(
    loader: DataLoader, seed: int, epoch: Callable[[], int], done: Callable[[], int]
) -> DataLoader:
    """The same loader (dataset, batch size, collation, workers) with its order drawn by `EpochShuffle`."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=EpochShuffle(loader.dataset, seed, epoch, loader.batch_size or 1, done),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )
