"""evaluate_embeddings end to end: hand-computed example, brute force, duplicates, errors."""

import pytest
import torch
import torch.nn.functional as F
from oracle import orderings

from plm_lightning.retrieval import evaluate_embeddings, faiss_available, format_recall_table

BACKENDS = [
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss not installed")),
    "torch",
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_example(backend):
    # Points on a line (normalize=False keeps them there). Neighbours of each query:
    #   q0 x=0   L0: 1(L0) 2 3 4 5        R=2  hit@1      AP@R = (1/2)(1) = 1/2, R-prec 1/2
    #   q1 x=1   L0: 0(L0) 2 3 4 5        R=2  hit@1      AP@R = 1/2,            R-prec 1/2
    #   q2 x=3   L1: 1(L0) 0(L0) 3(L1)    R=1  hit@4 only AP@R = 0 (0 and 3 tie at distance 9:
    #                                          index 0 wins, otherwise R@2 would be a hit)
    #   q3 x=6   L1: 4(L0) 2(L1)          R=1  hit@2      AP@R = 0
    #   q4 x=6.5 L0: 3(L1) 2(L1) 1(L0)    R=2  hit@4 only AP@R = 0
    #   q5 x=20  L2: singleton            R=0  miss       excluded from MAP@R
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [6.5], [20.0]])
    labels = torch.tensor([0, 0, 1, 1, 0, 2])
    metrics = evaluate_embeddings(x, labels, ks=(1, 2, 4), normalize=False, backend=backend, compute_nmi=False)
    assert list(metrics) == ["R@1", "R@2", "R@4", "MAP@R", "R-precision"]
    assert metrics["R@1"] == pytest.approx(100 * 2 / 6)
    assert metrics["R@2"] == pytest.approx(100 * 3 / 6)
    assert metrics["R@4"] == pytest.approx(100 * 5 / 6)
    assert metrics["MAP@R"] == pytest.approx(100 * (0.5 + 0.5) / 5)
    assert metrics["R-precision"] == pytest.approx(100 * (0.5 + 0.5) / 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_of_another_class_is_the_first_neighbour(backend):
    # Item 2 is an exact copy of item 0 but belongs to another class. Item 0's first neighbour
    # is item 2 (distance 0) and vice versa: both are R@1 misses. Dropping "column 0" instead
    # of the query's own index would skip the copy and count two hits.
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    metrics = evaluate_embeddings(x, labels, ks=(1,), backend=backend, compute_nmi=False)
    # Hits: item 1 (nearest: item 0, same class), item 3 and item 4 (each other). Misses: 0, 2.
    assert metrics["R@1"] == pytest.approx(100 * 3 / 5)


def brute_force_evaluation(x, labels, ks):
    """Metrics by their textbook definitions (precision at each position of the top R), over the shared oracle's
    orderings: a second formula, independent of the ranks-of-positives one."""
    labels = labels.tolist()
    rankings = orderings(x, x, exclude_self=True)
    n = len(labels)
    recall = {
        f"R@{k}": 100.0 * sum(labels[i] in [labels[j] for j in rankings[i][:k]] for i in range(n)) / n for k in ks
    }
    aps, rps = [], []
    for i in range(n):
        r = labels.count(labels[i]) - 1
        if r == 0:
            continue
        rel = [labels[j] == labels[i] for j in rankings[i][:r]]
        hits, ap = 0, 0.0
        for pos, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                ap += hits / pos
        aps.append(ap / r)
        rps.append(hits / r)
    return {**recall, "MAP@R": 100 * sum(aps) / len(aps), "R-precision": 100 * sum(rps) / len(rps)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_against_brute_force(backend):
    gen = torch.Generator().manual_seed(0)
    # 30 classes of two, 15 singletons, 2 classes of five; classes are weakly clustered.
    labels = torch.cat([torch.arange(30).repeat(2), torch.arange(30, 45), torch.arange(45, 47).repeat(5)])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    centres = torch.randn(47, 6, generator=gen)
    x = centres[labels] + 0.8 * torch.randn(len(labels), 6, generator=gen)
    # A few exact duplicates across classes, and ties.
    x[5] = x[40]
    x[7] = x[8]
    ks = (1, 2, 4, 8)
    metrics = evaluate_embeddings(x, labels, ks, backend=backend, compute_nmi=False)
    expected = brute_force_evaluation(F.normalize(x.float(), dim=1), labels, ks)
    assert metrics == pytest.approx(expected, abs=1e-9)
    # Without normalisation the ranking (and the numbers) follow raw Euclidean distances.
    raw = evaluate_embeddings(x, labels, ks, normalize=False, backend=backend, compute_nmi=False)
    assert raw == pytest.approx(brute_force_evaluation(x, labels, ks), abs=1e-9)


def test_normalisation_and_dtype():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(10).repeat(3)
    x = torch.randn(30, 5, generator=gen)
    scales = torch.rand(30, 1, generator=gen) * 10 + 0.1
    base = evaluate_embeddings(x, labels, compute_nmi=False, backend="torch")
    # Per-item scaling does not change cosine ranking.
    assert evaluate_embeddings(x * scales, labels, compute_nmi=False, backend="torch") == base
    # Half-precision input is cast to float32 before normalising.
    half = evaluate_embeddings(x.half(), labels, compute_nmi=False, backend="torch")
    assert set(half) == set(base)


def test_optional_metrics_and_nmi():
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(4).repeat_interleave(10)
    x = torch.eye(4)[labels] + 0.05 * torch.randn(40, 4, generator=gen)
    only_recall = evaluate_embeddings(x, labels, ks=(1, 5), map_r=False, compute_nmi=False)
    assert list(only_recall) == ["R@1", "R@5"]
    full = evaluate_embeddings(x, labels, ks=(1, 5), seed=0)
    assert list(full) == ["R@1", "R@5", "MAP@R", "R-precision", "NMI"]
    # Well-separated classes: the rankings are perfect. (k-means with a single initialisation
    # may still merge two clusters, so NMI is only checked to be a percentage.)
    assert [full[key] for key in ("R@1", "R@5", "MAP@R", "R-precision")] == [100.0] * 4
    assert 0.0 < full["NMI"] <= 100.0


@pytest.mark.parametrize(
    ("embeddings", "labels", "ks", "message"),
    [
        (torch.randn(5, 3), torch.arange(4), (1,), "5 embeddings but labels"),
        (torch.randn(1, 3), torch.arange(1), (1,), "at least 2 items"),
        (torch.randn(5, 3), torch.arange(5), (1, 5), r"max\(ks\)=5 exceeds the n-1=4"),
        (torch.randn(5, 3), torch.arange(5), (), "non-empty"),
        (torch.randn(5), torch.arange(5), (1,), r"\[n, dim\]"),
    ],
)
def test_errors(embeddings, labels, ks, message):
    with pytest.raises(ValueError, match=message):
        evaluate_embeddings(embeddings, labels, ks)


def test_non_finite_embeddings():
    x = torch.randn(6, 3)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_embeddings(x, torch.arange(6) // 2, ks=(1,))


def test_format_recall_table():
    table = format_recall_table({"R@1": 61.234, "R@2": 7.0, "MAP@R": 100.0, "NMI": 5.5})
    header, row = table.splitlines()
    assert header.split() == ["R@1", "R@2", "MAP@R", "NMI"]
    assert row.split() == ["61.23", "7.00", "100.00", "5.50"]
    # Fixed width: each value ends under the end of its name.
    assert len(header) == len(row)
    assert header.index("MAP@R") + len("MAP@R") == row.index("100.00") + len("100.00")


def test_evaluate_split_follows_the_splits_protocol():
    """No query mask: same-set; a mask: its rows query the rest of the split (In-Shop), as the two functions do."""
    from plm_lightning.retrieval import evaluate_query_gallery, evaluate_split

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g)
    labels = torch.arange(40) % 8
    ks = [1, 2, 4]
    same_set = evaluate_split(x, labels, ks, compute_nmi=False).metrics
    assert same_set == evaluate_embeddings(x, labels, ks, compute_nmi=False)
    query = torch.arange(40) % 3 == 0
    expected = evaluate_query_gallery(x[query], labels[query], x[~query], labels[~query], ks, compute_nmi=False)
    got = evaluate_split(x, labels, ks, query_mask=query.numpy(), compute_nmi=False).metrics
    assert got == expected and got != evaluate_embeddings(x, labels, ks, compute_nmi=False)
