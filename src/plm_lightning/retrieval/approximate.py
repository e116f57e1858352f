"""Approximate k-nearest-neighbour tables (faiss HNSW or IVF) for training splits too large for the exact one.

Every epoch the nearest-neighbour batches need each training image's k - 1 nearest others under the teacher. The
exact table (:func:`.search.knn_search`) costs O(N^2 d): about 1.3e14 multiply-adds for 1.28 M images at d = 512,
hours on a CPU. An approximate index costs about O(N log N d) (HNSW) or O(N sqrt(N) d) (IVF: 4 sqrt(N) lists, 32
of them searched per query). The batches only need *near* neighbours, not the exact ranking, and the recall of the table
against the exact one is what :func:`table_recall` measures (benchmarks/neighbours.py reports it per size).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

INDEXES = ("exact", "hnsw", "ivf")
HNSW_LINKS = 32  # graph degree (faiss's M); 32 is faiss's recommendation for d in the hundreds
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
IVF_PROBES = 32  # lists searched per query: a fixed number (a fixed fraction of the lists would stay O(N^2))


def _faiss() -> Any:  # faiss has no type hints
    try:
        import faiss
    except ImportError:
        raise ImportError("an approximate neighbour index needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def approximate_neighbours(x: torch.Tensor, k: int, *, index: str, seed: int = 0) -> torch.Tensor:
    """N x k indices of each row's k approximately nearest *other* rows (squared Euclidean), nearest first.

    index: "hnsw" (graph; no training, the best recall per unit of time at moderate N) or "ivf" (inverted lists:
    4 sqrt(N) k-means lists trained on the rows, 32 of them searched per query). ``seed`` fixes IVF's k-means.
    """
    if index not in ("hnsw", "ivf"):
        raise ValueError(f"unknown approximate index {index!r}; choose hnsw or ivf")
    n, d = x.shape
    if not 1 <= k <= n - 1:
        raise ValueError(f"{k} neighbours asked of {n} points")
    faiss = _faiss()
    data = np.ascontiguousarray(x.detach().float().cpu().numpy())
    if index == "hnsw":
        built = faiss.IndexHNSWFlat(d, HNSW_LINKS)
        built.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        built.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * (k + 1))
    else:
        lists = max(1, min(n // 39, int(4 * math.sqrt(n))))  # faiss wants >= 39 training points per list
        built = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, lists)
        built.cp.seed = int(seed)
        built.train(data)
        built.nprobe = min(lists, IVF_PROBES)
    built.add(data)
    found = k + 1
    while True:  # the row itself, and -1 where a search returns fewer results, are not neighbours
        _, ids = built.search(data, min(found, n))
        ids = torch.from_numpy(ids)
        valid = (ids >= 0) & (ids != torch.arange(n).unsqueeze(1))
        if bool((valid.sum(1) >= k).all()) or found >= n:
            break
        found = min(n, 2 * found)
    if not bool((valid.sum(1) >= k).all()):
        raise RuntimeError(f"the {index} index found fewer than {k} neighbours for some points")
    # Keep each row's first k valid results, in the index's order (nearest first).
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :k]
    return ids.gather(1, order)


def table_recall(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over rows of the fraction of the exact neighbours the approximate table holds (order ignored)."""
    if approximate.shape != exact.shape:
        raise ValueError(f"tables of shapes {tuple(approximate.shape)} and {tuple(exact.shape)}")
    hits = (approximate.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2).float().mean(dim=1)
    return float(hits.mean())
