"""Zero-shot retrieval evaluation of a set of embeddings (PROTOCOLS §1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .metrics import map_at_r, nmi, r_precision, recall_at_k
from .search import knn_search

__all__ = ["evaluate_embeddings", "format_recall_table"]


def evaluate_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    normalize: bool = True,
    backend: str = "auto",
    map_r: bool = True,
    compute_nmi: bool = True,
    seed: int = 0,
    memory_budget_mb: float = 256.0,
) -> dict[str, float]:
    """Same-set retrieval metrics: every item queries all *other* items (self removed by index).

    Embeddings are cast to float32 and, with ``normalize=True``, L2-normalised (Euclidean ranking
    on unit vectors = cosine ranking). Neighbours are ordered by (distance, index). One exact
    search of depth ``max(max(ks), max R)`` serves all metrics.

    Returns percentages ``{"R@1": .., "R@2": .., ..., "MAP@R": .., "R-precision": .., "NMI": ..}``
    (MAP@R and R-precision only if ``map_r``; NMI only if ``compute_nmi``).

    A query whose class has a single item has no correct answer: it counts as a miss for every
    R@K and is excluded from MAP@R and R-precision (R = 0); those two are NaN if every class is a
    singleton.

    Raises:
        ValueError: embeddings/labels length mismatch, non-finite embeddings, fewer than 2 items,
            bad ``ks``, or ``max(ks) > n - 1``.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [n, dim], got shape {tuple(embeddings.shape)}")
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"{embeddings.shape[0]} embeddings but labels of shape {tuple(labels.shape)}"
        )
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 items, got {n}")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")
    if max(ks) > n - 1:
        raise ValueError(f"max(ks)={max(ks)} exceeds the n-1={n - 1} other items per query")

    # Cast before normalising: half-precision norms are inaccurate.
    embeddings = embeddings.detach().float()
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings contain NaN or inf")
    if normalize:
        embeddings = F.normalize(embeddings, p=2, dim=1)

    # Same-class items other than the query itself.
    _, class_of, class_size = torch.unique(labels, return_inverse=True, return_counts=True)
    num_positives = class_size[class_of] - 1

    depth = max(ks)
    if map_r:
        depth = max(depth, min(int(num_positives.max()), n - 1))
    _, neighbours = knn_search(
        embeddings,
        embeddings,
        depth,
        exclude_self=True,
        backend=backend,
        memory_budget_mb=memory_budget_mb,
    )
    neighbour_labels = labels[neighbours]

    metrics = {f"R@{k}": v for k, v in recall_at_k(neighbour_labels, labels, ks).items()}
    if map_r:
        metrics["MAP@R"] = map_at_r(neighbour_labels, labels, num_positives)
        metrics["R-precision"] = r_precision(neighbour_labels, labels, num_positives)
    if compute_nmi:
        metrics["NMI"] = nmi(embeddings, labels, seed=seed)
    return metrics


def format_recall_table(metrics: dict[str, float]) -> str:
    """A two-line fixed-width table of the metrics (names, then values with two decimals).

    >>> print(format_recall_table({"R@1": 61.234, "MAP@R": 20.0}))
      R@1  MAP@R
    61.23  20.00
    """
    names = list(metrics)
    values = [f"{float(metrics[name]):.2f}" for name in names]
    widths = [max(len(name), len(value)) for name, value in zip(names, values)]
    header = "  ".join(name.rjust(w) for name, w in zip(names, widths))
    row = "  ".join(value.rjust(w) for value, w in zip(values, widths))
    return f"{header}\n{row}"
