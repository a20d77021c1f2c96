"""Sampling of the training set: a seeded per-epoch order sharded across ranks that a run resumes mid-epoch, and
rank shards of evaluation sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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

    A run resumed from a mid-epoch checkpoint calls :meth:`resume` once: the next pass over that epoch starts after
    the positions the interrupted run already trained on, so the resumed run sees the same batches as an
    uninterrupted one (the length stays the whole epoch's: Lightning counts the batches already done itself).
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
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, positions: int) -> None:
        """Make the next pass over ``epoch`` skip this rank's first ``positions`` positions (once)."""
        if epoch < 0 or positions < 0:
            raise ValueError(f"cannot resume at epoch {epoch}, position {positions}")
        self._resume = (epoch, positions)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples_total, generator=generator).tolist()
        order += order[: self.total_size - len(order)]
        mine = order[self.rank :: self.num_replicas]
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            mine = mine[resume[1] :]
        return iter(mine)

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochShuffleSampler` that Lightning resumes mid-epoch exactly.

    It counts the batches it has handed out in the current epoch. Lightning stores :meth:`state_dict` in every
    checkpoint (the fit loop saves the state of loaders that have one) and gives it back to :meth:`load_state_dict`
    when a run resumes from that checkpoint, before the first batch: the sampler then skips the positions the
    interrupted run already trained on, so a run stopped after step n (a SIGTERM, a mid-epoch checkpoint) and resumed
    sees the batches an uninterrupted run sees, in the same order. Lightning fetches from a sized loader without
    prefetching, so the batches handed out are the batches trained on.
    """

    sampler: EpochShuffleSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochShuffleSampler):
            raise TypeError(f"ResumableDataLoader needs an EpochShuffleSampler, got {type(self.sampler).__name__}")
        self._position = (0, 0)  # (epoch, batches handed out in it)
        self._start: tuple[int, int] | None = None  # the position a checkpoint resumes from

    def __iter__(self) -> Iterator[Any]:
        taken = None
        for batch in super().__iter__():
            epoch = self.sampler.epoch  # read at the first batch: Lightning sets the epoch after calling iter()
            if taken is None:
                start, self._start = self._start, None
                taken = start[1] if start is not None and start[0] == epoch else 0
            taken += 1
            self._position = (epoch, taken)
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": n}``: this rank has handed out n batches of epoch e."""
        return {"epoch": self._position[0], "batches": self._position[1]}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume epoch e after its first n batches (see the class docstring)."""
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self.sampler.resume(epoch, batches * int(self.batch_size or 1))
        self._start = self._position = (epoch, batches)


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
