"""The training order: a seeded per-epoch permutation sharded over ranks, and unpadded rank shards for evaluation."""

from __future__ import annotations

import pytest
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


def test_resumable_loader_counts_batches_and_resumes_after_them():
    from svdlora_pl.training.sampling import ResumableDataLoader

    dataset = list(range(10))
    loader = ResumableDataLoader(dataset, batch_size=3, sampler=EpochShuffleSampler(10, seed=1))
    loader.sampler.set_epoch(2)
    whole = [batch.tolist() for batch in loader]
    iterator = iter(loader)
    taken = [next(iterator).tolist(), next(iterator).tolist()]
    assert taken == whole[:2] and loader.state_dict() == {"epoch": 2, "batches": 2}
    fresh = ResumableDataLoader(dataset, batch_size=3, sampler=EpochShuffleSampler(10, seed=1))
    fresh.load_state_dict(loader.state_dict())
    fresh.sampler.set_epoch(2)
    assert [batch.tolist() for batch in fresh] == whole[2:]  # the rest of the epoch, in order
    assert fresh.state_dict() == {"epoch": 2, "batches": 4}
    fresh.sampler.set_epoch(3)
    assert len([batch for batch in fresh]) == 4 and fresh.state_dict() == {"epoch": 3, "batches": 4}  # once only


def test_resume_skips_only_in_its_epoch_and_only_once():
    sampler = EpochShuffleSampler(8, seed=0, num_replicas=2, rank=1)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.resume(1, 2)
    assert list(sampler) == full[2:] and list(sampler) == full
    sampler.resume(0, 2)
    assert list(sampler) == full  # another epoch: nothing skipped
    with pytest.raises(ValueError):
        sampler.resume(-1, 0)
