"""PLM similarity from orthogonal and in-plane distances to linear pieces (docs/method.md, "Similarity").

    o(i, j) = ||(I - U_j U_j^T)(x_i - x_j)||     distance of x_i from the piece of x_j
    p(i, j) = ||U_j U_j^T (x_i - x_j)||          distance of x_j from x_i's projection onto that piece
    s'(i, j) = (1 + o/2)^(-N_alpha) * (1 + p)^(-N_beta)
    s(i, j) = (s'(i, j) + s'(j, i)) / 2,   s(i, i) = 1

The similarity is a regression target: it is computed without gradient.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch

from plm_lightning.manifold.distances import as_float64, pairwise_squared_distances, squared_distances
from plm_lightning.manifold.pieces import Pieces, fit_pieces, orthonormal_basis


@dataclass
class SimilarityResult:
    """What a similarity estimator returns for one batch: s (B x B), s to the proxies (B x K) when proxies were
    given, and scalar diagnostics. s_all: [s | s_proxy] as one B x (B + K) tensor when the estimator builds them
    together (s and s_proxy are then views of it), so that the loss can treat both in one pass."""

    s: torch.Tensor
    s_proxy: Optional[torch.Tensor] = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    s_all: Optional[torch.Tensor] = None


def teacher_space(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The teacher's embeddings as the similarity (and the nearest-neighbour table) sees them: rows scaled to unit
    length when ``normalize`` (method.teacher.normalize [ours]), else as they are. The one place that decides it."""
    return unit_rows(x) if normalize else x


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length: torch.nn.functional.normalize(x, dim=1) (same eps, same numbers) in three
    operators instead of four (no expand)."""
    unit: torch.Tensor = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
    return unit


def _coordinates_squared(points: torch.Tensor, anchors: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """||U_j^T (y_i - a_j)||^2 for every point i and piece j (n x P, float64 inputs), without forming the n x P x d
    offsets."""
    coef = torch.einsum("id,jdm->ijm", points, bases) - torch.einsum("jd,jdm->jm", anchors, bases)
    return torch.einsum("ijm,ijm->ij", coef, coef)


def _stacked_distances(
    points: torch.Tensor, anchors: torch.Tensor, bases: torch.Tensor, squared: torch.Tensor
) -> torch.Tensor:
    """(o, p) stacked, 2 x n x P, from ||y_i - a_j||^2 (``squared``, float64) and the in-plane part."""
    p2 = _coordinates_squared(points, anchors, bases)
    return torch.stack([squared - p2, p2]).clamp_min(0).sqrt()


def _stacked_piece_distances(points: torch.Tensor, anchors: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """piece_distances' (o, p) stacked, 2 x n x P (any input precision; float64 out)."""
    y, a, u = (as_float64(t) for t in (points, anchors, bases))
    return _stacked_distances(y, a, u, squared_distances(y, a))


