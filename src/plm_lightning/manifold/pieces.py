"""Linear pieces: one affine subspace per batch point, grown greedily and fitted by PCA (docs/method.md, "Linear
pieces").

For point x_j the piece is the affine subspace through x_j spanned by the top-m principal directions U_j of the
offsets {x_l - x_j : l in N_j}. N_j starts with the nearest neighbour; each further candidate (in order of
distance, at most M of them) is accepted when its relative residual under the piece refitted *with* it is at
most tau (so the first m are always accepted: m offsets lie in their own piece).

Everything is batched over the points of the batch: the only Python loop runs over blocks of candidate positions
(one position at a time on a CPU; on CUDA, blocks of 4 whose possible outcomes are all tested at once), a few
whole-batch operations per block (benchmarks/ops.py counts them). The greedy test is done in the Gram space of each
point's candidate offsets (an M x M problem per point), so its cost does not depend on the embedding dimension d;
the final pieces are materialised as d x m orthonormal bases. Computations run in float64: eigenvalues of nearly
collinear offsets are tiny and float32 would make acceptance decisions depend on round-off.
"""

from __future__ import annotations

import functools
import itertools
from typing import Optional

import torch

from plm_lightning.manifold.distances import as_float64, pairwise_squared_distances

# Relative eigenvalue below which a principal direction is treated as absent (rank-deficient offsets:
# duplicated points, collinear neighbourhoods, fewer accepted offsets than m).
_RANK_EPS = 1e-10


class Pieces:
    """Per-point linear pieces of a batch.

    anchors:    B x d, the point each piece passes through (x_j), float64.
    bases:      B x d x m, float64, orthonormal columns; directions that do not exist (rank < m) are zero columns.
    members:    B x B boolean, members[j, l] = l is in the neighbourhood N_j.

    A fit may give ``members`` as its candidates (B x M indices) and their acceptance (B x M, 1.0 where accepted)
    and ``present`` (B x k boolean, k <= m: which of the top-k directions exist; a view of a wider mask is fine)
    instead: the B x B matrix and the dimensions are then built when first asked for, not in every training step.
    """

    def __init__(
        self,
        anchors: torch.Tensor,
        bases: torch.Tensor,
        members: Optional[torch.Tensor] = None,
        *,
        candidates: Optional[torch.Tensor] = None,
        accepted: Optional[torch.Tensor] = None,
        present: Optional[torch.Tensor] = None,
    ):
        if members is None and (candidates is None or accepted is None):
            raise ValueError("Pieces needs members, or candidates and their acceptance")
        self.anchors = anchors
        self.bases = bases
        self._members = members
        self.candidates = candidates
        self.accepted = accepted
        self.present = present

    @property
    def members(self) -> torch.Tensor:
        if self._members is None:
            assert self.candidates is not None and self.accepted is not None
            b = self.candidates.shape[0]
            members = torch.zeros(b, b, dtype=torch.bool, device=self.candidates.device)
            self._members = members.scatter_(1, self.candidates, self.accepted > 0.5)
        return self._members

    def neighbourhood_size_mean(self) -> torch.Tensor:
        """Mean |N_j| over the batch (float32 scalar)."""
        if self._members is None and self.accepted is not None:
            return self.accepted.sum(dtype=torch.float32) / self.accepted.shape[0]
        return self.members.sum() / self.members.shape[0]

    def piece_dim_mean(self) -> torch.Tensor:
        """Mean effective dimension over the batch (float32 scalar)."""
        if self.present is not None:
            return self.present.sum() / self.present.shape[0]
        return self.dims.float().mean()

    @property
    def dims(self) -> torch.Tensor:
        """Effective dimension of each piece (number of non-zero basis columns)."""
        if self.present is not None:
            return self.present.sum(1)
        dims: torch.Tensor = (self.bases.norm(dim=1) > 0.5).sum(dim=1)
        return dims


