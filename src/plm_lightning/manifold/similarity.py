"""PLM similarity from orthogonal and in-plane distances to linear pieces (docs/method.md, "Similarity").

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

from plm_lightning.manifold.distances import as_float64, squared_distances
from plm_lightning.manifold.pieces import Pieces, fit_pieces, orthonormal_basis


@dataclass
class SimilarityResult:
    """What a similarity estimator returns for one batch: s (B x B), s to the proxies (B x K) when proxies were
    given, and scalar diagnostics."""

    s: torch.Tensor
    s_proxy: Optional[torch.Tensor] = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def teacher_space(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The teacher's embeddings as the similarity (and the nearest-neighbour table) sees them: rows scaled to unit
    length when ``normalize`` (method.teacher.normalize [ours]), else as they are. The one place that decides it."""
    return torch.nn.functional.normalize(x, dim=1) if normalize else x


def piece_distances(
    points: torch.Tensor, anchors: torch.Tensor, bases: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal and in-plane distances of every point from every piece.

    points: n x d; anchors: P x d; bases: P x d x m (orthonormal or zero columns).
    Returns (o, p), each n x P, float64.
    """
    y, a, u = (as_float64(t) for t in (points, anchors, bases))
    # Coordinates of (y_i - a_j) in piece j's basis, without forming the n x P x d offsets.
    coef = torch.einsum("id,jdm->ijm", y, u) - torch.einsum("jd,jdm->jm", a, u)
    p2 = torch.einsum("ijm,ijm->ij", coef, coef)
    o2 = (squared_distances(y, a) - p2).clamp_min(0)
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


DISTANCE_SCALES = ("absolute", "batch")


def batch_distance_scale(x: torch.Tensor) -> torch.Tensor:
    """sqrt(2) / (the median distance between two points of the batch): the factor that gives the batch the median
    distance of random unit vectors in high dimension. A scalar (float64); 1 when the batch has no spread."""
    b = x.shape[0]
    if b < 2:
        return torch.ones((), dtype=torch.float64, device=x.device)
    x64 = x.to(torch.float64)
    sq = (x64 * x64).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * x64 @ x64.T).clamp_min(0).sqrt()
    upper = torch.triu_indices(b, b, offset=1, device=x.device)
    median = dist[upper[0], upper[1]].median()  # the lower median for an even count
    return torch.where(median > 0, 2**0.5 / median.clamp_min(1e-300), torch.ones_like(median))


@dataclass
class PLMSimilarity:
    """Point-point and point-proxy similarity of a batch of teacher embeddings (knobs: docs/method.md).

    distance_scale: "absolute" measures o and p as they are (the paper's formula on unit vectors); "batch" first
    multiplies them by batch_distance_scale(x), so that s depends on the batch's geometry relative to its own spread
    and not on how compact the teacher's space happens to be [ours].
    """

    n_alpha: float = 4.0
    n_beta: float = 1.0
    piece_dim: int = 2
    max_candidates: int = 10
    tau: float = 0.5
    subset_selection: bool = True
    symmetrize: str = "mean"
    greedy_test: str = "refit"
    distance_scale: str = "absolute"

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ) -> SimilarityResult:
        if (proxy_points is None) != (proxy_bases is None):
            raise ValueError("proxy_points and proxy_bases are given together or not at all")
        pieces = self.fit(x)
        factor = self._factor(x)
        s_proxy = None
        if proxy_points is None or proxy_bases is None:
            s = self._pairwise(x, pieces, factor)
        else:
            # The batch points and the proxies against the batch's pieces in one pass: s'(i, j) and s'(k, i).
            b = x.shape[0]
            points = torch.cat([pieces.anchors, as_float64(proxy_points)])
            directed = self._directed(*piece_distances(points, pieces.anchors, pieces.bases), factor)
            s = self._symmetric_batch(directed[:b], x.dtype)
            s_proxy = self._to_proxies(x, proxy_points, proxy_bases, directed[b:], factor)
        stats = {
            "piece_dim_mean": pieces.dims.float().mean(),
            "neighbourhood_size_mean": pieces.members.sum(1).float().mean(),
            "distance_scale": self.scale(x).float() if factor is None else factor.float(),
        }
        return SimilarityResult(s, s_proxy, stats)

    def _factor(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The factor applied to o and p, or None when there is none to apply ("absolute")."""
        return None if self.distance_scale == "absolute" else self.scale(x)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The factor applied to o and p for this batch (1 for "absolute")."""
        if self.distance_scale == "batch":
            return batch_distance_scale(x)
        if self.distance_scale != "absolute":
            raise ValueError(
                f"unknown distance scale {self.distance_scale!r}; choose one of {', '.join(DISTANCE_SCALES)}"
            )
        return torch.ones((), dtype=torch.float64, device=x.device)

    def _directed(self, o: torch.Tensor, p: torch.Tensor, factor: Optional[torch.Tensor]) -> torch.Tensor:
        if factor is not None:
            o, p = o * factor, p * factor
        return directed_similarity(o, p, self.n_alpha, self.n_beta)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Pieces:
        return fit_pieces(
            x,
            piece_dim=self.piece_dim,
            max_candidates=self.max_candidates,
            tau=self.tau,
            subset_selection=self.subset_selection,
            greedy_test=self.greedy_test,
        )

    @torch.no_grad()
    def pairwise(self, x: torch.Tensor, pieces: Pieces) -> torch.Tensor:
        """s(i, j) for all batch pairs: B x B, symmetric, diagonal 1, values in (0, 1]."""
        return self._pairwise(x, pieces, self._factor(x))

    def _pairwise(self, x: torch.Tensor, pieces: Pieces, factor: Optional[torch.Tensor]) -> torch.Tensor:
        directed = self._directed(*piece_distances(x, pieces.anchors, pieces.bases), factor)  # [i, j]: piece of j
        return self._symmetric_batch(directed, x.dtype)

    def _symmetric_batch(self, directed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        s = symmetrize(directed, directed.T, self.symmetrize)
        s.fill_diagonal_(1.0)
        return s.to(dtype)

    @torch.no_grad()
    def to_proxies(
        self, x: torch.Tensor, pieces: Pieces, proxy_points: torch.Tensor, proxy_bases: torch.Tensor
    ) -> torch.Tensor:
        """s(i, k) between batch points and proxies: B x K. s'(i, k) uses the proxy's piece, s'(k, i) the point's."""
        factor = self._factor(x)  # the batch's: proxies live in the same space
        from_proxies = self._directed(*piece_distances(proxy_points, pieces.anchors, pieces.bases), factor)
        return self._to_proxies(x, proxy_points, proxy_bases, from_proxies, factor)

    def _to_proxies(
        self,
        x: torch.Tensor,
        proxy_points: torch.Tensor,
        proxy_bases: torch.Tensor,
        from_proxies: torch.Tensor,
        factor: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """s(i, k) from s'(k, i) (K x B, the batch's pieces) and s'(i, k), computed here on the proxies' pieces."""
        # Orthonormal to float64 precision, for the same reason as the batch pieces (see fit_pieces): bases given in
        # a lower precision are orthonormalised again in float64 (float64 ones are taken as they are).
        if proxy_bases.dtype != torch.float64:
            proxy_bases = orthonormal_basis(proxy_bases.to(torch.float64))
        o_ik, p_ik = piece_distances(x, proxy_points, proxy_bases)
        s = symmetrize(self._directed(o_ik, p_ik, factor), from_proxies.T, self.symmetrize)
        return s.to(x.dtype)
