"""Exact k-nearest-neighbour search by squared Euclidean distance, with deterministic ties.

How exactness is ensured (both backends)
----------------------------------------
1. *Candidates*: a fast float32 search (faiss ``IndexFlatL2``, or the torch matmul form
   ``|q|^2 + |g|^2 - 2 q.g``) returns the ``depth`` approximately nearest gallery items of a query.
2. *Re-ranking*: the candidates' distances are recomputed with one canonical formula
   (:func:`_exact_sq_dist`: float64 sum of squared differences, accumulated dimension by dimension
   with element-wise operations only, then rounded to float32). Element-wise IEEE operations give
   the same bits on every device and for every batch shape, so a (query, item) pair always gets the
   same distance, whichever backend found it. Candidates are sorted by (distance, gallery index).
3. *Certification*: the float32 candidate distances are within ``eps`` of the canonical ones
   (a rounding-error bound, :func:`_error_bound`). A query is accepted when its k-th re-ranked
   distance is strictly below ``(largest candidate distance returned) - eps``: every item that was
   not a candidate is then strictly farther than the k-th, so the result, ties at the k boundary
   included, equals a full sort by (distance, index). Other queries are searched again with twice
   the depth; at depth = gallery size the candidate set is the whole gallery, which is trivially
   exact.
The query itself is removed by gallery index (never by rank position): an exact duplicate of the
query at a lower index legitimately comes first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

try:
    import faiss
except ImportError:  # faiss is optional: the torch backend is exact too
    faiss = None  # type: ignore[assignment]

__all__ = ["faiss_available", "knn_search"]

_BACKENDS = ("auto", "faiss", "torch")
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Bytes per (query, candidate) pair while re-ranking: candidate distance and index, the float64
# accumulator and temporary, sort keys. Used to size row batches from the memory budget.
_BYTES_PER_CANDIDATE = 64
# Bytes per (query, gallery item) entry of the torch backend's chunk: the distance matrix plus
# top-k / row-selection temporaries.
_BYTES_PER_TORCH_ENTRY = 4 * 3
# faiss GPU indexes cannot select more than 2048 neighbours per query.
_FAISS_GPU_MAX_K = 2048

# approx(rows, depth) -> (approximate distances [r, depth] float32, gallery indices [r, depth]
# int64) for the given query rows (int64 indices into the current chunk of queries).
ApproxSearch = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package could be imported."""
    return faiss is not None