# Candidate positions of the greedy selection tested together: all 2^L - 1 tests that the outcomes of a block of L
# undecided positions can call for run in one batched eigen-decomposition, so the call launches a few operators per
# block instead of per position, for more (and, early on, smaller) eigen-decompositions. On CUDA, where the call is
# launch-bound, 4 (benchmarks/ops.py --blocks: 149 operators at the headline shape against 239 one position at a
# time; 8 saves 14 more for 2^8 - 1 eigen-decompositions per anchor). Elsewhere there are no launches to save and
# the extra eigen-decompositions cost CPU time (about 1.3x the call), so 1. The decisions do not depend on it.
GREEDY_BLOCK_CUDA = 4
GREEDY_BLOCK_CPU = 1


def default_greedy_block(device: torch.device) -> int:
    """The greedy block size used when none is given: GREEDY_BLOCK_CUDA on CUDA, GREEDY_BLOCK_CPU elsewhere."""
    return GREEDY_BLOCK_CUDA if device.type == "cuda" else GREEDY_BLOCK_CPU


@functools.lru_cache(maxsize=128)
def _block_tables(
    positions: tuple[int, ...],
    width: int,
    piece_dim: int,
    tau: float,
    refit: bool,
    leading: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """Constant tables of one block of the greedy selection (cached: built once per shape, dtype and device).

    The block's tests are the nodes of a binary tree: the node at depth i with path bits h_0 .. h_{i-1} tests the
    candidate at positions[i] given that the ones at positions[:i] were accepted (h = 1) or rejected (h = 0). The
    leaves are the 2^L outcomes of the block; exactly one agrees with the tests along its own path. A test involves
    only the candidates up to the last one of the block (``size`` of them).

    fitted:   tests x size, 1.0 on each test's hypothesised members of the block (and its candidate, under
              "refit"); for the ``leading`` block, also on the positions before it (all accepted).
    chosen:   tests x size, one-hot of the candidate each test decides.
    needed:   width x tests, (1 - tau^2) where a test decides that candidate: needed = ||v_c||^2 (1 - tau^2).
    top:      size, 1.0 on the top piece_dim eigenvalues of an ascending eigh.
    sign:     tests x leaves, -1 / +1 where a test lies on a leaf's path and the leaf's decision there is 0 / 1, and
    agree:    leaves, 1 - (the leaf's acceptances), so that agree + passed @ sign is 1 for the leaf without a
              disagreement and at most 0 for every other.
    outcome:  leaves x width, each leaf's decisions at the block's positions.
    """
    depth, size = len(positions), positions[-1] + 1
    tests = [(i, bits) for i in range(depth) for bits in itertools.product((0, 1), repeat=i)]
    leaves = list(itertools.product((0, 1), repeat=depth))
    fitted = torch.zeros(len(tests), size, dtype=torch.float64)
    chosen = torch.zeros(len(tests), size, dtype=torch.float64)
    sign = torch.zeros(len(tests), len(leaves), dtype=torch.float64)
    for n, (i, bits) in enumerate(tests):
        if leading:
            fitted[n, : positions[0]] = 1.0
        fitted[n, list(positions[:i])] = torch.tensor(bits, dtype=torch.float64)
        fitted[n, positions[i]] = 1.0 if refit else 0.0
        chosen[n, positions[i]] = 1.0
        for leaf_index, leaf in enumerate(leaves):
            if leaf[:i] == bits:
                sign[n, leaf_index] = 2 * leaf[i] - 1
    needed = torch.zeros(width, len(tests), dtype=torch.float64)
    needed[:size] = chosen.T * (1 - tau**2)
    outcome = torch.zeros(len(leaves), width, dtype=torch.float64)
    outcome[:, list(positions)] = torch.tensor(leaves, dtype=torch.float64)
    agree = 1 - outcome.sum(1)
    top = torch.zeros(size, dtype=torch.float64)
    top[max(0, size - piece_dim) :] = 1.0
    return tuple(t.to(dtype).to(device) for t in (fitted, chosen, needed, top, sign, agree, outcome))


@functools.lru_cache(maxsize=32)
def _first_members(first: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1.0 on the first ``first`` of ``width`` candidate positions (cached constant)."""
    return (torch.arange(width) < first).to(dtype).to(device)


def _greedy_members(
    gram: torch.Tensor,
    piece_dim: int,
    tau: float,
    greedy_test: str,
    block: int = GREEDY_BLOCK_CUDA,
) -> torch.Tensor:
    """The greedy subset selection over the candidates of every anchor at once: B x M, 1.0 where accepted.

    gram: B x M x M inner products of each anchor's candidate offsets.
    Candidate c is tested on the Gram matrix of the fitted members (the other rows and columns zeroed). With its
    eigen-decomposition G = V diag(l) V^T the principal directions are U = O^T V diag(l)^(-1/2), so a candidate c
    in the fitted set ("refit") has squared coordinates l_k V[c, k]^2 along them (O c is G's column c), and
    ||r_c||^2 = G[c, c] - sum_{k <= m} l_k V[c, k]^2; a candidate outside it ("current") has coordinates
    (V^T G[:, c])_k / sqrt(l_k). ||r||^2 <= tau^2 ||v||^2 is tested as (in-piece part) >= (1 - tau^2) ||v||^2: no
    division, so a duplicate (zero offset) is accepted (0 >= 0).

    Each decision depends on the ones before it, so the positions are taken in blocks of ``block``: every test that
    the outcomes of the block's earlier positions can call for runs at once (2^L - 1 tests, one batched eigh of
    matrices cut to the block's last candidate), and the one outcome that agrees with its own tests is read off with
    two small matrix products. The decisions are those of testing one position at a time.
    """
    if block < 1:
        raise ValueError(f"greedy block must be at least 1, got {block}")
    b, m_cap = gram.shape[0], gram.shape[1]
    refit = greedy_test == "refit"
    # N_j starts with the m nearest candidates: under "refit" a set of at most m offsets lies in its own piece
    # (residual 0, accepted for any tau > 0); under "current" they span the first piece.
    first = max(1, min(piece_dim, m_cap))
    accepted: Optional[torch.Tensor] = None  # None: only the first positions, which the first block's tables hold
    for start in range(first, m_cap, block):
        positions = tuple(range(start, min(start + block, m_cap)))
        fitted, chosen, needed, top, sign, agree, outcome = _block_tables(
            positions, m_cap, piece_dim, tau, refit, accepted is None, gram.dtype, gram.device
        )
        size = fitted.shape[1]
        g = gram if size == m_cap else gram[:, :size, :size]
        if accepted is None:  # the same hypotheses for every anchor: tests x size
            mask = fitted
            masked = torch.einsum("ti,bij,tj->btij", mask, g, mask)
        else:  # B x tests x size
            mask = (accepted if size == m_cap else accepted[:, :size]).unsqueeze(1) + fitted
            masked = torch.einsum("bti,bij,btj->btij", mask, g, mask)
        evals, evecs = torch.linalg.eigh(masked)  # ascending
        if refit:
            # Weak directions included: their share is below the rank threshold (1e-10 of the top eigenvalue).
            in_piece = torch.einsum("btk,btik,btik,k,ti->bt", evals.clamp_min(0), evecs, evecs, top, chosen)
        else:
            floor = _RANK_EPS * evals[..., -1:].clamp_min(1e-300)
            inv = torch.where(evals > floor, evals, torch.full_like(evals, float("inf"))).reciprocal()
            coords = torch.einsum("btjk,bji,btj,ti->btk", evecs, g, mask.expand(b, -1, -1), chosen)
            in_piece = torch.einsum("btk,btk,btk,k->bt", coords, coords, inv, top)
        passed = (in_piece >= torch.einsum("bii,it->bt", gram, needed)).to(gram.dtype)  # B x tests
        # 1.0 on the outcome without a disagreement along its path; it joins the accepted ones.
        consistent = torch.addmm(agree, passed, sign).relu()
        accepted = torch.addmm(
            _first_members(first, m_cap, gram.dtype, gram.device) if accepted is None else accepted, consistent, outcome
        )
    if accepted is None:
        return _first_members(first, m_cap, gram.dtype, gram.device).expand(b, m_cap).clone()  # not the cached one
    return accepted


GREEDY_TESTS = ("refit", "current")


@functools.lru_cache(maxsize=32)
def _top_selection(count: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """size x count, column c picks entry size - 1 - c (cached constant): the top eigenpairs of an ascending eigh,
    largest first, inside the contraction that uses them."""
    select = torch.zeros(size, count, dtype=dtype)
    select[torch.arange(size - 1, size - 1 - count, -1), torch.arange(count)] = 1.0
    return select.to(device)


@functools.lru_cache(maxsize=32)
def _others_only(b: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """b x n, +inf on the diagonal and on the columns after the first b, 0 elsewhere (cached constant): added to
    squared distances it leaves only the other batch points as candidates."""
    mask = torch.zeros(b, n, dtype=dtype)
    mask[:, b:] = float("inf")
    mask[:, :b].fill_diagonal_(float("inf"))
    return mask.to(device)


def fit_pieces(
    x: torch.Tensor,
    *,
    piece_dim: int = 2,
    max_candidates: int = 10,
    tau: float = 0.5,
    subset_selection: bool = True,
    greedy_test: str = "refit",
    squared_distances: Optional[torch.Tensor] = None,
    greedy_block: Optional[int] = None,
) -> Pieces:
    """Fit one linear piece per row of ``x`` (B x d, teacher embeddings of a batch).

    piece_dim:         m, the subspace dimension (effective dimension min(m, |N_j|, rank)).
    max_candidates:    M, how many nearest batch points are considered for N_j (capped at B - 1).
    tau:               greedy acceptance threshold on the relative residual.
    subset_selection:  False is the "no subset selection" ablation: N_j = the M nearest candidates.
    greedy_test:       "refit": a candidate is tested under the piece refitted with it included (N_j starts with
                       the nearest neighbour); "current": the m nearest candidates span the first piece, and each
                       further candidate is tested against the piece of the members accepted so far (without it).
    squared_distances: the squared distances of ``x`` in float64 when the caller has them already
                       (distances.pairwise_squared_distances), to order the candidates: B x B, or n x n for n points
                       whose first B are ``x`` (the batch and the proxies).
    greedy_block:      candidate positions decided together (_greedy_members; None: default_greedy_block of x's
                       device); the result does not depend on it.
    """
    if greedy_test not in GREEDY_TESTS:
        raise ValueError(f"unknown greedy test {greedy_test!r}; choose one of {', '.join(GREEDY_TESTS)}")
    if x.dim() != 2:
        raise ValueError(f"fit_pieces expects a B x d matrix, got shape {tuple(x.shape)}")
    b, d = x.shape
    xd = as_float64(x.detach() if x.requires_grad else x)
    m_cap = max(0, min(max_candidates, b - 1))
    if m_cap == 0 or piece_dim == 0:
        return Pieces(
            anchors=xd,
            bases=xd.new_zeros(b, d, piece_dim),
            members=torch.zeros(b, b, dtype=torch.bool, device=x.device),
        )

    # Candidates: the other batch points by distance (ties by index), self (and any point after the batch's) excluded.
    squared = pairwise_squared_distances(xd) if squared_distances is None else squared_distances
    if squared.shape[0] != b:
        squared = squared[:b]
    key = squared.clamp_min(0) + _others_only(b, squared.shape[1], squared.dtype, squared.device)
    order = torch.sort(key, dim=1, stable=True).indices[:, :m_cap]  # B x M

    # Offsets of the candidates from their anchor and their inner products (Gram space of each anchor).
    offsets = xd[order] - xd.unsqueeze(1)  # B x M x d
    gram = torch.einsum("bmd,bnd->bmn", offsets, offsets)  # B x M x M
    if subset_selection:
        block = default_greedy_block(x.device) if greedy_block is None else greedy_block
        mask = _greedy_members(gram, piece_dim, tau, greedy_test, block)
    else:
        mask = gram.new_ones(b, m_cap)
    evals, evecs = torch.linalg.eigh(torch.einsum("bi,bij,bj->bij", mask, gram, mask))  # ascending
    # At most min(m, M, d) directions exist: the top ones, largest first. A direction exists when its eigenvalue is
    # above the rank threshold, relative to the largest: a prefix.
    k = min(piece_dim, m_cap, d)
    # l_k / eps > l_max is l_k > eps l_max, and false for every l_k when l_max <= 0 (l_k <= l_max): no clamp needed.
    present = evals * (1 / _RANK_EPS) > evals[:, -1:]  # B x M, ascending like evals
    # Column k of O^T V / sqrt(l_k) is the k-th principal direction. Built through the Gram matrix, a weak direction
    # is orthonormal to the others only to ~1e-6 at worst (l_k near the rank threshold); one Cholesky QR pass restores
    # orthonormality to machine precision, keeping the span of the prefix; absent directions stay zero columns.
    scale = torch.where(present, evals.rsqrt(), 0.0)  # rsqrt of an absent (tiny or negative) l_k is not used
    top = _top_selection(k, m_cap, evals.dtype, evals.device)  # the top k eigenpairs, largest first
    raw = torch.einsum("bMd,bM,bMK,bK,Kk->bdk", offsets, mask, evecs, scale, top)
    bases = orthonormal_basis(raw, passes=1)
    if k < piece_dim:
        bases = torch.nn.functional.pad(bases, (0, piece_dim - k))

    # Kept in float64: o = sqrt(||v||^2 - p^2) amplifies a projector that is orthonormal only to float32 precision
    # (~1e-7) into o ~ 1e-4 for points that lie on the piece.
    return Pieces(anchors=xd, bases=bases, candidates=order, accepted=mask, present=present[:, m_cap - k :])


@functools.lru_cache(maxsize=32)
def _ridge(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """m x m identity times the dtype's smallest normal number (cached constant): added to a Gram matrix it keeps the
    Cholesky factorisation defined for zero columns and changes nothing else (it is below every rounding)."""
    return (torch.eye(m, dtype=dtype) * torch.finfo(dtype).tiny).to(device)


def orthonormal_basis(raw: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Orthonormalise learnable piece parameters (... x d x m, m <= d) column by column: the Q of the QR
    factorisation whose R has a positive diagonal, so the map is continuous and the identity on bases that are
    already orthonormal. A zero column stays zero.

    Cholesky QR, twice ("CholeskyQR2": Q = A L^-T with L L^T = A^T A, repeated on Q, orthonormal to machine precision
    for condition numbers below ~1e7; pieces built from principal directions above the rank threshold stay below
    1e5): per pass a Gram product, an m x m Cholesky factorisation and a triangular solve, whatever m is. It is
    Gram-Schmidt's Q (the QR with a positive diagonal is unique) in a few batched operators, where CUDA's batched QR
    launches several kernels per matrix (timings: docs/benchmarks.md). Columns that are exactly dependent on earlier
    non-zero ones (which neither the pieces nor learnable proxies produce) have no Q: their Cholesky factor fails.
    ``passes=1`` is enough for columns that are already orthonormal to within ~1e-4 (error ~ eps cond^2).
    """
    # No half-precision kernels needed, but rounding in bf16 would lose orthonormality: work in float32 at least.
    work = raw.float() if raw.dtype in (torch.float16, torch.bfloat16) else raw
    d, m = work.shape[-2], work.shape[-1]
    if m > d:
        raise ValueError(f"orthonormal_basis: {m} columns cannot be orthonormal in dimension {d}")
    ridge = _ridge(m, work.dtype, work.device)
    q = work
    for _ in range(passes):
        # A zero column has a zero row and column in the Gram matrix: the ridge gives it a tiny pivot, and the
        # triangular solve maps the zero column to zero (no NaN, no gradient through it).
        gram = torch.baddbmm(ridge, q.mT, q) if q.dim() == 3 else q.mT @ q + ridge
        factor, _ = torch.linalg.cholesky_ex(gram, upper=True)  # R with R^T R = A^T A
        q = torch.linalg.solve_triangular(factor, q, upper=True, left=False)  # A R^-1
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
    # Absent directions (a suffix, since s is descending) are replaced by random ones; the QR then keeps the
    # valid principal directions as the leading columns and orthonormalises the completion against them.
    filled = torch.cat([torch.where(valid[:, None, :], top, random[:, :, :k]), random[:, :, k:]], dim=2)
    q = orthonormal_basis(filled)
    return q[:, :, :m].to(x.dtype)
