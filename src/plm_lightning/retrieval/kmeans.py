"""k-means in torch, on whatever device the embeddings are on: NMI's clustering on the training GPU.

NMI clusters the test embeddings into as many clusters as there are test classes (11,316 for SOP). faiss does that
on the CPU (252 s of a 283 s `plm-eval` at SOP size on 2 cores); a training run on a GPU node would pay it every
epoch on the node's CPU while the GPU idles. This is the same algorithm as ``faiss.Kmeans`` (Lloyd iterations from
k distinct random points; an empty cluster takes half of a large one, chosen with probability proportional to its
size, by splitting its centroid), so NMI agrees in distribution with the faiss path (tests compare them over
seeds); the random draws differ, so single values differ as between two faiss seeds.
"""

from __future__ import annotations

import torch

# faiss's perturbation when it splits a centroid for an empty cluster (clustering/Clustering.cpp: EPS = 1 / 1024)
_SPLIT_EPS = 1.0 / 1024


def _nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, x_sq: torch.Tensor, rows_per_tile: int) -> torch.Tensor:
    """Index of each row's nearest centroid (ties: the lower index), in tiles of rows (bounded memory)."""
    c_sq = (centroids * centroids).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], rows_per_tile):
        tile = x[start : start + rows_per_tile]
        # ||x||^2 is constant per row: it does not change the argmin, but keeps values comparable to distances.
        d2 = torch.addmm(x_sq[start : start + rows_per_tile, None] + c_sq, tile, centroids.T, alpha=-2)
        out[start : start + rows_per_tile] = d2.argmin(dim=1)
    return out


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    niter: int = 25,
    seed: int = 0,
    memory_budget_mb: float = 512.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` (n x d) into ``k`` clusters; returns (centroids k x d, assignment n).

    float32 on ``x``'s device. ``memory_budget_mb`` bounds the n x k distance tile. Deterministic for a seed on
    a given device (the draws come from a CPU generator).
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects an n x d matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: {k} clusters for {n} points")
    x = x.detach().float().contiguous()
    g = torch.Generator().manual_seed(int(seed))
    centroids = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    x_sq = (x * x).sum(1)
    rows_per_tile = max(1, int(memory_budget_mb * 2**20 // (4 * k)))
    ones = torch.ones(n, device=x.device)
    for _ in range(niter):
        assignment = _nearest_centroid(x, centroids, x_sq, rows_per_tile)
        counts = torch.zeros(k, device=x.device).index_add_(0, assignment, ones)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None], centroids)
        centroids = _split_for_empty(centroids, counts, g)
    return centroids, _nearest_centroid(x, centroids, x_sq, rows_per_tile)


def _split_for_empty(centroids: torch.Tensor, counts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each empty cluster takes over half of a non-empty one, drawn with probability proportional to its size:
    both get that centroid, pushed apart by a relative 1/1024, in opposite directions per coordinate (as faiss
    does)."""
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return centroids
    counts = counts.cpu().clone()
    centroids = centroids.clone()
    # +eps on even coordinates and -eps on odd ones for one half, the reverse for the other: two directions.
    signs = torch.ones(centroids.shape[1], device=centroids.device)
    signs[1::2] = -1
    for j in empty:
        big = int(torch.multinomial(counts, 1, generator=g))
        centroids[j] = centroids[big] * (1 + _SPLIT_EPS * signs)
        centroids[big] = centroids[big] * (1 - _SPLIT_EPS * signs)
        counts[j] = counts[big] / 2
        counts[big] -= counts[j]
    return centroids
