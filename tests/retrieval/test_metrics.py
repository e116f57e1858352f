"""Ranking metrics against hand-computed values and brute-force loops; NMI sanity checks."""

import math

import pytest
import torch

from plm_lightning.retrieval import faiss_available, map_at_r, nmi, r_precision, recall_at_k
from plm_lightning.retrieval import metrics as metrics_module


def hand_example():
    # Four queries with ranked neighbour labels; R = number of same-class gallery items.
    query_labels = torch.tensor([0, 1, 2, 3])
    neighbour_labels = torch.tensor(
        [
            [1, 0, 0, 1],  # R=2: rel(1..2) = 0,1 -> AP@R = (1/2)(1/2) = 1/4; R-prec 1/2
            [1, 1, 0, 0],  # R=2: rel = 1,1      -> AP@R = (1/2)(1 + 1) = 1; R-prec 1
            [0, 2, 2, 2],  # R=3: rel = 0,1,1    -> AP@R = (1/3)(1/2 + 2/3) = 7/18; R-prec 2/3
            [0, 1, 2, 0],  # R=0 (singleton class): a miss for R@K, excluded from MAP@R
        ]
    )
    num_positives = torch.tensor([2, 2, 3, 0])
    return neighbour_labels, query_labels, num_positives


def test_hand_computed_example():
    neighbour_labels, query_labels, num_positives = hand_example()
    recall = recall_at_k(neighbour_labels, query_labels, [1, 2, 4])
    # R@1: only query 1 hits. R@2 and R@4: queries 0, 1, 2 hit; query 3 never can.
    assert recall == pytest.approx({1: 25.0, 2: 75.0, 4: 75.0})
    # MAP@R = (1/4 + 1 + 7/18) / 3 = 59/108; R-precision = (1/2 + 1 + 2/3) / 3 = 13/18.
    assert map_at_r(neighbour_labels, query_labels, num_positives) == pytest.approx(100 * 59 / 108)
    assert r_precision(neighbour_labels, query_labels, num_positives) == pytest.approx(100 * 13 / 18)


def brute_force_metrics(neighbour_labels, query_labels, num_positives, ks):
    nl, ql, rs = neighbour_labels.tolist(), query_labels.tolist(), num_positives.tolist()
    recall = {k: 100.0 * sum(ql[q] in nl[q][:k] for q in range(len(ql))) / len(ql) for k in ks}
    aps, rps = [], []
    for q in range(len(ql)):
        r = rs[q]
        if r == 0:
            continue
        hits, ap = 0, 0.0
        for i in range(r):
            if nl[q][i] == ql[q]:
                hits += 1
                ap += hits / (i + 1)
        aps.append(ap / r)
        rps.append(hits / r)
    return recall, 100.0 * sum(aps) / len(aps), 100.0 * sum(rps) / len(rps)


def test_against_brute_force_on_random_rankings():
    gen = torch.Generator().manual_seed(0)
    # 40 classes of two, 10 singletons, 3 classes of six.
    labels = torch.cat([torch.arange(40).repeat(2), torch.arange(40, 50), torch.arange(50, 53).repeat(6)])
    n = len(labels)
    num_positives = torch.bincount(labels)[labels] - 1
    # Each query ranks all other items in a random order (self removed).
    orders = [torch.randperm(n, generator=gen).tolist() for _ in range(n)]
    neighbours = torch.tensor([[j for j in order if j != q] for q, order in enumerate(orders)])
    neighbour_labels = labels[neighbours]
    ks = [1, 2, 4, 8, 16]
    recall, ref_map, ref_rp = brute_force_metrics(neighbour_labels, labels, num_positives, ks)
    assert recall_at_k(neighbour_labels, labels, ks) == pytest.approx(recall, abs=1e-9)
    assert map_at_r(neighbour_labels, labels, num_positives) == pytest.approx(ref_map, abs=1e-9)
    assert r_precision(neighbour_labels, labels, num_positives) == pytest.approx(ref_rp, abs=1e-9)
    # Only max(R) columns are needed.
    short = neighbour_labels[:, : int(num_positives.max())]
    assert map_at_r(short, labels, num_positives) == pytest.approx(ref_map, abs=1e-9)


def test_perfect_and_worst_rankings():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    num_positives = torch.full((6,), 2)
    perfect = torch.tensor([[l, l, 1 - l, 1 - l, 1 - l] for l in labels.tolist()])
    worst = torch.tensor([[1 - l, 1 - l, 1 - l, l, l] for l in labels.tolist()])
    assert map_at_r(perfect, labels, num_positives) == pytest.approx(100.0)
    assert r_precision(perfect, labels, num_positives) == pytest.approx(100.0)
    assert map_at_r(worst, labels, num_positives) == 0.0
    assert recall_at_k(worst, labels, [1, 3, 4]) == {1: 0.0, 3: 0.0, 4: 100.0}


def test_all_singletons_give_nan():
    labels = torch.arange(4)
    neighbour_labels = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    zeros = torch.zeros(4, dtype=torch.long)
    assert math.isnan(map_at_r(neighbour_labels, labels, zeros))
    assert math.isnan(r_precision(neighbour_labels, labels, zeros))
    assert recall_at_k(neighbour_labels, labels, [3]) == {3: 0.0}


def test_metric_errors():
    neighbour_labels, query_labels, num_positives = hand_example()
    with pytest.raises(ValueError, match="K=5 is outside"):
        recall_at_k(neighbour_labels, query_labels, [1, 5])
    with pytest.raises(ValueError, match="empty"):
        recall_at_k(neighbour_labels, query_labels, [])
    with pytest.raises(ValueError, match="rows of neighbour labels"):
        recall_at_k(neighbour_labels, query_labels[:3], [1])
    with pytest.raises(ValueError, match="R=3"):
        map_at_r(neighbour_labels[:, :2], query_labels, num_positives)
    with pytest.raises(ValueError, match="num_positives must have shape"):
        r_precision(neighbour_labels, query_labels, num_positives[:2])
    with pytest.raises(ValueError, match="non-negative"):
        map_at_r(neighbour_labels, query_labels, torch.tensor([2, 2, 3, -1]))


def blobs(seed=0):
    # Three tight, far-apart clusters.
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(20)
    return centres[labels] + 0.1 * torch.randn(60, 2, generator=gen), labels


@pytest.mark.parametrize(
    "use_faiss",
    [
        pytest.param(True, marks=pytest.mark.skipif(not faiss_available(), reason="no faiss")),
        False,
    ],
)
def test_nmi(monkeypatch, use_faiss):
    if not use_faiss:
        monkeypatch.setattr(metrics_module, "faiss", None)
    x, labels = blobs()
    assert nmi(x, labels, seed=0) == pytest.approx(100.0)
    # Label names do not matter, only the partition.
    assert nmi(x, labels * 7 + 3, seed=0) == pytest.approx(100.0)
    # Random embeddings: a value in range, the same for the same seed.
    noise = torch.randn(60, 4, generator=torch.Generator().manual_seed(1))
    value = nmi(noise, labels, seed=3)
    assert 0.0 <= value < 100.0
    assert nmi(noise, labels, seed=3) == value


def test_nmi_errors():
    with pytest.raises(ValueError, match="labels"):
        nmi(torch.randn(5, 2), torch.zeros(4, dtype=torch.long))