def piece_distances(
    points: torch.Tensor, anchors: torch.Tensor, bases: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal and in-plane distances of every point from every piece.

    points: n x d; anchors: P x d; bases: P x d x m (orthonormal or zero columns).
    Returns (o, p), each n x P, float64.
    """
    o, p = _stacked_piece_distances(points, anchors, bases).unbind(0)
    return o, p


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


@functools.lru_cache(maxsize=64)
def _formula_constants(
    n_alpha: float, n_beta: float, ndim: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1, the scales (1/2, 1) of o and p, and the exponents (-N_alpha, -N_beta), shaped to broadcast against a
    stacked (o, p) of ``ndim`` dimensions (cached constants)."""
    shape = (2,) + (1,) * (ndim - 1)
    one = torch.ones((), dtype=dtype)
    scales = torch.tensor([0.5, 1.0], dtype=dtype).reshape(shape)
    exponents = torch.tensor([-float(n_alpha), -float(n_beta)], dtype=dtype).reshape(shape)
    return one.to(device), scales.to(device), exponents.to(device)


def directed_from_stacked(
    op: torch.Tensor, n_alpha: float, n_beta: float, factor: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """s' from (o, p) stacked along the first dimension (each multiplied by ``factor`` first when given):
    (1 + o/2)^(-N_alpha) (1 + p)^(-N_beta) as one product over the stack."""
    one, scales, exponents = _formula_constants(n_alpha, n_beta, op.dim(), op.dtype, op.device)
    if factor is not None:
        scales = scales * factor
    return torch.addcmul(one, op, scales).pow(exponents).prod(0)


def directed_similarity(o: torch.Tensor, p: torch.Tensor, n_alpha: float, n_beta: float) -> torch.Tensor:
    """s' = (1 + o/2)^(-N_alpha) (1 + p)^(-N_beta): decays faster off the piece than along it when N_alpha > N_beta."""
    o, p = torch.broadcast_tensors(o, p)  # type: ignore[no-untyped-call]
    return directed_from_stacked(torch.stack([o, p]), n_alpha, n_beta)


def _cat_bases(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two sets of pieces as one, the narrower padded with zero columns (absent directions) when their dimensions
    differ (pieces of m directions in a space of d < m dimensions)."""
    width = max(a.shape[-1], b.shape[-1])
    a, b = (t if t.shape[-1] == width else torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in (a, b))
    return torch.cat([a, b])


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
    # Candidate positions of the greedy selection decided together (None: pieces.default_greedy_block, 4 on CUDA and
    # 1 elsewhere): speed only, the pieces do not depend on it.
    greedy_block: Optional[int] = None

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, proxy_points: Optional[torch.Tensor] = None, proxy_bases: Optional[torch.Tensor] = None
    ) -> SimilarityResult:
        if (proxy_points is None) != (proxy_bases is None):
            raise ValueError("proxy_points and proxy_bases are given together or not at all")
        b = x.shape[0]
        x64 = as_float64(x)
        if proxy_points is None or proxy_bases is None:
            points, bases_extra = x64, None
        else:
            # The batch points and the proxies in one pass: every point against every piece (the proxies' own
            # pieces included), so s'(i, j), s'(i, k) and s'(k, i) come from one set of distances.
            points, bases_extra = torch.cat([x64, as_float64(proxy_points)]), self._proxy_bases64(proxy_bases)
        squared = pairwise_squared_distances(points)
        pieces = self.fit(x64, squared_distances=squared)
        bases = pieces.bases if bases_extra is None else _cat_bases(pieces.bases, bases_extra)
        factor = self._factor(x)
        directed = self._directed_stacked(_stacked_distances(points, points, bases, squared), factor)  # [i, j]
        s_all = symmetrize(directed, directed.T, self.symmetrize)
        s_all = s_all if s_all.dtype == x.dtype else s_all.to(x.dtype)
        s_proxy = None
        if bases_extra is None:
            s = s_all
        else:
            s_all = s_all[:b]
            s, s_proxy = s_all.split([b, s_all.shape[1] - b], dim=1)  # type: ignore[no-untyped-call]
        s.fill_diagonal_(1.0)
        stats = {"piece_dim_mean": pieces.piece_dim_mean(), "neighbourhood_size_mean": pieces.neighbourhood_size_mean()}
        if factor is not None:  # "batch": the factor of this batch (under "absolute" it is 1, not reported)
            stats["distance_scale"] = factor.float()
        return SimilarityResult(s, s_proxy, stats, s_all=s_all if s_proxy is not None else None)

    @staticmethod
    def _proxy_bases64(proxy_bases: torch.Tensor) -> torch.Tensor:
        """Proxy pieces orthonormal to float64 precision, for the same reason as the batch pieces (see fit_pieces):
        bases given in a lower precision are orthonormalised again in float64 (float64 ones are taken as they are)."""
        return proxy_bases if proxy_bases.dtype == torch.float64 else orthonormal_basis(proxy_bases.to(torch.float64))

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

    def _directed_stacked(self, op: torch.Tensor, factor: Optional[torch.Tensor]) -> torch.Tensor:
        return directed_from_stacked(op, self.n_alpha, self.n_beta, factor)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, squared_distances: Optional[torch.Tensor] = None) -> Pieces:
        return fit_pieces(
            x,
            piece_dim=self.piece_dim,
            max_candidates=self.max_candidates,
            tau=self.tau,
            subset_selection=self.subset_selection,
            greedy_test=self.greedy_test,
            squared_distances=squared_distances,
            greedy_block=self.greedy_block,
        )

    @torch.no_grad()
    def pairwise(self, x: torch.Tensor, pieces: Pieces) -> torch.Tensor:
        """s(i, j) for all batch pairs: B x B, symmetric, diagonal 1, values in (0, 1]."""
        directed = self._from_pieces(x, pieces.anchors, pieces.bases, self._factor(x))  # [i, j]: piece of j
        s = symmetrize(directed, directed.T, self.symmetrize)
        s.fill_diagonal_(1.0)
        return s.to(x.dtype)

    @torch.no_grad()
    def to_proxies(
        self, x: torch.Tensor, pieces: Pieces, proxy_points: torch.Tensor, proxy_bases: torch.Tensor
    ) -> torch.Tensor:
        """s(i, k) between batch points and proxies: B x K. s'(i, k) uses the proxy's piece, s'(k, i) the point's."""
        factor = self._factor(x)  # the batch's: proxies live in the same space
        from_proxies = self._from_pieces(proxy_points, pieces.anchors, pieces.bases, factor)  # K x B
        to_proxies = self._from_pieces(x, proxy_points, self._proxy_bases64(proxy_bases), factor)  # B x K
        return symmetrize(to_proxies, from_proxies.T, self.symmetrize).to(x.dtype)

    def _from_pieces(
        self, points: torch.Tensor, anchors: torch.Tensor, bases: torch.Tensor, factor: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """s'(i, j) of every point from every piece (float64)."""
        return self._directed_stacked(_stacked_piece_distances(points, anchors, bases), factor)
