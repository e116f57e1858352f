"""STML's contextualised semantic similarity of a batch of teacher embeddings (docs/stml.md).

    W_P(i, j) = exp(-||t_i - t_j||^2 / sigma)                        pairwise Gaussian kernel
    R(i)      = the k nearest of i in the batch (by W_P; views of one image count as nearest, i itself included)
    V(i, j)   = 1 if j in R(i) and i in R(j), else 0                 k-reciprocal neighbours
    W~(i, j)  = |V(i) & V(j)| / |V(i)| if V(i, j), else 0            overlap of reciprocal neighbourhoods
    W^(i)     = mean of W~(r) over i's round(k / 2) nearest r          query expansion
    W_C       = (W^ + W^T) / 2,   W = (W_P + W_C) / 2

Every step is a whole-batch tensor operation (no loop over points); tests/stml/stml_reference.py computes the same
from the definitions with Python loops and sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from plm_lightning.manifold.distances import squared_distances


def gaussian_kernel(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """W_P = exp(-||t_i - t_j||^2 / sigma), float64, exactly 1 on the diagonal."""
    w = torch.exp(-squared_distances(t, t).clamp_min(0) / sigma)
    return w.fill_diagonal_(1.0)


def half_neighbourhood(k: int) -> int:
    """How many of the k nearest the query expansion averages over: round(k / 2) with ties to even, as STML's code
    (numpy's around), and at least 1 [ours: k = 1 would otherwise average over nothing]."""
    return max(1, round(k / 2))


@torch.no_grad()
def contextual_similarity(
    t: torch.Tensor, same: Optional[torch.Tensor] = None, *, sigma: float = 3.0, k: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, W_P) for teacher embeddings ``t`` (N x d, as the loss sees them: STML normalises them).

    same: N x N boolean, True where two items are views of one image (they rank as each other's nearest, STML's
    code); None = only the diagonal. k: the neighbourhood size (STML: neighbours per seed x views), at most N."""
    n = t.shape[0]
    w_p = gaussian_kernel(t, sigma)
    ranking = w_p.clone()
    if same is not None:
        ranking[same] = 1.0
    k = min(k, n)
    # Ties (only the forced 1s can tie in practice) are broken by torch.topk on both sides of the equality tests.
    nearest = torch.topk(ranking, k, dim=1).indices
    knn = torch.zeros_like(w_p).scatter_(1, nearest, 1.0)
    v = knn * knn.T  # k-reciprocal: each is among the other's k nearest
    # |V(i) & V(j)| / |V(i)| on V's support. V(i) holds i unless more than k views of one image tie at the top and
    # push i out; an empty V(i) gives a zero row, as in STML's loop.
    overlap = (v @ v) * v / v.sum(1, keepdim=True).clamp_min(1)
    h = half_neighbourhood(k)
    expansion = torch.zeros_like(w_p).scatter_(1, nearest[:, :h], 1.0 / h)
    w_hat = expansion @ overlap
    w_c = (w_hat + w_hat.T) / 2
    return (w_p + w_c) / 2, w_p


@dataclass
class ContextualSimilarity:
    """STML's similarity as an estimator of this project's interface (manifold/estimators.py), for plm-simreport and
    for ``method.similarity=stml`` in PLM's loss: s = W, with s(i, i) = 1. No proxies (STML has none)."""

    sigma: float = 3.0
    k: int = 10

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ):
        from plm_lightning.manifold.similarity import SimilarityResult

        w, _ = contextual_similarity(x, sigma=self.sigma, k=self.k)
        s_proxy = None
        if proxy_points is not None:  # the kernel part only: proxies have no neighbourhoods of their own
            s_proxy = torch.exp(-squared_distances(x, proxy_points).clamp_min(0) / self.sigma).to(x.dtype)
        return SimilarityResult(w.fill_diagonal_(1.0).to(x.dtype), s_proxy)
