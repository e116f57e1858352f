"""Exact retrieval metrics from the ranks of each query's positives (no top-k search).

Every ranking metric of the protocol (docs/protocols.md) is a function of the *ranks of the positives*:
the rank of a positive p of query q is the number of gallery items ordered before p, in the order
of :func:`~plm_lightning.retrieval.search.knn_search`: by (distance, gallery index), the query
itself removed by index in same-set mode. With the positives of q sorted in that order,
ranks ``r_0 < r_1 < ... < r_{R-1}`` (R = number of positives):

* Recall@K (hit rate) = [r_0 < K], for every K at once;
* MAP@R = (1/R) sum_{j : r_j < R} (j + 1) / (r_j + 1);  R-precision = #{j : r_j < R} / R.

So only *counts* are needed: no top-1000 heap and no N x 1000 result arrays. Only ranks below a
per-slot limit matter (``max(max(ks), R)`` for the nearest positive, R for the others); a slot
whose count has reached its limit is dropped ("inactive") and reported as rank >= limit.

The ordering distance is the canonical one of ``search.py`` (float64 sum of squared differences in
index order, rounded to float32; :func:`canonical_sq_dist`). Most comparisons use a float32 GEMM
distance with a rigorous error bound; only pairs within that bound of a positive's distance (the
*uncertainty band*) are recomputed canonically and ordered by (distance, gallery index). Same-set
mode computes only tiles (I, J) with I <= J. Why the counts are exact, step by step:
docs/exact_ranks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["RANK_BEYOND", "PositiveRanks", "canonical_sq_dist", "positive_ranks"]

#: Rank reported for a positive whose rank is not below its slot's limit.
RANK_BEYOND = torch.iinfo(torch.int64).max

_U = 2.0**-24  # float32 unit roundoff
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_SMALLEST_NORMAL = 2.0**-126
# Bytes per tile entry: the float32 distance tile, plus slack for the per-slice temporaries.
_BYTES_PER_TILE_ENTRY = 8
# Width of the first column slice of a tile; later slices double.
_FIRST_SLICE = 256
# Gallery items screened together by their minimum distance.
_GROUP = 32


@dataclass
class PositiveRanks:
    """Ranks of each query's positives.

    Attributes:
        ranks: ``[nq, m]`` int64, row q sorted ascending: the rank of its j-th positive in the
            (distance, index) order if that rank is below the slot's limit, else ``RANK_BEYOND``
            (also in the padding columns beyond the query's positives).
        num_positives: ``[nq]`` int64, the number R of positives of each query.
        limits: ``[nq, m]`` int64, the slot limits that were used (0 in padding columns).
    """

    ranks: torch.Tensor
    num_positives: torch.Tensor
    limits: torch.Tensor


def canonical_sq_dist(
    query: torch.Tensor,
    gallery: torch.Tensor,
    qidx: torch.Tensor,
    gidx: torch.Tensor,
    max_pairs: int = 1 << 13,
) -> torch.Tensor:
    """Canonical squared distances of the pairs ``(qidx[i], gidx[i])`` as float32 ``[M]``.

    ``query`` / ``gallery`` are float32 ``[n, d]``. The value is the float64 sum of
    (g_j - q_j)^2 for j = 0..d-1 in this order, rounded to float32, with element-wise operations
    only: bit-identical to ``search._exact_sq_dist`` on any device.
    """
    out = torch.empty(qidx.shape[0], dtype=torch.float32, device=query.device)
    d = query.shape[1]
    for s in range(0, qidx.shape[0], max_pairs):
        qi, gi = qidx[s : s + max_pairs], gidx[s : s + max_pairs]
        # [d, c] float32: one contiguous row per dimension.
        q_cols = query.index_select(0, qi).T.contiguous()
        g_cols = gallery.index_select(0, gi).T.contiguous()
        acc = torch.zeros(qi.shape[0], dtype=torch.float64, device=query.device)
        term = torch.empty_like(acc)
        for j in range(d):
            term.copy_(g_cols[j])
            term.sub_(q_cols[j].double())
            term.mul_(term)
            acc.add_(term)
        out[s : s + max_pairs] = acc.float()
    return out


def positive_ranks(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    *,
    best_limit: int,
    all_positives: bool = True,
    memory_budget_mb: float = 256.0,
    tile: int | None = None,
) -> PositiveRanks:
    """Exact ranks of the positives of every query, by (canonical distance, gallery index).

    Args:
        query: ``[nq, d]`` float32 embeddings (already cast / normalised as wanted).
        query_labels: ``[nq]`` integer labels.
        gallery, gallery_labels: the gallery; ``None`` for same-set mode (gallery = query set,
            the query itself removed by index, symmetric tiles).
        best_limit: the nearest positive's rank is exact if below ``max(best_limit, R)``
            (``max(ks)`` for Recall@K).
        all_positives: also rank the other positives (exact below R, for MAP@R and
            R-precision); otherwise only the nearest one.
        memory_budget_mb: bounds the distance tile and the other temporaries.
        tile: tile side (rows = columns); default from the budget.
    """
    same_set = gallery is None
    if gallery is None:
        gallery, gallery_labels = query, query_labels
    device = query.device
    nq, ng, d = query.shape[0], gallery.shape[0], query.shape[1]
    budget = max(1, int(memory_budget_mb * 2**20))

    q_sq = query.double().square().sum(1)
    g_sq = q_sq if same_set else gallery.double().square().sum(1)
    # Canonical pairs are processed in chunks: two [d, c] float32 gathers + float64 vectors.
    pair_chunk = max(256, min(1 << 13, budget // (d * 16 + 64)))

    q_lab = torch.as_tensor(query_labels).to(device)
    g_lab = q_lab if same_set else torch.as_tensor(gallery_labels).to(device)
    dist, pos_idx, valid = _positive_distances(
        query, q_lab, gallery, g_lab, same_set, q_sq, g_sq, max(1, budget // 4), pair_chunk
    )
    num_positives = valid.sum(1)
    dist, pos_idx = _sorted_slots(dist, pos_idx, valid, num_positives, ng, all_positives)
    m = dist.shape[1]
    limits, real = _slot_limits(num_positives, m, best_limit, all_positives)
    if m == 0 or nq == 0:
        ranks = torch.full((nq, m), RANK_BEYOND, dtype=torch.int64, device=device)
        return PositiveRanks(ranks, num_positives, limits)

    lower, upper = _band_bounds(dist, real, q_sq, g_sq, same_set, d)
    row_base = torch.arange(nq, device=device, dtype=torch.int64) << 32
    seq_lower = (row_base.unsqueeze(1) + _ordered_key(lower)).reshape(-1)
    seq_upper = (row_base.unsqueeze(1) + _ordered_key(upper)).reshape(-1)

    state = _State(
        q_lab=q_lab,
        g_lab=g_lab,
        slot=torch.arange(m, device=device).unsqueeze(0),
        counts=torch.zeros(nq, m, dtype=torch.int64, device=device),
        limits=limits,
        upper=upper,
        dist=dist,
        pos_idx=pos_idx,
        seq_lower=seq_lower,
        seq_upper=seq_upper,
        active=torch.zeros(nq, dtype=torch.int64, device=device),
        theta=torch.empty(nq, dtype=torch.float32, device=device),
        band_q=[],
        band_g=[],
        band_u=[],
        band_size=0,
        band_resolved=0,
        group_chunk=max(64, budget // (_GROUP * 512)),
        band_limit=max(1 << 14, budget // (16 + 8 * m + 32)),
        query=query,
        gallery=gallery,
        pair_chunk=pair_chunk,
    )
    state.refresh(slice(None))
    _scan_distance_tiles(state, query, gallery, q_sq, g_sq, same_set, budget, tile)

    # Rank of slot j = negatives before it + the j positives before it.
    rank = state.counts + state.slot
    ranks = torch.where(rank < limits, rank, RANK_BEYOND)
    return PositiveRanks(ranks, num_positives, limits)


def _sorted_slots(
    dist: torch.Tensor,
    pos_idx: torch.Tensor,
    valid: torch.Tensor,
    num_positives: torch.Tensor,
    ng: int,
    all_positives: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots: each query's positives sorted by (canonical distance, gallery index), padding last; m columns
    (the most positives of any query, or 1 with ``all_positives=False``)."""
    dist = torch.where(valid, dist, float("inf"))
    pos_idx = torch.where(valid, pos_idx, ng)  # padding sorts last
    pos_idx, order = pos_idx.sort(dim=1)
    dist = dist.gather(1, order)
    dist, order = dist.sort(dim=1, stable=True)
    pos_idx = pos_idx.gather(1, order)
    m = int(num_positives.max()) if dist.shape[0] and pos_idx.shape[1] else 0
    if not all_positives:
        m = min(m, 1)
    return dist[:, :m].contiguous(), pos_idx[:, :m].contiguous()


def _slot_limits(
    num_positives: torch.Tensor, m: int, best_limit: int, all_positives: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slot, the rank at or beyond which it is not needed (0 for padding), and which slots are real."""
    nq, device = num_positives.shape[0], num_positives.device
    slots = torch.arange(m, device=device).unsqueeze(0)
    real = slots < num_positives.unsqueeze(1)
    limits = torch.zeros(nq, m, dtype=torch.int64, device=device)
    if m:
        limits[:, 0] = num_positives.clamp(min=best_limit) if all_positives else best_limit
        if m > 1:
            limits[:, 1:] = num_positives.unsqueeze(1)
        limits[~real] = 0
    return limits, real


def _band_bounds(
    dist: torch.Tensor, real: torch.Tensor, q_sq: torch.Tensor, g_sq: torch.Tensor, same_set: bool, d: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The error bound of the fast float32 distance per query, widened into each slot's band [lower, upper] of
    distances that need the canonical distance to decide (docs/exact_ranks.md); inf for padding."""
    other_max_sq = float(g_sq.max())
    if same_set:
        other_max_sq = max(other_max_sq, float(q_sq.max()))
    if 2.0 * (float(q_sq.max()) + float(g_sq.max())) > _FLOAT32_MAX / 4:
        raise ValueError("embedding norms are too large for float32 distance computation")
    gamma = (d + 2) * _U / (1.0 - (d + 2) * _U)
    q_norm, m_norm = q_sq.sqrt(), math.sqrt(other_max_sq)
    eps = 1.01 * (gamma * (2.0 * q_norm * m_norm + q_sq + other_max_sq) + 4.0 * _U * (q_sq + other_max_sq))
    eps_wide = (eps * (1.0 + 2.0**-8) + _SMALLEST_NORMAL).unsqueeze(1)
    lower = _round_down(dist.double() - eps_wide)
    upper = _round_up(dist.double() + eps_wide)
    lower[~real] = float("inf")
    upper[~real] = float("inf")
    return lower, upper


def _scan_distance_tiles(
    state: _State,
    query: torch.Tensor,
    gallery: torch.Tensor,
    q_sq: torch.Tensor,
    g_sq: torch.Tensor,
    same_set: bool,
    budget: int,
    tile: int | None,
) -> None:
    """Every query-gallery distance once, in square tiles sized from the budget (same-set: the upper triangle,
    each tile scanned in both directions), counted into ``state``."""
    nq, ng, device = query.shape[0], gallery.shape[0], query.device
    if tile is None:
        tile = max(1, math.isqrt(budget // _BYTES_PER_TILE_ENTRY))
        if tile > 4 * _GROUP:
            tile -= tile % _GROUP
    tile = max(1, int(tile))
    row_tile = min(tile, nq)
    col_tile = min(tile, ng)
    dist_buf = torch.empty(row_tile * col_tile, dtype=torch.float32, device=device)
    q_sq32 = q_sq.float()
    g_sq32 = q_sq32 if same_set else g_sq.float()

    with _full_float32_matmul():
        if same_set:
            starts = list(range(0, nq, row_tile))
            for bi, r0 in enumerate(starts):
                r1 = min(nq, r0 + row_tile)
                rows_aug = _augment(query[r0:r1], q_sq32[r0:r1], as_rows=True)
                for c0 in starts[bi:]:
                    c1 = min(nq, c0 + row_tile)
                    cols_aug = _augment(query[c0:c1], q_sq32[c0:c1], as_rows=False)
                    a = dist_buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                    torch.mm(rows_aug, cols_aug.T, out=a)
                    state.scan(a, r0, c0, transpose=False)
                    if c0 != r0:
                        state.scan(a, r0, c0, transpose=True)
        else:
            for r0 in range(0, nq, row_tile):
                r1 = min(nq, r0 + row_tile)
                rows_aug = _augment(query[r0:r1], q_sq32[r0:r1], as_rows=True)
                for c0 in range(0, ng, col_tile):
                    c1 = min(ng, c0 + col_tile)
                    cols_aug = _augment(gallery[c0:c1], g_sq32[c0:c1], as_rows=False)
                    a = dist_buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                    torch.mm(rows_aug, cols_aug.T, out=a)
                    state.scan(a, r0, c0, transpose=False)
    state.flush_band()


# --------------------------------------------------------------------------------------------


@dataclass
class _State:
    q_lab: torch.Tensor  # [nq] query labels
    g_lab: torch.Tensor  # [ng] gallery labels
    slot: torch.Tensor  # [1, m] slot numbers j (= positives before slot j)
    counts: torch.Tensor  # [nq, m] negatives known to be before each slot (a lower bound)
    limits: torch.Tensor  # [nq, m]
    upper: torch.Tensor  # [nq, m] float32 U per slot (inf for padding)
    dist: torch.Tensor  # [nq, m] canonical distance per slot (inf for padding)
    pos_idx: torch.Tensor  # [nq, m] gallery index per slot (ng for padding)
    seq_lower: torch.Tensor  # [nq * m] int64 keys (row << 32) + ordered(L)
    seq_upper: torch.Tensor  # [nq * m] int64 keys (row << 32) + ordered(U)
    active: torch.Tensor  # [nq] number of active slots (a prefix)
    theta: torch.Tensor  # [nq] float32: items with fast distance >= theta cannot matter
    band_q: list[torch.Tensor]  # buffered band items: query, gallery item, b_U
    band_g: list[torch.Tensor]
    band_u: list[torch.Tensor]
    band_size: int
    band_resolved: int  # statistics: band items resolved exactly
    group_chunk: int  # candidate groups compared entry by entry at once
    band_limit: int
    query: torch.Tensor
    gallery: torch.Tensor
    pair_chunk: int

    def refresh(self, rows: torch.Tensor | slice) -> None:
        """Recompute the active prefix and theta of the given queries."""
        counts, limits, upper = self.counts[rows], self.limits[rows], self.upper[rows]
        active = (counts + self.slot < limits).sum(1)
        self.active[rows] = active
        last = upper.gather(1, (active - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        self.theta[rows] = torch.where(active > 0, last, float("-inf"))

    def scan(self, a: torch.Tensor, r0: int, c0: int, *, transpose: bool) -> None:
        """Count the items of tile ``a`` (rows r0.., columns c0..) for its row or column queries.

        Without ``transpose`` the queries are the rows (gallery items the columns); with it, the
        queries are the columns. The tile is taken in slices of the gallery side of growing width,
        updating the queries' thresholds in between.
        """
        rows, cols = a.shape
        num_q, num_g = (cols, rows) if transpose else (rows, cols)
        q0, g0 = (c0, r0) if transpose else (r0, c0)
        # Minimum of each group of _GROUP consecutive gallery items (one pass over the tile).
        full = (num_g // _GROUP) * _GROUP
        if transpose:
            gmin = a[:full].view(full // _GROUP, _GROUP, cols).amin(1)  # [groups, queries]
        else:
            gmin = a[:, :full].view(rows, full // _GROUP, _GROUP).amin(2)  # [queries, groups]
        lane = torch.arange(_GROUP, device=a.device)
        flat_a = a.view(-1)
        width, start = _FIRST_SLICE, 0
        while start < num_g:
            stop = min(num_g, start + width)
            width *= 2
            # Groups of this slice whose minimum reaches below their query's theta.
            g_lo, g_hi = start // _GROUP, min(stop, full) // _GROUP
            if g_hi > g_lo:
                theta = self.theta[q0 : q0 + num_q]
                if transpose:
                    gg, qg = torch.nonzero(gmin[g_lo:g_hi] < theta.unsqueeze(0), as_tuple=True)
                else:
                    qg, gg = torch.nonzero(gmin[:, g_lo:g_hi] < theta.unsqueeze(1), as_tuple=True)
                gg += g_lo
                # Entry by entry, in chunks that bound the temporaries (thresholds refreshed
                # after each chunk).
                for c in range(0, qg.shape[0], self.group_chunk):
                    qc, gc = qg[c : c + self.group_chunk], gg[c : c + self.group_chunk]
                    if transpose:  # element (gallery row gc*G + lane, query column qc)
                        flat = ((gc * _GROUP).unsqueeze(1) + lane) * cols + qc.unsqueeze(1)
                    else:
                        flat = (qc * cols + gc * _GROUP).unsqueeze(1) + lane
                    vals = flat_a.index_select(0, flat.view(-1)).view(flat.shape)
                    theta_c = self.theta.index_select(0, qc + q0).unsqueeze(1)
                    k, off = torch.nonzero(vals < theta_c, as_tuple=True)
                    self._take(qc[k] + q0, gc[k] * _GROUP + off + g0, vals[k, off], q0, num_q)
            lo = max(start, full)
            if stop > lo:  # the last, incomplete group: directly
                theta = self.theta[q0 : q0 + num_q]
                if transpose:
                    rest = a[lo:stop]  # [gallery, queries]
                    gr, qr = torch.nonzero(rest < theta.unsqueeze(0), as_tuple=True)
                    values = rest[gr, qr]
                else:
                    rest = a[:, lo:stop]
                    qr, gr = torch.nonzero(rest < theta.unsqueeze(1), as_tuple=True)
                    values = rest[qr, gr]
                self._take(qr + q0, gr + lo + g0, values, q0, num_q)
            start = stop

    def _take(self, qi: torch.Tensor, gi: torch.Tensor, values: torch.Tensor, q0: int, num_q: int) -> None:
        """Count selected (query, gallery item, fast distance) triples; positives are skipped."""
        # Positives are ordered among themselves already (slots); count negatives only (this
        # also removes the query itself on diagonal tiles).
        keep = torch.nonzero(self.g_lab.index_select(0, gi) != self.q_lab.index_select(0, qi)).squeeze(1)
        if keep.numel():
            qi, gi = qi.index_select(0, keep), gi.index_select(0, keep)
            self._count(qi, gi, values.index_select(0, keep), q0, num_q)

    def _count(self, qi: torch.Tensor, gi: torch.Tensor, values: torch.Tensor, q0: int, num_q: int) -> None:
        m = self.counts.shape[1]
        base = (qi - q0) * m
        key = (qi << 32) + _ordered_key(values)
        # Only this tile's queries' thresholds (small, cache-resident sequences).
        seq_lower = self.seq_lower[q0 * m : (q0 + num_q) * m]
        seq_upper = self.seq_upper[q0 * m : (q0 + num_q) * m]
        b_lower = torch.searchsorted(seq_lower, key, right=True) - base
        b_upper = torch.searchsorted(seq_upper, key, right=True) - base
        band = b_upper < torch.minimum(b_lower, self.active[qi])
        if bool(band.any()):
            self.band_q.append(qi[band])
            self.band_g.append(gi[band])
            self.band_u.append(b_upper[band])
            self.band_size += int(band.sum())
            sure = ~band
            qi, b_lower = qi[sure], b_lower[sure]
        if qi.numel():
            # Histogram of buckets per query of the tile, then a cumulative sum: items before
            # each slot.
            flat = (qi - q0) * (m + 1) + b_lower
            hist = torch.bincount(flat, minlength=num_q * (m + 1)).view(num_q, m + 1)
            self.counts[q0 : q0 + num_q] += hist.cumsum(1)[:, :m]
            self.refresh(slice(q0, q0 + num_q))
        if self.band_size >= self.band_limit:
            self.flush_band()

    def flush_band(self) -> None:
        """Resolve the buffered band items with canonical distances (exact (D, index) order).

        An item buffered for slots ``[b_U, b_L)`` of its query is dropped if all those slots have
        become inactive meanwhile (``b_U >= active``): its count only matters to slots j >= b_U,
        which are all inactive (their counts are then lower bounds already >= their limits).
        Activity only decreases, so resolving late (at the end, or when the buffer is full)
        resolves only the items that can still change a reported rank.
        """
        if not self.band_q:
            return
        qi, gi = torch.cat(self.band_q), torch.cat(self.band_g)
        b_upper = torch.cat(self.band_u)
        self.band_q, self.band_g, self.band_u, self.band_size = [], [], [], 0
        live = torch.nonzero(b_upper < self.active.index_select(0, qi)).squeeze(1)
        qi, gi = qi.index_select(0, live), gi.index_select(0, live)
        self.band_resolved += qi.shape[0]
        m = self.counts.shape[1]
        for s in range(0, qi.shape[0], self.pair_chunk):
            q, g = qi[s : s + self.pair_chunk], gi[s : s + self.pair_chunk]
            dg = canonical_sq_dist(self.query, self.gallery, q, g, self.pair_chunk)
            slot_d, slot_i = self.dist[q], self.pos_idx[q]
            dg, g = dg.unsqueeze(1), g.unsqueeze(1)
            # b = number of slots (D_p, p) <= (D_g, g): the item is before slots j >= b.
            b = ((slot_d < dg) | ((slot_d == dg) & (slot_i <= g))).sum(1)
            before = torch.arange(m, device=q.device).unsqueeze(0) >= b.unsqueeze(1)
            self.counts.index_add_(0, q, before.long())
        self.refresh(slice(None))


def _augment(x: torch.Tensor, sq: torch.Tensor, *, as_rows: bool) -> torch.Tensor:
    """``[x, |x|^2, 1]`` (rows) or ``[-2x, 1, |x|^2]`` (columns): their products are
    ``|x|^2 + |y|^2 - 2 x.y`` in one GEMM of depth d + 2 (the scaling by -2 is exact)."""
    one = torch.ones_like(sq).unsqueeze(1)
    if as_rows:
        return torch.cat([x, sq.unsqueeze(1), one], dim=1)
    return torch.cat([x * -2.0, one, sq.unsqueeze(1)], dim=1)


def _positive_distances(
    query: torch.Tensor,
    q_lab: torch.Tensor,
    gallery: torch.Tensor,
    g_lab: torch.Tensor,
    same_set: bool,
    q_sq: torch.Tensor,
    g_sq: torch.Tensor,
    budget: int,
    pair_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical distances from every query to its positives (same-label gallery items).

    Returns ``(dist [nq, w] float32, gallery index [nq, w], valid [nq, w])``, w = the largest
    class in the gallery. Computed class by class with float64 Gram matrices (classes of similar
    size batched together): S = |q|^2 + |g|^2 - 2 q.g in float64 is within
    e = 8 gamma_{d+2} (|q|^2 + |g|^2) (float64 gamma) of the canonical float64 sum, so when
    ``S - e`` and ``S + e`` round to the same float32 that is the canonical distance (rounding is
    monotone). The few other pairs (near-duplicates, rounding ties) use
    :func:`canonical_sq_dist`.
    """
    device = query.device
    nq, ng, d = query.shape[0], gallery.shape[0], query.shape[1]
    q_order = torch.argsort(q_lab, stable=True)
    g_order = q_order if same_set else torch.argsort(g_lab, stable=True)
    uq, cq = torch.unique_consecutive(q_lab[q_order], return_counts=True)
    ug, cg = torch.unique_consecutive(g_lab[g_order], return_counts=True)
    sq_start = cq.cumsum(0) - cq
    sg_start_all = cg.cumsum(0) - cg
    # Gallery class of each query class (if any).
    pos = torch.searchsorted(ug, uq).clamp(max=max(0, ug.shape[0] - 1))
    present = (ug[pos] == uq) if ug.numel() else torch.zeros_like(uq, dtype=torch.bool)
    classes = torch.nonzero(present).squeeze(1)
    cq, sq_start = cq[classes], sq_start[classes]
    cg, sg_start = cg[pos[classes]], sg_start_all[pos[classes]]
    width = int(cg.max()) if classes.numel() else 0

    dist = torch.full((nq, width), float("inf"), dtype=torch.float32, device=device)
    idx = torch.zeros(nq, width, dtype=torch.int64, device=device)
    valid = torch.zeros(nq, width, dtype=torch.bool, device=device)
    if width == 0:
        return dist, idx, valid

    # Batches of classes of similar size (sorted by gallery then query size).
    by_size = torch.argsort(cg * (int(cq.max()) + 1) + cq)
    cq_l, cg_l = cq[by_size].tolist(), cg[by_size].tolist()
    gamma = (d + 2) * 2.0**-53 / (1.0 - (d + 2) * 2.0**-53)
    start = 0
    while start < len(cq_l):
        stop, pq, pg = start, 0, 0
        while stop < len(cq_l):
            npq, npg = max(pq, cq_l[stop]), max(pg, cg_l[stop])
            if stop > start and (stop + 1 - start) * (npq * npg + (npq + npg) * d) * 8 > budget:
                break
            pq, pg, stop = npq, npg, stop + 1
        batch = by_size[start:stop]
        start = stop
        ar_q = torch.arange(pq, device=device).unsqueeze(0)
        ar_g = torch.arange(pg, device=device).unsqueeze(0)
        q_ok = ar_q < cq[batch].unsqueeze(1)  # [b, pq]
        g_ok = ar_g < cg[batch].unsqueeze(1)  # [b, pg]
        qi = q_order[(sq_start[batch].unsqueeze(1) + ar_q).clamp(max=nq - 1)]
        gi = g_order[(sg_start[batch].unsqueeze(1) + ar_g).clamp(max=ng - 1)]
        qx, gx = query[qi].double(), gallery[gi].double()  # [b, pq, d], [b, pg, d]
        qs, gs = q_sq[qi], g_sq[gi]
        total = qs.unsqueeze(2) + gs.unsqueeze(1)  # [b, pq, pg]
        s64 = torch.baddbmm(total, qx, gx.transpose(1, 2), alpha=-2.0)
        del qx, gx
        err = (8.0 * 1.001 * gamma) * total
        lo, hi = (s64 - err).float(), (s64 + err).float()
        d32 = torch.where(lo == hi, lo, float("nan"))
        ok = q_ok.unsqueeze(2) & g_ok.unsqueeze(1)
        rows = qi[q_ok]  # the queries of this batch, [k]
        d_rows = d32[q_ok]  # [k, pg]
        g_rows = gi.unsqueeze(1).expand(-1, pq, -1)[q_ok]  # [k, pg]
        ok_rows = ok[q_ok]
        if same_set:
            ok_rows &= g_rows != rows.unsqueeze(1)
        dist[rows, :pg] = d_rows
        idx[rows, :pg] = g_rows
        valid[rows, :pg] = ok_rows

    # Undecided pairs: canonical float64 sum.
    undecided = valid & torch.isnan(dist)
    if bool(undecided.any()):
        rows = torch.arange(nq, device=device).unsqueeze(1).expand_as(undecided)[undecided]
        dist[undecided] = canonical_sq_dist(query, gallery, rows, idx[undecided], pair_chunk)
    return dist, idx, valid


def _ordered_key(x: torch.Tensor) -> torch.Tensor:
    """int64 image of float32 values that preserves their order (-0.0 sorts before +0.0)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, -1 - (bits & 0x7FFFFFFF), bits)


def _round_down(x: torch.Tensor) -> torch.Tensor:
    """float64 -> the largest float32 <= x."""
    f = x.float()
    return torch.where(f.double() > x, torch.nextafter(f, torch.full_like(f, -math.inf)), f)


def _round_up(x: torch.Tensor) -> torch.Tensor:
    """float64 -> the smallest float32 >= x."""
    f = x.float()
    return torch.where(f.double() < x, torch.nextafter(f, torch.full_like(f, math.inf)), f)


class _full_float32_matmul:
    """TF32 / bf16 matmuls would void the error bound of the fast distance."""

    def __enter__(self) -> None:
        self.previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc: object) -> None:  # exceptions propagate
        torch.set_float32_matmul_precision(self.previous)
