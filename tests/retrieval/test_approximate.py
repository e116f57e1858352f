"""Approximate neighbour tables (data.sampler.index = hnsw | ivf) against the exact one."""

import pytest
import torch

from plm_lightning.data.sampler import neighbour_table
from plm_lightning.retrieval.approximate import approximate_neighbours, table_recall


def _clustered(n=3000, d=32, classes=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    x = centres[torch.arange(n) % classes] + 0.3 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_recall_against_the_exact_table(index):
    x = _clustered()
    exact = neighbour_table(x, 5)
    approx = neighbour_table(x, 5, index=index)
    assert approx.shape == exact.shape
    assert torch.equal(approx[:, 0], torch.arange(x.shape[0]))  # the point itself first
    assert (approx[:, 1:] != torch.arange(x.shape[0]).unsqueeze(1)).all()  # and nowhere else
    assert table_recall(approx[:, 1:], exact[:, 1:]) >= 0.9


def test_table_recall_counts_shared_neighbours_ignoring_order():
    exact = torch.tensor([[1, 2], [0, 2]])
    assert table_recall(torch.tensor([[2, 1], [0, 1]]), exact) == pytest.approx(0.75)


def test_duplicates_and_tiny_sets_still_give_k_other_points():
    x = torch.cat([torch.ones(6, 4), torch.zeros(6, 4)])  # two groups of identical points
    for index in ("hnsw", "ivf"):
        table = approximate_neighbours(x, 3, index=index)
        assert table.shape == (12, 3)
        assert (table != torch.arange(12).unsqueeze(1)).all()
        assert (table[:6] < 6).all() and (table[6:] >= 6).all()  # the identical points are each other's nearest


def test_bad_requests_are_refused():
    x = _clustered(n=20)
    with pytest.raises(ValueError, match="unknown approximate index"):
        approximate_neighbours(x, 3, index="lsh")
    with pytest.raises(ValueError, match="20 neighbours asked of 20 points"):
        approximate_neighbours(x, 20, index="hnsw")
