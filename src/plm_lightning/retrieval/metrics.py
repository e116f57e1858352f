"""Retrieval and clustering metrics (docs/protocols.md). All values are percentages (0..100).

The ranking metrics take the labels of each query's ranked neighbours (self already removed), so
they are independent of how the neighbours were found.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

try:
    import faiss
except ImportError:  # optional: k-means falls back to scikit-learn
    faiss = None  # type: ignore[assignment]

__all__ = ["recall_at_k", "map_at_r", "r_precision", "nmi"]


def recall_at_k(neighbour_labels: torch.Tensor, query_labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K as used in metric learning: the hit rate.

    The percentage of queries with at least one same-class item among their first K neighbours
    (not information-retrieval recall). Queries without any same-class item count as misses.
    ``neighbour_labels`` is ``[nq, >= max(ks)]``, ranked nearest first.
    """
    matches = _matches(neighbour_labels, query_labels)
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks must not be empty")
    for k in ks:
        if not 1 <= k <= matches.shape[1]:
            raise ValueError(f"K={k} is outside 1..{matches.shape[1]} (the number of neighbour columns)")
    # first_hit[q] = rank (0-based) of the first same-class neighbour, or num_columns if none.
    num_columns = matches.shape[1]
    ranks = torch.arange(num_columns, device=matches.device).expand_as(matches)
    first_hit = torch.where(matches, ranks, num_columns).min(dim=1).values
    return _recall_from_first_hit(first_hit, ks)


def map_at_r(neighbour_labels: torch.Tensor, query_labels: torch.Tensor, num_positives: torch.Tensor) -> float:
    """MAP@R (Musgrave et al., ECCV 2020).

    For query q with R = ``num_positives[q]`` same-class gallery items (self excluded):
    ``MAP@R_q = (1/R) * sum_{i=1..R} P(i) * rel(i)`` over its first R neighbours, where P(i) is the
    precision among the first i. Averaged over queries with R >= 1 (NaN if there are none).
    ``neighbour_labels`` needs at least ``max(R)`` columns.
    """
    rel, within_r, r = _first_r_relevance(neighbour_labels, query_labels, num_positives)
    if rel is None:
        return float("nan")
    return _map_at_r_from_relevance(rel, within_r, r)


def r_precision(neighbour_labels: torch.Tensor, query_labels: torch.Tensor, num_positives: torch.Tensor) -> float:
    """R-precision: the fraction of same-class items among the first R neighbours.

    R = ``num_positives[q]``; averaged over queries with R >= 1 (NaN if there are none).
    """
    rel, within_r, r = _first_r_relevance(neighbour_labels, query_labels, num_positives)
    if rel is None:
        return float("nan")
    return _r_precision_from_relevance(rel, within_r, r)


