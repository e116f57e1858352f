"""Zero-shot retrieval evaluation of a set of embeddings (docs/protocols.md).

Two exact engines give identical numbers:

* ``"ranks"`` (default): counts, for every query, how many gallery items come before each of its
  positives (:mod:`.ranks`); no top-k lists. Plain torch GEMM tiles (CPU or CUDA), symmetric
  tiles computed once in same-set mode.
* ``"search"``: one exact k-nearest-neighbour search (:func:`.search.knn_search`, faiss or torch)
  of depth ``max(max(ks), max R)``, then the metrics from the neighbour labels.

``engine="auto"`` uses ``"ranks"``, except that an explicit ``backend="faiss"`` selects the
faiss search. Both order neighbours by (canonical float32 distance, gallery index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .metrics import (
    _map_at_r_from_relevance,
    _r_precision_from_relevance,
    _recall_from_first_hit,
    map_at_r,
    nmi,
    r_precision,
    recall_at_k,
)
from .ranks import PositiveRanks, positive_ranks
from .result import RetrievalResult
from .search import _resolve_backend, knn_search

__all__ = ["evaluate_embeddings", "evaluate_query_gallery", "evaluate_split", "format_recall_table"]

_ENGINES = ("auto", "ranks", "search")


def evaluate_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    normalize: bool = True,
    backend: str = "auto",
    map_r: bool = True,
    compute_nmi: bool = True,
    kmeans: str = "auto",
    seed: int = 0,
    memory_budget_mb: float = 256.0,
    engine: str = "auto",
) -> dict[str, float]:
    """Same-set retrieval metrics: every item queries all *other* items (self removed by index).

    Embeddings are cast to float32 and, with ``normalize=True``, L2-normalised (Euclidean ranking
    on unit vectors = cosine ranking). Neighbours are ordered by (distance, index).

    Returns percentages ``{"R@1": .., "R@2": .., ..., "MAP@R": .., "R-precision": .., "NMI": ..}``
    (MAP@R and R-precision only if ``map_r``; NMI only if ``compute_nmi``, its k-means by ``kmeans``: see
    :func:`.metrics.nmi`).

    A query whose class has a single item has no correct answer: it counts as a miss for every
    R@K and is excluded from MAP@R and R-precision (R = 0); those two are NaN if every class is a
    singleton.

    ``engine``: ``"ranks"`` (rank counting, torch), ``"search"`` (top-k search with ``backend``)
    or ``"auto"`` (``"ranks"`` unless ``backend="faiss"``). Same numbers either way.
    ``memory_budget_mb`` bounds the intermediate tiles of either engine.

    Raises:
        ValueError: embeddings/labels length mismatch, non-finite embeddings, fewer than 2 items,
            bad ``ks``, ``max(ks) > n - 1``, unknown engine or backend.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [n, dim], got shape {tuple(embeddings.shape)}")
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but labels of shape {tuple(labels.shape)}")
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 items, got {n}")
    ks = _check_ks(ks, n - 1, "the n-1={} other items per query")
    engine = _resolve_engine(engine, backend, memory_budget_mb)
    embeddings = _prepare(embeddings, normalize, "embeddings")

    if engine == "ranks":
        ranks = positive_ranks(
            embeddings,
            labels.to(embeddings.device),
            best_limit=max(ks),
            all_positives=map_r,
            memory_budget_mb=memory_budget_mb,
        )
        metrics = _metrics_from_ranks(ranks, ks, map_r)
    else:
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
        metrics = _metrics_from_neighbours(labels[neighbours], labels, num_positives, ks, map_r)
    if compute_nmi:
        metrics["NMI"] = nmi(embeddings, labels, seed=seed, kmeans=kmeans)
    return metrics


