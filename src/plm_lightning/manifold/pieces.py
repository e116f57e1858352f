"""Linear pieces: one affine subspace per batch point, grown greedily and fitted by PCA (docs/method.md, "Linear
pieces").

For point x_j the piece is the affine subspace through x_j spanned by the top-m principal directions U_j of the
offsets {x_l - x_j : l in N_j}. N_j starts with the nearest neighbour; each further candidate (in order of
distance, at most M of them) is accepted when its relative residual under the piece refitted *with* it is at
most tau (so the first m are always accepted: m offsets lie in their own piece).

Everything is batched over the points of the batch: the only Python loop runs over the (at most M) candidate
positions, a few whole-batch operations per position (benchmarks/ops.py counts them). The greedy test is done in
the Gram space of each point's candidate offsets (an M x M problem per
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


def _greedy_members(
    gram: torch.Tensor, norms2: torch.Tensor, piece_dim: int, tau: float, greedy_test: str
) -> torch.Tensor:
    """The greedy subset selection over the candidates of every anchor at once: B x M, 1.0 where accepted.

    gram: B x M x M inner products of each anchor's candidate offsets; norms2: their squared norms (its diagonal).
    Candidate t is tested on the Gram matrix of the fitted members (the other rows and columns zeroed). With its
    eigen-decomposition G = V diag(l) V^T the principal directions are U = O^T V diag(l)^(-1/2), so a candidate c
    in the fitted set ("refit") has squared coordinates l_k V[c, k]^2 along them (O c is G's column c), and
    ||r_c||^2 = G[c, c] - sum_{k <= m} l_k V[c, k]^2; a candidate outside it ("current") has coordinates
    (V^T G[:, c])_k / sqrt(l_k). The loop over candidate positions is inherent (each decision depends on the ones
    before); each step is a handful of whole-batch operations, so the call launches few kernels
    (benchmarks/ops.py counts them).
    """
    b, m_cap = norms2.shape
    eye = torch.eye(m_cap, dtype=gram.dtype, device=gram.device)
    unit = eye.unbind(0)
    top = eye[max(0, m_cap - piece_dim) :].sum(0)  # the top piece_dim eigenvalues of an ascending eigh
    # ||r||^2 <= tau^2 ||v||^2  <=>  (in-piece part) >= (1 - tau^2) ||v||^2: no division, so a duplicate (zero
    # offset) is accepted (0 >= 0).
    needed = norms2 * (1 - tau**2)
    one = torch.ones((), dtype=gram.dtype, device=gram.device)
    # N_j starts with the m nearest candidates: under "refit" a set of at most m offsets lies in its own piece
    # (residual 0, accepted for any tau > 0); under "current" they span the first piece.
    first = max(1, min(piece_dim, m_cap))
    accepted = eye[:first].sum(0).expand(b, m_cap)
    for t in range(first, m_cap):
        fitted = accepted + unit[t] if greedy_test == "refit" else accepted
        evals, evecs = torch.linalg.eigh(torch.einsum("bi,bij,bj->bij", fitted, gram, fitted))  # ascending
        if greedy_test == "refit":
            # Weak directions included: their share is below the rank threshold (1e-10 of the top eigenvalue).
            in_piece = torch.einsum("bk,bik,bik,k->bi", evals.clamp_min(0), evecs, evecs, top)
        else:
            floor = _RANK_EPS * evals[:, -1:].clamp_min(1e-300)
            inv = torch.where(evals > floor, evals, torch.full_like(evals, float("inf"))).reciprocal()
            coords = torch.einsum("bjk,bji,bj->bik", evecs, gram, fitted)
            in_piece = torch.einsum("bik,bik,bk,k->bi", coords, coords, inv, top)
        # accepted[:, t] = 1 where the test passes, written for every column and masked by unit[t].
        accepted = torch.addcmul(accepted, unit[t], torch.heaviside(in_piece - needed, one))
    return accepted


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

    if subset_selection:
        mask = _greedy_members(gram, norms2, piece_dim, tau, greedy_test)
    else:
        mask = torch.ones_like(norms2)
    evals, evecs = torch.linalg.eigh(torch.einsum("bi,bij,bj->bij", mask, gram, mask))  # ascending
    # At most min(m, M, d) directions exist; the top ones, largest first.
    k = min(piece_dim, m_cap, d)
    top_evals, top_vecs = evals[:, -k:].flip(-1), evecs[:, :, -k:].flip(-1)
    # A direction exists when its eigenvalue is above the rank threshold, relative to the largest: a prefix.
    present = top_evals > _RANK_EPS * top_evals[:, :1].clamp_min(1e-300)
    # Column k of O^T V is the k-th principal direction times sqrt(l_k). Built through the Gram matrix, a weak
    # direction is orthogonal to the others only to ~1e-9; orthonormalising (Gram-Schmidt, twice) normalises the
    # columns and restores orthogonality to machine precision, keeping the span of the prefix; absent directions
    # stay zero columns.
    raw = torch.einsum("bMd,bM,bMk,bk->bdk", offsets, mask, top_vecs, present.to(offsets.dtype))
    bases = orthonormal_basis(raw)
    if k < piece_dim:
        bases = torch.nn.functional.pad(bases, (0, piece_dim - k))

    members = torch.zeros(b, b, dtype=torch.bool, device=x.device)
    members.scatter_(1, order, mask > 0.5)
    # Kept in float64: o = sqrt(||v||^2 - p^2) amplifies a projector that is orthonormal only to float32 precision
    # (~1e-7) into o ~ 1e-4 for points that lie on the piece.
    return Pieces(anchors=xd, bases=bases, members=members)


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
    threshold = torch.finfo(work.dtype).tiny ** 0.5
    columns: list[torch.Tensor] = []
    for v in work.unbind(-1):  # ... x d each
        for _ in range(2 if columns else 0):
            for q in columns:  # elementwise, not einsum: fewer operators forward and backward
                v = v - q * (q * v).sum(-1, keepdim=True)
        norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        # Where the column is (numerically) dependent, return zero instead of dividing by zero (no NaN gradients).
        columns.append(v / norm.clamp_min(threshold) * (norm > threshold))
    q = torch.stack(columns, dim=-1)
    return q if q.dtype == raw.dtype else q.to(raw.dtype)


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