def knn_search(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    backend: str = "auto",
    memory_budget_mb: float = 256.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest gallery items of each query by squared Euclidean distance.

    Returns ``(distances float32 [nq, k], indices int64 [nq, k])`` on the CPU, each row ordered by
    (distance, gallery index): ties, including ties at the k boundary, go to the smaller index.

    Args:
        query: ``[nq, d]`` tensor (any float dtype; cast to float32 first).
        gallery: ``[ng, d]`` tensor on the same device.
        k: number of neighbours, ``1 <= k <= ng`` (``ng - 1`` with ``exclude_self``).
        exclude_self: query and gallery are the same set in the same order; row ``i`` never
            contains gallery index ``i`` (removed by index: an exact duplicate may come first).
        backend: ``"auto"`` (faiss if importable, else torch), ``"faiss"`` or ``"torch"`` (exact
            chunked torch search; CPU or CUDA). Both return identical results.
        memory_budget_mb: bound on the size of intermediate query-by-gallery / query-by-candidate
            matrices; work is split into row chunks that fit.

    Raises:
        ValueError: bad shapes, ``k`` out of range, non-finite values, unknown backend.
        ImportError: ``backend="faiss"`` without faiss installed.
    """
    query, gallery = _check_inputs(query, gallery, k, exclude_self, memory_budget_mb)
    backend = _resolve_backend(backend)
    k = int(k)
    nq, ng = query.shape[0], gallery.shape[0]
    out_dist = torch.empty(nq, k, dtype=torch.float32)
    out_idx = torch.empty(nq, k, dtype=torch.int64)
    if nq == 0:
        return out_dist, out_idx

    budget = max(1, int(memory_budget_mb * 2**20))
    eps = _error_bound(query, gallery)
    gallery_t = gallery.T.contiguous()  # [d, ng]: contiguous per-dimension gathers in re-ranking
    # A small margin beyond k (plus one slot for the query itself) makes most queries certify on
    # the first pass; the rest are searched again deeper.
    first_depth = min(ng, k + int(exclude_self) + max(8, k // 8))

    def solve(start: int, approx: ApproxSearch, rows: torch.Tensor, depth: int) -> None:
        """Exact top-k of query rows ``start + rows``, from candidates of ``approx``."""
        # Process rows in batches that keep the [rows, depth] candidate matrices within budget.
        step = max(1, budget // (depth * _BYTES_PER_CANDIDATE))
        for s in range(0, rows.numel(), step):
            sub = rows[s : s + step]
            approx_dist, cand = approx(sub, depth)
            global_rows = (sub + start).to(query.device)
            dist, idx, certified = _rerank(
                query[global_rows],
                gallery_t,
                cand.to(query.device),
                approx_dist.to(query.device),
                k,
                self_index=global_rows if exclude_self else None,
                eps=eps[global_rows],
                complete=depth >= ng,
            )
            certified = certified.cpu()
            done = global_rows.cpu()[certified]
            out_dist[done] = dist.cpu()[certified]
            out_idx[done] = idx.cpu()[certified]
            if not bool(certified.all()):
                solve(start, approx, sub[~certified], min(ng, 2 * depth))

    with _full_float32_matmul():
        if backend == "faiss":
            solve(0, _faiss_approx_search(query, gallery), torch.arange(nq), first_depth)
        else:
            # Chunks of queries whose [rows, ng] distance matrix fits the budget.
            rows_per_chunk = max(1, budget // (ng * _BYTES_PER_TORCH_ENTRY))
            gallery_sq = gallery.square().sum(1)
            for start in range(0, nq, rows_per_chunk):
                chunk = query[start : start + rows_per_chunk]
                approx = _torch_approx_search(chunk, gallery, gallery_sq)
                solve(start, approx, torch.arange(chunk.shape[0]), first_depth)
    return out_dist, out_idx


# --------------------------------------------------------------------------------------------
# Input handling


def _check_inputs(
    query: torch.Tensor, gallery: torch.Tensor, k: int, exclude_self: bool, memory_budget_mb: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(query, torch.Tensor) or not isinstance(gallery, torch.Tensor):
        raise ValueError("query and gallery must be torch tensors")
    if query.dim() != 2 or gallery.dim() != 2:
        raise ValueError(
            f"query and gallery must be 2-D [n, dim]; got shapes {tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs {gallery.shape[1]}")
    if query.shape[1] == 0:
        raise ValueError("embeddings must have at least one dimension")
    if query.device != gallery.device:
        raise ValueError(f"query is on {query.device} but gallery is on {gallery.device}")
    if exclude_self and query.shape != gallery.shape:
        raise ValueError(
            "exclude_self=True needs query and gallery to be the same set in the same order; "
            f"got shapes {tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    available = gallery.shape[0] - int(exclude_self)
    if k > available:
        detail = " (the query itself excluded)" if exclude_self else ""
        raise ValueError(f"k={k} exceeds the {available} gallery items available per query{detail}")
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb!r}")

    query = query.detach().to(torch.float32)
    gallery = gallery.detach().to(torch.float32)
    if not (bool(torch.isfinite(query).all()) and bool(torch.isfinite(gallery).all())):
        raise ValueError("query and gallery must contain only finite values (found NaN or inf)")
    return query, gallery


def _resolve_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss is not None else "torch"
    if backend == "faiss" and faiss is None:
        raise ImportError("backend='faiss' was requested but faiss is not installed")
    return backend


def _error_bound(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Per-query bound (float64) on |float32 candidate distance - canonical distance|.

    In float32, |q|^2, |g|^2 and q.g each carry at most gamma_d = d*u/(1 - d*u) relative error in
    any summation order (BLAS blocking, FMA, SIMD), and combining them adds a few roundings of
    size u * (|q|^2 + |g|^2); in total below (2d + 8) u (|q|^2 + |g|^2), the canonical distance's
    own rounding included. We use twice that, with the largest gallery norm.
    """
    d = query.shape[1]
    q_sq = query.double().square().sum(1)
    g_sq_max = gallery.double().square().sum(1).max()
    if 2 * (float(q_sq.max()) + float(g_sq_max)) > _FLOAT32_MAX:
        raise ValueError("embedding norms are too large for float32 distance computation")
    return 4.0 * (d + 8) * _FLOAT32_UNIT_ROUNDOFF * (q_sq + g_sq_max)


@contextmanager
def _full_float32_matmul() -> Iterator[None]:
    # TF32 / bf16 matmuls would void the rounding-error bound of the candidate step.
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


# --------------------------------------------------------------------------------------------
# Candidate search (approximate float32 distances)


def _torch_approx_search(query_chunk: torch.Tensor, gallery: torch.Tensor, gallery_sq: torch.Tensor) -> ApproxSearch:
    """Distances from a chunk of queries to the whole gallery, kept for repeated deeper top-k."""
    approx = torch.addmm(gallery_sq.unsqueeze(0), query_chunk, gallery.T, alpha=-2.0)
    approx.add_(query_chunk.square().sum(1, keepdim=True))

    def search(rows: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = approx[rows.to(approx.device)]
        return torch.topk(block, depth, dim=1, largest=False, sorted=False)

    return search


def _faiss_approx_search(query: torch.Tensor, gallery: torch.Tensor) -> ApproxSearch:
    """faiss IndexFlatL2 search (on the GPU when the inputs are on CUDA and faiss supports it)."""
    dim = gallery.shape[1]
    query_np = np.ascontiguousarray(query.cpu().numpy(), dtype=np.float32)
    gallery_np = np.ascontiguousarray(gallery.cpu().numpy(), dtype=np.float32)
    cpu_index = faiss.IndexFlatL2(dim)
    cpu_index.add(gallery_np)

    gpu = None
    if query.is_cuda and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        # faiss's GPU temporary memory allocation fails (and can hang) when PyTorch's caching
        # allocator holds the memory: release the cache first.
        torch.cuda.empty_cache()
        resources = faiss.StandardGpuResources()
        device = query.device.index if query.device.index is not None else 0
        # Keep the resources referenced for as long as the GPU index is used.
        gpu = (resources, faiss.index_cpu_to_gpu(resources, device, cpu_index))

    def search(rows: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = gpu[1] if gpu is not None and depth <= _FAISS_GPU_MAX_K else cpu_index
        dist, idx = index.search(query_np[rows.numpy()], depth)
        return torch.from_numpy(dist), torch.from_numpy(idx)

    return search


# --------------------------------------------------------------------------------------------
# Exact re-ranking


def _exact_sq_dist(query: torch.Tensor, gallery_t: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Canonical squared distances ``[r, m]`` from ``query [r, d]`` to gallery items ``cand``.

    float64 sum of (g_j - q_j)^2 for j = 0..d-1 in this order, rounded to float32. Only
    element-wise operations are used (no reductions, no fused multiply-add), so each value is a
    pure function of the pair: identical on CPU and CUDA and for any batch shape.
    """
    query64 = query.double()
    acc = torch.zeros(cand.shape, dtype=torch.float64, device=cand.device)
    for j in range(query.shape[1]):
        term = gallery_t[j][cand].double()
        term.sub_(query64[:, j : j + 1])
        term.mul_(term)
        acc.add_(term)
    return acc.float()


def _rerank(
    query: torch.Tensor,
    gallery_t: torch.Tensor,
    cand: torch.Tensor,
    approx_dist: torch.Tensor,
    k: int,
    *,
    self_index: torch.Tensor | None,
    eps: torch.Tensor,
    complete: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of the candidates by (canonical distance, index), and which rows are certified."""
    num_gallery = gallery_t.shape[1]
    valid = cand >= 0  # faiss pads with -1 when it has fewer results than asked
    if self_index is not None:
        valid &= cand != self_index.unsqueeze(1)
    dist = _exact_sq_dist(query, gallery_t, torch.where(valid, cand, 0))
    dist.masked_fill_(~valid, float("inf"))
    index = torch.where(valid, cand, num_gallery)  # invalid slots sort last

    # Lexicographic (distance, index) order: sort by index, then stably by distance.
    index, order = index.sort(dim=1)
    dist = dist.gather(1, order)
    dist, order = dist.sort(dim=1, stable=True)
    index = index.gather(1, order)
    dist, index = dist[:, :k], index[:, :k]

    if complete:  # the candidates were the whole gallery
        certified = torch.ones(dist.shape[0], dtype=torch.bool, device=dist.device)
    else:
        # Items never returned have approximate distance >= the largest one returned, hence
        # canonical distance >= that - eps: strictly beyond the k-th if this holds.
        farthest = approx_dist.max(dim=1).values.double()
        certified = dist[:, k - 1].double() < farthest - eps
    return dist, index, certified