def evaluate_query_gallery(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 10, 20, 30, 40, 50),
    *,
    normalize: bool = True,
    backend: str = "auto",
    map_r: bool = True,
    compute_nmi: bool = True,
    kmeans: str = "auto",
    seed: int = 0,
    memory_budget_mb: float = 256.0,
    engine: str = "auto",
) -> dict[str, float]:
    """Retrieval metrics with separate query and gallery sets (In-Shop protocol).

    Every query ranks the whole gallery (nothing is removed: the sets are distinct images); its
    positives are the gallery items with its label, R = their number. A query with no positive
    in the gallery is a miss for every R@K and is excluded from MAP@R and R-precision. NMI is
    computed over the query set. Same conventions, options and return keys as
    :func:`evaluate_embeddings`.

    Raises:
        ValueError: shape or length mismatches, empty sets, non-finite embeddings, bad ``ks``,
            ``max(ks)`` larger than the gallery, unknown engine or backend.
    """
    for name, x in (("query", query), ("gallery", gallery)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError(f"{name} embeddings must be a [n, dim] tensor")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs {gallery.shape[1]}")
    if query.device != gallery.device:
        raise ValueError(f"query is on {query.device} but gallery is on {gallery.device}")
    query_labels = torch.as_tensor(query_labels).detach().cpu()
    gallery_labels = torch.as_tensor(gallery_labels).detach().cpu()
    for name, x, lab in (("query", query, query_labels), ("gallery", gallery, gallery_labels)):
        if lab.dim() != 1 or lab.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} {name} embeddings but labels of shape {tuple(lab.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"the {name} set is empty")
    # One label dtype for both sets (searchsorted and comparisons need it).
    common = torch.promote_types(query_labels.dtype, gallery_labels.dtype)
    query_labels, gallery_labels = query_labels.to(common), gallery_labels.to(common)
    ks = _check_ks(ks, gallery.shape[0], "the {} gallery items")
    engine = _resolve_engine(engine, backend, memory_budget_mb)
    query = _prepare(query, normalize, "query embeddings")
    gallery = _prepare(gallery, normalize, "gallery embeddings")

    if engine == "ranks":
        ranks = positive_ranks(
            query,
            query_labels.to(query.device),
            gallery,
            gallery_labels.to(gallery.device),
            best_limit=max(ks),
            all_positives=map_r,
            memory_budget_mb=memory_budget_mb,
        )
        metrics = _metrics_from_ranks(ranks, ks, map_r)
    else:
        uniq, counts = torch.unique(gallery_labels, return_counts=True)
        pos = torch.searchsorted(uniq, query_labels).clamp(max=uniq.shape[0] - 1)
        num_positives = torch.where(uniq[pos] == query_labels, counts[pos], 0)
        depth = max(ks)
        if map_r:
            depth = max(depth, int(num_positives.max()))
        _, neighbours = knn_search(query, gallery, depth, backend=backend, memory_budget_mb=memory_budget_mb)
        metrics = _metrics_from_neighbours(gallery_labels[neighbours], query_labels, num_positives, ks, map_r)
    if compute_nmi:
        metrics["NMI"] = nmi(query, query_labels, seed=seed, kmeans=kmeans)
    return metrics


def evaluate_split(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int],
    *,
    query_mask: torch.Tensor | None = None,
    **options: Any,
) -> RetrievalResult:
    """A test split evaluated under its protocol: every item queries all the others (same-set), or, for a split
    with a query mask (In-Shop), the rows of the mask query the rest of the split (the gallery). ``options`` are
    those of :func:`evaluate_embeddings`. The one entry point of training-time and checkpoint evaluation; the
    result holds the metrics and the (CPU) embeddings they came from, for figures and searches over the split."""
    if query_mask is None:
        metrics = evaluate_embeddings(embeddings, labels, ks, **options)
        mask = None
    else:
        query = torch.as_tensor(query_mask, dtype=torch.bool, device=embeddings.device)
        labels = torch.as_tensor(labels)
        mask = query.cpu()
        metrics = evaluate_query_gallery(
            embeddings[query], labels[mask], embeddings[~query], labels[~mask], ks, **options
        )
    return RetrievalResult(
        metrics=metrics,
        embeddings=embeddings.detach().cpu(),
        labels=torch.as_tensor(labels).cpu(),
        query_mask=mask,
        normalize=bool(options.get("normalize", True)),
    )


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


# --------------------------------------------------------------------------------------------


def _check_ks(ks: Sequence[int], available: int, what: str) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")
    if max(ks) > available:
        raise ValueError(f"max(ks)={max(ks)} exceeds {what.format(available)}")
    return ks


def _resolve_engine(engine: str, backend: str, memory_budget_mb: float) -> str:
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb!r}")
    if engine == "search" or (engine == "auto" and backend == "faiss"):
        _resolve_backend(backend)  # validates; ImportError if faiss is asked for but missing
        return "search"
    if backend not in ("auto", "torch", "faiss"):
        _resolve_backend(backend)  # raises the usual ValueError
    return "ranks"


def _prepare(x: torch.Tensor, normalize: bool, name: str) -> torch.Tensor:
    # Cast before normalising: half-precision norms are inaccurate.
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or inf")
    if normalize:
        x = F.normalize(x, p=2, dim=1)
    return x.contiguous()


def _metrics_from_neighbours(
    neighbour_labels: torch.Tensor,
    query_labels: torch.Tensor,
    num_positives: torch.Tensor,
    ks: list[int],
    map_r: bool,
) -> dict[str, float]:
    metrics = {f"R@{k}": v for k, v in recall_at_k(neighbour_labels, query_labels, ks).items()}
    if map_r:
        metrics["MAP@R"] = map_at_r(neighbour_labels, query_labels, num_positives)
        metrics["R-precision"] = r_precision(neighbour_labels, query_labels, num_positives)
    return metrics


def _metrics_from_ranks(ranks: PositiveRanks, ks: list[int], map_r: bool) -> dict[str, float]:
    """The same arithmetic as the search engine, fed from the positives' ranks."""
    r_all = ranks.ranks.cpu()
    num_positives = ranks.num_positives.cpu()
    if r_all.shape[1]:
        first_hit = r_all[:, 0]
    else:
        first_hit = torch.full((r_all.shape[0],), max(ks), dtype=torch.int64)
    metrics = {f"R@{k}": v for k, v in _recall_from_first_hit(first_hit, ks).items()}
    if map_r:
        keep = num_positives > 0
        if not bool(keep.any()):
            metrics["MAP@R"] = metrics["R-precision"] = float("nan")
        else:
            r, rk = num_positives[keep], r_all[keep]
            max_r = int(r.max())
            # rel[q, i]: a positive at rank i (< R; ranks >= R never enter MAP@R / R-precision).
            rel = torch.zeros(r.shape[0], max_r + 1, dtype=torch.bool)
            hit = rk < r.unsqueeze(1)
            rows = torch.arange(r.shape[0]).unsqueeze(1).expand_as(rk)
            rel[rows[hit], rk[hit]] = True
            rel = rel[:, :max_r]
            within_r = torch.arange(max_r).unsqueeze(0) < r.unsqueeze(1)
            r64 = r.double()
            metrics["MAP@R"] = _map_at_r_from_relevance(rel, within_r, r64)
            metrics["R-precision"] = _r_precision_from_relevance(rel, within_r, r64)
    return metrics
