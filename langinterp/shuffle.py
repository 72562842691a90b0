"""Training order as a function of (seed, epoch) only, so a resumed run sees the batches an uninterrupted
run would have seen.

A DataLoader's own shuffling draws from a generator whose state lives in the process: a resumed run starts
it afresh and replays epoch 0's order. Lightning also creates the first epoch's iterator (and prefetches a
batch) before any epoch hook runs, so reseeding from a hook is too late. This sampler instead asks, when
iteration actually begins, which epoch it is serving, and seeds its permutation from that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a function of the recipe's seed and the epoch number only."""
    return (seed * 1_000_003 + epoch) % (2**32)


class EpochShuffle(Sampler[int]):
    """A random permutation of `range(size)` seeded by `epoch_seed(seed, epoch())`, drawn lazily."""

    def __init__(self, size: int, seed: int, epoch: Callable[[], int]) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch()))
        yield from torch.randperm(self.size, generator=generator).tolist()


def epoch_shuffled(loader: DataLoader, seed: int, epoch: Callable[[], int]) -> DataLoader:
    """The same loader (dataset, batch size, collation, workers) with its order drawn by `EpochShuffle`."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=EpochShuffle(len(loader.dataset), seed, epoch),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )
