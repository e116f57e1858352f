"""The nearest-neighbour batch sampler: batch composition, determinism per (seed, epoch), disjoint DDP shards."""

import pytest
import torch

from plm_lightning.data import NearestNeighbourBatchSampler


def _table(n, k):
    # neighbour j of i is (i + j) mod n; the first column is the point itself
    return (torch.arange(n)[:, None] + torch.arange(k)[None, :]) % n


def test_batches_are_seeds_with_their_neighbours():
    sampler = NearestNeighbourBatchSampler(100, batch_size=20, neighbours_per_seed=5, seed=1)
    sampler.set_neighbours(_table(100, 7))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    seeds = []
    for batch in batches:
        assert len(batch) == 20
        for g in range(4):
            group = batch[5 * g : 5 * g + 5]
            assert group == [(group[0] + j) % 100 for j in range(5)]
            seeds.append(group[0])
    assert len(set(seeds)) == len(seeds)  # seeds drawn without replacement


def test_order_is_a_function_of_seed_and_epoch():
    a = NearestNeighbourBatchSampler(60, 12, 3, seed=0)
    b = NearestNeighbourBatchSampler(60, 12, 3, seed=0)
    for s in (a, b):
        s.set_neighbours(_table(60, 3))
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_ranks_get_disjoint_batches_of_one_global_order():
    full = NearestNeighbourBatchSampler(120, 12, 3, seed=4)
    full.set_neighbours(_table(120, 3))
    shards = []
    for rank in range(2):
        s = NearestNeighbourBatchSampler(120, 12, 3, seed=4, rank=rank, world_size=2)
        s.set_neighbours(_table(120, 3))
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == 5
    assert shards[0] == list(full)[0::2] and shards[1] == list(full)[1::2]


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        NearestNeighbourBatchSampler(100, 10, 3)
    s = NearestNeighbourBatchSampler(100, 10, 5)
    with pytest.raises(RuntimeError, match="set_neighbours"):
        list(s)
