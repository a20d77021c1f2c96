"""Sampling of the training set: a seeded per-epoch order sharded across ranks, and rank shards of evaluation sets."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """A random permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``, sharded across ranks.

    It draws from its own ``torch.Generator`` seeded with ``seed + epoch``, never from the global RNG, so a run
    resumed at epoch ``e`` sees the same order as the original run. Lightning calls :meth:`set_epoch` at the
    start of every epoch. With ``num_replicas`` = W processes, rank k takes positions k, k + W, k + 2W, ... of
    that one permutation (padded by wrapping around to a multiple of W), so a step of W ranks × batch b sees
    exactly the samples a single process sees with batch W·b. Being a ``DistributedSampler``, Lightning uses it
    as it is instead of wrapping it in a second, differently shuffled one.
    """

    def __init__(self, num_samples: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_samples_total = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.num_samples = -(-num_samples // num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas
        self.shuffle, self.drop_last = True, False  # DistributedSampler's attributes, read by Lightning

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples_total, generator=generator).tolist()
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def rank_shard(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """``loader`` over positions ``rank``, ``rank + world_size``, … of its dataset, in order and unpadded.

    Every sample is seen by exactly one rank, so sum-reduced metrics (torchmetrics' ``MeanMetric``) synced over the
    ranks equal one process over the whole dataset. The loader itself when ``world_size`` is 1.
    """
    if world_size == 1:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=range(rank, len(loader.dataset), world_size),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        generator=loader.generator,
    )
