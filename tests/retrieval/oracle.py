"""The retrieval tests' one brute-force oracle: Python loops over the documented ordering.

Distance: the float64 sum of squared differences of the float32 inputs, accumulated in index order and rounded to
float32; ties by gallery index; in same-set mode the query itself is removed by index. Slow on purpose: nothing of
the engines under test (GEMMs, faiss, tiling) is used.
"""

import math

import numpy as np
import torch


def scored_orderings(query, gallery, exclude_self=False):
    """Per query, [(distance, gallery index), ...] over the whole gallery, sorted."""
    q_rows = query.float().double().tolist()
    g_rows = gallery.float().double().tolist()
    result = []
    for i, q in enumerate(q_rows):
        scored = []
        for j, g in enumerate(g_rows):
            if exclude_self and i == j:
                continue
            acc = 0.0
            for a, b in zip(q, g):
                acc += (b - a) * (b - a)
            scored.append((float(np.float32(acc)), j))
        scored.sort()
        result.append(scored)
    return result


def orderings(query, gallery, exclude_self=False):
    """Per query, all gallery indices in the documented order."""
    return [[j for _, j in scored] for scored in scored_orderings(query, gallery, exclude_self)]


def brute_force_knn(query, gallery, k, exclude_self=False):
    """The k nearest gallery items of each query: (float32 distances, int64 indices), N x k."""
    scored = [s[:k] for s in scored_orderings(query, gallery, exclude_self)]
    return (
        torch.tensor([[d for d, _ in s] for s in scored], dtype=torch.float32),
        torch.tensor([[j for _, j in s] for s in scored], dtype=torch.int64),
    )


def oracle_ranks(query, q_labels, gallery, g_labels, exclude_self):
    """Sorted ranks of each query's positives in its full ordering."""
    q_labels, g_labels = q_labels.tolist(), g_labels.tolist()
    return [
        [pos for pos, j in enumerate(order) if g_labels[j] == q_labels[i]]
        for i, order in enumerate(orderings(query, gallery, exclude_self))
    ]


def oracle_metrics(query, q_labels, gallery, g_labels, ks, exclude_self):
    """Recall@K, MAP@R and R-precision from the ranks of the positives."""
    ranks = oracle_ranks(query, q_labels, gallery, g_labels, exclude_self)
    n = len(ranks)
    metrics = {f"R@{k}": 100.0 * sum(bool(r) and r[0] < k for r in ranks) / n for k in ks}
    aps, rps = [], []
    for r in ranks:
        big_r = len(r)
        if big_r == 0:
            continue
        inside = [(j, rank) for j, rank in enumerate(r) if rank < big_r]
        aps.append(sum((j + 1) / (rank + 1) for j, rank in inside) / big_r)
        rps.append(len(inside) / big_r)
    metrics["MAP@R"] = 100 * sum(aps) / len(aps) if aps else math.nan
    metrics["R-precision"] = 100 * sum(rps) / len(rps) if rps else math.nan
    return metrics
