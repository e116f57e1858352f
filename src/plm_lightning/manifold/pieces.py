"""Linear pieces: one affine subspace per batch point, grown greedily and fitted by PCA (docs/method.md, "Linear
pieces").

For point x_j the piece is the affine subspace through x_j spanned by the top-m principal directions U_j of the
offsets {x_l - x_j : l in N_j}. N_j starts with the nearest neighbour; each further candidate (in order of
distance, at most M of them) is accepted when its relative residual under the piece refitted *with* it is at
most tau.

Everything is batched over the points of the batch: the only Python loop runs over the (at most M) candidate
positions. The greedy test is done in the Gram space of each point's candidate offsets (an M x M problem per
point), so its cost does not depend on the embedding dimension d; the final pieces are materialised as d x m
orthonormal bases. Computations run in float64: eigenvalues of nearly collinear offsets are tiny and float32 would
make acceptance decisions depend on round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Relative eigenvalue below which a principal direction is treated as absent (rank-deficient offsets:
# duplicated points, collinear neighbourhoods, fewer accepted offsets than m).
_RANK_EPS = 1e-10


@dataclass
class Pieces:
    """Per-point linear pieces of a batch.

    anchors:    B x d, the point each piece passes through (x_j), float64.
    bases:      B x d x m, float64, orthonormal columns; directions that do not exist (rank < m) are zero columns.
    members:    B x B boolean, members[j, l] = l is in the neighbourhood N_j.
    """

    anchors: torch.Tensor
    bases: torch.Tensor
    members: torch.Tensor

    @property
    def dims(self) -> torch.Tensor:
        """Effective dimension of each piece (number of non-zero basis columns)."""
        dims: torch.Tensor = (self.bases.norm(dim=1) > 0.5).sum(dim=1)
        return dims


def _top_directions(gram: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-m eigenpairs of a batch of PSD Gram matrices (... x M x M), largest first.

    Returns (eigenvalues ... x m, eigenvectors ... x M x m); eigenvalues at or below the rank threshold are set to
    zero so that callers can drop those directions.
    """
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals = evals.flip(-1)[..., :m]
    evecs = evecs.flip(-1)[..., :m]
    scale = evals[..., :1].clamp_min(0)
    keep = evals > _RANK_EPS * scale.clamp_min(1e-300)
    keep &= evals > 0
    evals = torch.where(keep, evals, torch.zeros_like(evals))
    missing = m - evals.shape[-1]
    if missing > 0:  # fewer candidates than m: the extra directions are absent (zero eigenvalue, zero vector)
        evals = torch.nn.functional.pad(evals, (0, missing))
        evecs = torch.nn.functional.pad(evecs, (0, missing))
    return evals, evecs


def _coefficients(gram_rows: torch.Tensor, evals: torch.Tensor, evecs: torch.Tensor) -> torch.Tensor:
    """Coordinates in the piece's orthonormal basis of vectors y, given G[:, y] = O y (the offsets' inner products
    with y). With O^T O's eigen-decomposition via G = O O^T = V diag(l) V^T, the orthonormal basis is
    U = O^T V diag(l)^(-1/2), so U^T y = diag(l)^(-1/2) V^T (O y)."""
    inv_sqrt = torch.where(evals > 0, evals.clamp_min(1e-300).rsqrt(), torch.zeros_like(evals))
    return torch.einsum("...Mm,...My->...ym", evecs, gram_rows) * inv_sqrt.unsqueeze(-2)


GREEDY_TESTS = ("refit", "current")