KMEANS_BACKENDS = ("auto", "faiss", "torch")


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, kmeans: str = "auto") -> float:
    """Normalised mutual information between k-means clusters and the labels.

    k-means uses as many clusters as distinct labels, 25 iterations, the given seed: ``kmeans="torch"`` runs
    :func:`.kmeans.kmeans` on the embeddings' device; ``"faiss"`` runs ``faiss.Kmeans`` on the CPU (scikit-learn's
    ``KMeans(n_init=1)`` when faiss is not installed); ``"auto"``: torch for embeddings on a GPU, faiss otherwise.
    """
    if kmeans not in KMEANS_BACKENDS:
        raise ValueError(f"unknown k-means backend {kmeans!r}; choose one of {', '.join(KMEANS_BACKENDS)}")
    if embeddings.dim() != 2 or labels.dim() != 1 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(
            f"need embeddings [n, d] and labels [n]; got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    if embeddings.shape[0] == 0:
        raise ValueError("nmi needs at least one item")
    y = labels.detach().cpu().numpy()
    num_clusters = len(np.unique(y))
    if kmeans == "torch" or (kmeans == "auto" and embeddings.device.type != "cpu"):
        from plm_lightning.retrieval.kmeans import kmeans as torch_kmeans

        assignment = torch_kmeans(embeddings, num_clusters, niter=25, seed=seed)[1].cpu().numpy()
        return 100.0 * float(normalized_mutual_info_score(y, assignment))
    x = np.ascontiguousarray(embeddings.detach().float().cpu().numpy(), dtype=np.float32)
    if faiss is not None:
        faiss_kmeans = faiss.Kmeans(
            x.shape[1],
            num_clusters,
            niter=25,
            seed=seed,
            verbose=False,
            # Use every point (no subsampling) and skip faiss's "too few points" warning: the
            # number of clusters is fixed by the protocol, not by the data size.
            min_points_per_centroid=1,
            max_points_per_centroid=max(1, -(-x.shape[0] // num_clusters)),
        )
        faiss_kmeans.train(x)
        _, assignment = faiss_kmeans.index.search(x, 1)
        assignment = assignment[:, 0]
    else:
        from sklearn.cluster import KMeans

        assignment = KMeans(n_clusters=num_clusters, n_init=1, random_state=seed).fit_predict(x)
    return 100.0 * float(normalized_mutual_info_score(y, assignment))


# --------------------------------------------------------------------------------------------


def _matches(neighbour_labels: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
    """Boolean ``[nq, m]``: neighbour j of query q has the query's label."""
    if neighbour_labels.dim() != 2 or query_labels.dim() != 1:
        raise ValueError(
            f"need neighbour_labels [nq, m] and query_labels [nq]; got "
            f"{tuple(neighbour_labels.shape)} and {tuple(query_labels.shape)}"
        )
    if neighbour_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(f"{neighbour_labels.shape[0]} rows of neighbour labels for {query_labels.shape[0]} queries")
    if neighbour_labels.shape[0] == 0:
        raise ValueError("no queries")
    return neighbour_labels == query_labels.to(neighbour_labels.device).unsqueeze(1)


def _map_at_r_from_relevance(rel: torch.Tensor, within_r: torch.Tensor, r: torch.Tensor) -> float:
    """MAP@R from ``rel [n, maxR]`` (position i holds a positive), ``within_r`` (i < R), R.

    Shared by the search and rank engines so that both give bit-identical numbers.
    """
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
    precision_at_i = rel.double().cumsum(dim=1) / ranks
    per_query = (precision_at_i * (rel & within_r)).sum(dim=1) / r
    return 100.0 * per_query.mean().item()


def _r_precision_from_relevance(rel: torch.Tensor, within_r: torch.Tensor, r: torch.Tensor) -> float:
    """R-precision from the same inputs as :func:`_map_at_r_from_relevance`."""
    per_query = (rel & within_r).sum(dim=1).double() / r
    return 100.0 * per_query.mean().item()


def _recall_from_first_hit(first_hit: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Hit rate per K from the 0-based rank of each query's first positive (large = none)."""
    return {k: 100.0 * (first_hit < k).double().mean().item() for k in ks}


def _first_r_relevance(
    neighbour_labels: torch.Tensor, query_labels: torch.Tensor, num_positives: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Relevance of the first max(R) neighbours, restricted to queries with R >= 1.

    Returns ``(rel [n, maxR] bool, within_r [n, maxR] bool (rank < R), R [n] float64)``, or
    ``rel = None`` if no query has a positive.
    """
    matches = _matches(neighbour_labels, query_labels)
    r = torch.as_tensor(num_positives, device=matches.device).long()
    if r.shape != (matches.shape[0],):
        raise ValueError(f"num_positives must have shape ({matches.shape[0]},), got {tuple(r.shape)}")
    if bool((r < 0).any()):
        raise ValueError("num_positives must be non-negative")
    keep = r > 0
    if not bool(keep.any()):
        return None, r, r
    matches, r = matches[keep], r[keep]
    max_r = int(r.max())
    if max_r > matches.shape[1]:
        raise ValueError(
            f"neighbour_labels has {matches.shape[1]} columns but a query has R={max_r} "
            f"positives: search at least max(R) neighbours"
        )
    rel = matches[:, :max_r]
    within_r = torch.arange(max_r, device=r.device).unsqueeze(0) < r.unsqueeze(1)
    return rel, within_r, r.double()
