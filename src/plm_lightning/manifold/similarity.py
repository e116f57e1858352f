"""PLM similarity from orthogonal and in-plane distances to linear pieces (METHOD.md, "Similarity").

    o(i, j) = ||(I - U_j U_j^T)(x_i - x_j)||     distance of x_i from the piece of x_j
    p(i, j) = ||U_j U_j^T (x_i - x_j)||          distance of x_j from x_i's projection onto that piece
    s'(i, j) = (1 + o/2)^(-N_alpha) * (1 + p)^(-N_beta)
    s(i, j) = (s'(i, j) + s'(j, i)) / 2,   s(i, i) = 1

The similarity is a regression target: it is computed without gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from plm_lightning.manifold.pieces import Pieces, fit_pieces, orthonormal_basis


@dataclass
class SimilarityResult:
    """What a similarity estimator returns for one batch: s (B x B), s to the proxies (B x K) when proxies were
    given, and scalar diagnostics."""

    s: torch.Tensor
    s_proxy: Optional[torch.Tensor] = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def piece_distances(points: torch.Tensor, anchors: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal and in-plane distances of every point from every piece.

    points: n x d; anchors: P x d; bases: P x d x m (orthonormal or zero columns).
    Returns (o, p), each n x P, float64.
    """
    y = points.to(torch.float64)
    a = anchors.to(torch.float64)
    u = bases.to(torch.float64)
    # Coordinates of (y_i - a_j) in piece j's basis, without forming the n x P x d offsets.
    coef = torch.einsum("id,jdm->ijm", y, u) - torch.einsum("jd,jdm->jm", a, u).unsqueeze(0)
    p2 = (coef ** 2).sum(-1)
    dist2 = ((y ** 2).sum(1)[:, None] + (a ** 2).sum(1)[None, :] - 2 * y @ a.T).clamp_min(0)
    o2 = (dist2 - p2).clamp_min(0)
    return o2.sqrt(), p2.sqrt()


SYMMETRIZATIONS = ("mean", "min", "max")


def symmetrize(a: torch.Tensor, b: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Combine s'(i, j) and s'(j, i) [ours: the mean; min / max are the stricter / looser alternatives]."""
    if how == "mean":
        return (a + b) / 2
    if how == "min":
        return torch.minimum(a, b)
    if how == "max":
        return torch.maximum(a, b)
    raise ValueError(f"unknown symmetrization {how!r}; choose one of {', '.join(SYMMETRIZATIONS)}")


def directed_similarity(o: torch.Tensor, p: torch.Tensor, n_alpha: float, n_beta: float) -> torch.Tensor:
    """s' = (1 + o/2)^(-N_alpha) (1 + p)^(-N_beta): decays faster off the piece than along it when N_alpha > N_beta."""
    return (1 + o / 2).pow(-n_alpha) * (1 + p).pow(-n_beta)


@dataclass
class PLMSimilarity:
    """Point-point and point-proxy similarity of a batch of teacher embeddings (knobs: METHOD.md)."""

    n_alpha: float = 4.0
    n_beta: float = 1.0
    piece_dim: int = 2
    max_candidates: int = 10
    tau: float = 0.5
    subset_selection: bool = True
    symmetrize: str = "mean"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None,
                 proxy_bases: Optional[torch.Tensor] = None) -> SimilarityResult:
        pieces = self.fit(x)
        s_proxy = None if proxy_points is None else self.to_proxies(x, pieces, proxy_points, proxy_bases)
        stats = {"piece_dim_mean": pieces.dims.float().mean(),
                 "neighbourhood_size_mean": pieces.members.sum(1).float().mean()}
        return SimilarityResult(self.pairwise(x, pieces), s_proxy, stats)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Pieces:
        return fit_pieces(x, piece_dim=self.piece_dim, max_candidates=self.max_candidates, tau=self.tau,
                          subset_selection=self.subset_selection)

    @torch.no_grad()
    def pairwise(self, x: torch.Tensor, pieces: Pieces) -> torch.Tensor:
        """s(i, j) for all batch pairs: B x B, symmetric, diagonal 1, values in (0, 1]."""
        o, p = piece_distances(x, pieces.anchors, pieces.bases)
        directed = directed_similarity(o, p, self.n_alpha, self.n_beta)  # [i, j] = s'(i, j), piece of j
        s = symmetrize(directed, directed.T, self.symmetrize)
        s.fill_diagonal_(1.0)
        return s.to(x.dtype)

    @torch.no_grad()
    def to_proxies(self, x: torch.Tensor, pieces: Pieces, proxy_points: torch.Tensor,
                   proxy_bases: torch.Tensor) -> torch.Tensor:
        """s(i, k) between batch points and proxies: B x K. s'(i, k) uses the proxy's piece, s'(k, i) the point's."""
        # Re-orthonormalised in float64 for the same reason as the batch pieces (see fit_pieces).
        o_ik, p_ik = piece_distances(x, proxy_points, orthonormal_basis(proxy_bases.to(torch.float64)))
        o_ki, p_ki = piece_distances(proxy_points, pieces.anchors, pieces.bases)
        s = symmetrize(directed_similarity(o_ik, p_ik, self.n_alpha, self.n_beta),
                       directed_similarity(o_ki, p_ki, self.n_alpha, self.n_beta).T, self.symmetrize)
        return s.to(x.dtype)