def fit_pieces(
    x: torch.Tensor,
    *,
    piece_dim: int = 2,
    max_candidates: int = 10,
    tau: float = 0.5,
    subset_selection: bool = True,
    greedy_test: str = "refit",
) -> Pieces:
    """Fit one linear piece per row of ``x`` (B x d, teacher embeddings of a batch).

    piece_dim:        m, the subspace dimension (effective dimension min(m, |N_j|, rank)).
    max_candidates:   M, how many nearest batch points are considered for N_j (capped at B - 1).
    tau:              greedy acceptance threshold on the relative residual.
    subset_selection: False is the "no subset selection" ablation: N_j = the M nearest candidates.
    greedy_test:      "refit": a candidate is tested under the piece refitted with it included (N_j starts with
                      the nearest neighbour); "current": the m nearest candidates span the first piece, and each
                      further candidate is tested against the piece of the members accepted so far (without it).
    """
    if greedy_test not in GREEDY_TESTS:
        raise ValueError(f"unknown greedy test {greedy_test!r}; choose one of {', '.join(GREEDY_TESTS)}")
    if x.dim() != 2:
        raise ValueError(f"fit_pieces expects a B x d matrix, got shape {tuple(x.shape)}")
    b, d = x.shape
    xd = x.detach().to(torch.float64)
    m_cap = max(0, min(max_candidates, b - 1))
    if m_cap == 0 or piece_dim == 0:
        return Pieces(
            anchors=xd,
            bases=xd.new_zeros(b, d, piece_dim),
            members=torch.zeros(b, b, dtype=torch.bool, device=x.device),
        )

    # Candidates: the other batch points by distance (ties by index), self excluded by index.
    gram_all = xd @ xd.T
    sq = gram_all.diagonal()
    dist2 = (sq[:, None] + sq[None, :] - 2 * gram_all).clamp_min(0)
    dist2.fill_diagonal_(float("inf"))
    order = torch.sort(dist2, dim=1, stable=True).indices[:, :m_cap]  # B x M

    # Offsets of the candidates from their anchor and their inner products (Gram space of each anchor).
    offsets = xd[order] - xd[:, None, :]  # B x M x d
    gram = offsets @ offsets.transpose(1, 2)  # B x M x M
    norms2 = gram.diagonal(dim1=1, dim2=2)  # B x M

    accepted = torch.zeros(b, m_cap, dtype=torch.bool, device=x.device)
    # N_j starts with the nearest neighbour ("refit") or with the m nearest, which span the first piece ("current").
    first = 1 if greedy_test == "refit" else max(1, min(piece_dim, m_cap))
    accepted[:, :first] = True
    if subset_selection:
        for t in range(first, m_cap):
            fitted = accepted.clone()
            if greedy_test == "refit":
                fitted[:, t] = True
            mask = fitted.to(gram.dtype)
            evals, evecs = _top_directions(gram * mask[:, :, None] * mask[:, None, :], piece_dim)
            coef = _coefficients((gram[:, :, t] * mask).unsqueeze(-1), evals, evecs).squeeze(-2)  # B x m
            residual2 = (norms2[:, t] - (coef**2).sum(-1)).clamp_min(0)
            # ||r|| <= tau ||x_c - x_j||, written without division so a duplicate (zero offset) is accepted.
            accepted[:, t] = residual2 <= (tau**2) * norms2[:, t]
    else:
        accepted[:] = True

    mask = accepted.to(gram.dtype)
    evals, evecs = _top_directions(gram * mask[:, :, None] * mask[:, None, :], piece_dim)
    inv_sqrt = torch.where(evals > 0, evals.clamp_min(1e-300).rsqrt(), torch.zeros_like(evals))
    # U = O^T V diag(l)^(-1/2), with masked-out offsets zeroed.
    bases = torch.einsum("bMd,bMm->bdm", offsets * mask[:, :, None], evecs) * inv_sqrt[:, None, :]
    # A weak (small-eigenvalue) direction built through the Gram matrix is orthonormal only to ~1e-9; one
    # orthonormalisation pass (orthonormal_basis) restores it to machine precision. Valid directions are a prefix
    # (eigenvalues descending), so it keeps their span; columns of absent directions are zeroed again.
    # At most d directions exist: orthonormalise the first min(m, d) columns, the rest stay zero.
    mq = min(piece_dim, d)
    present = (evals[:, :mq] > 0).to(bases.dtype)[:, None, :]
    q = orthonormal_basis(bases[:, :, :mq] + (1 - present) * _unit_columns(d, mq, bases)) * present
    bases = torch.nn.functional.pad(q, (0, piece_dim - mq))

    members = torch.zeros(b, b, dtype=torch.bool, device=x.device)
    members.scatter_(1, order, accepted)
    # Kept in float64: o = sqrt(||v||^2 - p^2) amplifies a projector that is orthonormal only to float32 precision
    # (~1e-7) into o ~ 1e-4 for points that lie on the piece.
    return Pieces(anchors=xd, bases=bases, members=members)


