"""The training order: a seeded per-epoch permutation sharded over ranks, and unpadded rank shards for evaluation."""

from __future__ import annotations

import torch

from svdlora_pl.training.sampling import EpochShuffleSampler, rank_shard


def test_epoch_shuffle_sampler_depends_only_on_seed_and_epoch():
    def order(seed, epoch, global_seed):
        torch.manual_seed(global_seed)
        sampler = EpochShuffleSampler(50, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 2, 0) == order(3, 2, 123)
    assert sorted(order(3, 2, 0)) == list(range(50))
    assert order(3, 2, 0) != order(3, 1, 0)
    assert order(3, 2, 0) != order(4, 2, 0)
    assert len(EpochShuffleSampler(50)) == 50


def test_rank_shard_splits_without_padding():
    from torch.utils.data import DataLoader

    loader = DataLoader(list(range(7)), batch_size=2, collate_fn=list)
    assert rank_shard(loader, 0, 1) is loader
    shards = [[x for batch in rank_shard(loader, rank, 3) for x in batch] for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]  # disjoint, in order, nothing repeated to even them out
    assert [len(batch) for batch in rank_shard(loader, 0, 3)] == [2, 1]
