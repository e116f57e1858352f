"""Similarity estimators other than PLM, for ablations and for the similarity-quality report (docs/method.md).

Each is a callable ``(x, proxy_points=None, proxy_bases=None) -> SimilarityResult`` on a batch of teacher embeddings,
like ``PLMSimilarity``, so one training code path serves all of them:

- ``gaussian``: STML's kernel s = exp(-||x_i - x_j||^2 / sigma).
- ``knn``: binary k-nearest-neighbour graph of the batch, symmetrised (i ~ j if either is among the other's k).
- ``kmeans``: same-cluster pseudo-labels from k-means on the batch.
- ``Binarized``: wraps any estimator, s -> 1[s >= threshold] (the paper's "binary similarity" ablation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from plm_lightning.manifold.distances import squared_distances
from plm_lightning.manifold.similarity import SimilarityResult


class SimilarityEstimator(Protocol):
    """What the loss calls: a batch of teacher embeddings (and optionally the proxies) -> similarities."""

    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ) -> SimilarityResult: ...


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return squared_distances(a, b).clamp_min(0)


@dataclass
class GaussianSimilarity:
    sigma: float = 3.0

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ) -> SimilarityResult:
        s = torch.exp(-_sq_dists(x, x) / self.sigma)
        s.fill_diagonal_(1.0)
        s_proxy = None if proxy_points is None else torch.exp(-_sq_dists(x, proxy_points) / self.sigma).to(x.dtype)
        return SimilarityResult(s.to(x.dtype), s_proxy)


@dataclass
class KNNSimilarity:
    k: int = 5

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ) -> SimilarityResult:
        b = x.shape[0]
        d2 = _sq_dists(x, x)
        d2.fill_diagonal_(float("inf"))
        k = min(self.k, b - 1)
        s = torch.zeros(b, b, dtype=torch.float64, device=x.device)
        if k > 0:
            nearest = torch.sort(d2, dim=1, stable=True).indices[:, :k]
            s.scatter_(1, nearest, 1.0)
            s = torch.maximum(s, s.T)
        s.fill_diagonal_(1.0)
        s_proxy = None
        if proxy_points is not None:
            # A proxy is a neighbour of x_i when it is at least as close as x_i's k-th nearest batch point.
            radius = torch.sort(d2, dim=1).values[:, max(k, 1) - 1] if k > 0 else torch.zeros(b, device=x.device)
            s_proxy = (_sq_dists(x, proxy_points) <= radius[:, None]).to(x.dtype)
        return SimilarityResult(s.to(x.dtype), s_proxy)


def kmeans(x: torch.Tensor, clusters: int, *, iterations: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding from a fixed generator: (assignments N, centroids C x d)."""
    x = x.to(torch.float64)
    n = x.shape[0]
    c = min(clusters, n)
    generator = torch.Generator().manual_seed(seed)
    seeds = [x[int(torch.randint(n, (1,), generator=generator).item())]]
    for _ in range(1, c):
        d2 = _sq_dists(x, torch.stack(seeds)).min(1).values
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        seeds.append(x[int(torch.multinomial(probs.cpu(), 1, generator=generator).item())])
    centroids = torch.stack(seeds)
    assign = _sq_dists(x, centroids).argmin(1)
    for _ in range(iterations):
        for j in range(c):  # a loop over clusters (few), not over points
            members = assign == j
            if members.any():
                centroids[j] = x[members].mean(0)
        new = _sq_dists(x, centroids).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign, centroids


@dataclass
class KMeansSimilarity:
    clusters: int = 24
    seed: int = 0

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ) -> SimilarityResult:
        assign, centroids = kmeans(x, self.clusters, seed=self.seed)
        s = (assign[:, None] == assign[None, :]).to(x.dtype)
        s_proxy = None
        if proxy_points is not None:
            proxy_assign = _sq_dists(proxy_points, centroids).argmin(1)
            s_proxy = (assign[:, None] == proxy_assign[None, :]).to(x.dtype)
        return SimilarityResult(s, s_proxy)


@dataclass
class Binarized:
    """The "binary similarity" ablation: s -> 1[s >= threshold], the diagonal stays 1."""

    estimator: SimilarityEstimator
    threshold: float = 0.5

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ) -> SimilarityResult:
        result = self.estimator(x, proxy_points, proxy_bases)
        s = (result.s >= self.threshold).to(result.s.dtype)
        s.fill_diagonal_(1.0)
        s_proxy = None if result.s_proxy is None else (result.s_proxy >= self.threshold).to(result.s_proxy.dtype)
        return SimilarityResult(s, s_proxy, result.stats)


ESTIMATORS = ("plm", "gaussian", "knn", "kmeans")


def build_estimator(
    name: str,
    *,
    n_alpha: float = 4.0,
    n_beta: float = 1.0,
    piece_dim: int = 2,
    max_candidates: int = 10,
    tau: float = 0.5,
    subset_selection: bool = True,
    gaussian_sigma: float = 3.0,
    knn_k: int = 5,
    kmeans_clusters: int = 24,
    seed: int = 0,
    binary_threshold: Optional[float] = None,
    symmetrize: str = "mean",
    greedy_test: str = "refit",
    distance_scale: str = "absolute",
) -> SimilarityEstimator:
    from plm_lightning.manifold.similarity import PLMSimilarity

    est: SimilarityEstimator
    if name == "plm":
        est = PLMSimilarity(
            n_alpha=n_alpha,
            n_beta=n_beta,
            piece_dim=piece_dim,
            max_candidates=max_candidates,
            tau=tau,
            subset_selection=subset_selection,
            symmetrize=symmetrize,
            greedy_test=greedy_test,
            distance_scale=distance_scale,
        )
    elif name == "gaussian":
        est = GaussianSimilarity(gaussian_sigma)
    elif name == "knn":
        est = KNNSimilarity(knn_k)
    elif name == "kmeans":
        est = KMeansSimilarity(kmeans_clusters, seed)
    else:
        raise ValueError(f"unknown similarity estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return est if binary_threshold is None else Binarized(est, binary_threshold)