def _unit_columns(d: int, m: int, like: torch.Tensor) -> torch.Tensor:
    """Placeholder columns for absent directions so the orthonormalisation stays well defined (zeroed after)."""
    eye = torch.zeros(d, m, dtype=like.dtype, device=like.device)
    eye[torch.arange(min(d, m)), torch.arange(min(d, m))] = 1
    return eye.unsqueeze(0)


def orthonormal_basis(raw: torch.Tensor) -> torch.Tensor:
    """Orthonormalise learnable piece parameters (... x d x m, m <= d) column by column: the Q of the QR
    factorisation whose R has a positive diagonal, so the map is continuous and the identity on bases that are
    already orthonormal. A column that lies in the span of the previous ones (a rank-deficient input) becomes zero.

    Gram-Schmidt with one re-orthogonalisation pass ("twice is enough": orthonormal to machine precision) rather
    than torch.linalg.qr: for a batch of tall d x m matrices with small m it is a few batched matrix products,
    where CUDA's batched QR launches several kernels per matrix (timings: docs/benchmarks.md).
    """
    # No half-precision kernels needed, but rounding in bf16 would lose orthonormality: work in float32 at least.
    work = raw.float() if raw.dtype in (torch.float16, torch.bfloat16) else raw
    d, m = work.shape[-2], work.shape[-1]
    if m > d:
        raise ValueError(f"orthonormal_basis: {m} columns cannot be orthonormal in dimension {d}")
    tiny = torch.finfo(work.dtype).tiny
    columns: list[torch.Tensor] = []
    for i in range(m):
        v = work[..., i : i + 1]  # ... x d x 1
        if columns:
            q = torch.cat(columns, dim=-1)  # ... x d x i
            for _ in range(2):
                v = v - q @ (q.transpose(-2, -1) @ v)
        norm = v.norm(dim=-2, keepdim=True)
        # Where the column is (numerically) dependent, return zero instead of dividing by zero (no NaN gradients).
        safe = norm > tiny**0.5
        columns.append(torch.where(safe, v / torch.where(safe, norm, torch.ones_like(norm)), torch.zeros_like(v)))
    return torch.cat(columns, dim=-1).to(raw.dtype)


def local_pca_basis(
    x: torch.Tensor, neighbours: torch.Tensor, piece_dim: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Top-m principal directions of the offsets of each anchor's neighbours (used to initialise proxy pieces).

    x: N x d points; neighbours: A x K indices whose first column is the anchor itself.
    Directions missing because of rank deficiency are completed with random orthonormal ones, so every basis is a
    full d x m orthonormal matrix (a learnable piece needs all m directions).
    """
    anchors = x[neighbours[:, 0]].to(torch.float64)
    offsets = x[neighbours[:, 1:]].to(torch.float64) - anchors[:, None, :]  # A x (K-1) x d
    d = x.shape[1]
    m = min(piece_dim, d)
    random = torch.randn(anchors.shape[0], d, m, generator=generator, dtype=torch.float64).to(x.device)
    if offsets.shape[1] == 0:
        return orthonormal_basis(random).to(x.dtype)
    _, s, vh = torch.linalg.svd(offsets, full_matrices=False)
    k = min(m, vh.shape[1])
    top = vh[:, :k, :].transpose(1, 2)  # A x d x k
    valid = s[:, :k] > _RANK_EPS**0.5 * s[:, :1].clamp_min(1e-300)
    # Absent directions (a suffix, since s is descending) are replaced by random ones; Gram-Schmidt then keeps the
    # valid principal directions as the leading columns and orthonormalises the completion against them.
    filled = torch.cat([torch.where(valid[:, None, :], top, random[:, :, :k]), random[:, :, k:]], dim=2)
    q = orthonormal_basis(filled)
    return q[:, :, :m].to(x.dtype)
