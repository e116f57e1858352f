"""Slow reference implementation of the PLM method, written straight from docs/method.md ("Linear pieces",
"Similarity", "Proxies", "Loss") with plain Python loops per point and per pair, in float64 numpy.

Deliberately independent of the package (no plm_lightning import, no torch): the vectorised implementation is
checked against it in test_reference_equality.py. Conventions shared with the package so that results are
comparable:
- candidates are ordered by distance to x_j, ties broken by the smaller index;
- a candidate with a zero offset (exact duplicate of x_j) is accepted (0 <= tau * 0);
- a principal direction whose squared singular value is <= 1e-10 x the largest squared singular value (or is 0)
  does not exist, so a piece has m_eff = min(m, |N_j|, rank) directions;
- the q most similar batch points of a proxy: ties broken by the lower index.
"""

from __future__ import annotations

import math

import numpy as np

RANK_EPS = 1e-10


def _as64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _norm(v: np.ndarray) -> float:
    return math.sqrt(sum(float(t) * float(t) for t in v))


def top_directions(offsets: np.ndarray, m: int) -> np.ndarray:
    """Top-m principal directions (uncentered PCA) of the rows of ``offsets`` (n x d): the top right-singular
    vectors, dropping directions with squared singular value <= RANK_EPS x the largest (or 0). Returns d x m_eff."""
    offsets = _as64(offsets)
    d = offsets.shape[1]
    if offsets.shape[0] == 0 or m == 0:
        return np.zeros((d, 0))
    _, sing, vt = np.linalg.svd(offsets, full_matrices=False)
    s2 = sing**2
    keep = []
    for r in range(min(m, len(s2))):
        if s2[r] > 0 and s2[r] > RANK_EPS * s2[0]:
            keep.append(r)
    return vt[keep].T.copy() if keep else np.zeros((d, 0))


def residual(v: np.ndarray, U: np.ndarray) -> float:
    """||(I - U U^T) v||."""
    return _norm(v - U @ (U.T @ v))


def candidates(X: np.ndarray, j: int, M: int) -> list[int]:
    """The other points by distance to x_j (ties: smaller index first), at most M of them."""
    X = _as64(X)
    others = [l for l in range(X.shape[0]) if l != j]
    others.sort(key=lambda l: (_norm(X[l] - X[j]), l))
    return others[: max(0, M)]


def fit_piece(
    X, j: int, m: int, M: int, tau: float, subset_selection: bool = True, greedy_test: str = "refit"
) -> tuple[list[int], np.ndarray]:
    """Neighbourhood N_j (sorted indices) and piece basis U_j (d x m_eff, orthonormal) of point x_j.

    greedy_test "refit": N_j starts with the nearest candidate; each next candidate joins if its relative residual
    under the piece fitted to N_j plus itself is <= tau. "current": N_j starts with the m nearest candidates; each
    next one joins if its relative residual under the piece fitted to N_j (without it) is <= tau."""
    X = _as64(X)
    d = X.shape[1]
    cands = candidates(X, j, M)
    if not cands or m == 0:
        return [], np.zeros((d, 0))
    if subset_selection:
        first = 1 if greedy_test == "refit" else max(1, min(m, len(cands)))
        members = list(cands[:first])
        for c in cands[first:]:
            fitted = members + [c] if greedy_test == "refit" else members
            U = top_directions(np.stack([X[l] - X[j] for l in fitted]), m)
            v = X[c] - X[j]
            if residual(v, U) <= tau * _norm(v):
                members = members + [c]
    else:
        members = list(cands)
    U = top_directions(np.stack([X[l] - X[j] for l in members]), m)
    return sorted(members), U


def fit_all_pieces(
    X, m: int, M: int, tau: float, subset_selection: bool = True, greedy_test: str = "refit"
) -> list[tuple[list[int], np.ndarray]]:
    X = _as64(X)
    return [fit_piece(X, j, m, M, tau, subset_selection, greedy_test) for j in range(X.shape[0])]


def o_p(x_i, x_j, U_j) -> tuple[float, float]:
    """Orthogonal distance of x_i from the piece (x_j, U_j) and in-plane distance ||U U^T (x_i - x_j)||."""
    v = _as64(x_i) - _as64(x_j)
    U = _as64(U_j)
    proj = U @ (U.T @ v)
    return _norm(v - proj), _norm(proj)


def s_directed(o: float, p: float, n_alpha: float, n_beta: float) -> float:
    return (1 + o / 2) ** (-n_alpha) * (1 + p) ** (-n_beta)


def batch_scale(X) -> float:
    """sqrt(2) / the median distance over the pairs i < j (the lower median for an even count); 1 if it is 0."""
    X = _as64(X)
    B = X.shape[0]
    dists = sorted(_norm(X[i] - X[j]) for i in range(B) for j in range(i + 1, B))
    if not dists:
        return 1.0
    median = dists[(len(dists) - 1) // 2]
    return math.sqrt(2) / median if median > 0 else 1.0


def pairwise_similarity(X, pieces, n_alpha: float = 4.0, n_beta: float = 1.0, scale: float = 1.0) -> np.ndarray:
    """s(i, j) = (s'(i, j) + s'(j, i)) / 2, s(i, i) = 1; s'(i, j) uses the piece of x_j (pieces from fit_all_pieces).
    o and p are multiplied by ``scale`` (1: the paper's absolute distances; batch_scale(X): distance_scale=batch)."""
    X = _as64(X)
    B = X.shape[0]

    def sd(i, j):
        o, p = o_p(X[i], X[j], pieces[j][1])
        return s_directed(scale * o, scale * p, n_alpha, n_beta)

    S = np.empty((B, B))
    for i in range(B):
        for j in range(B):
            S[i, j] = 1.0 if i == j else (sd(i, j) + sd(j, i)) / 2
    return S


def proxy_similarity(X, pieces, R, V, n_alpha: float = 4.0, n_beta: float = 1.0, scale: float = 1.0) -> np.ndarray:
    """s(i, k) = (s'(i, k) with the proxy piece (rho_k, V_k) + s'(k, i) with x_i's own piece) / 2: B x K."""
    X, R, V = _as64(X), _as64(R), _as64(V)
    B, K = X.shape[0], R.shape[0]
    S = np.empty((B, K))
    for i in range(B):
        for k in range(K):
            o, p = o_p(X[i], R[k], V[k])
            to_proxy = s_directed(scale * o, scale * p, n_alpha, n_beta)
            o, p = o_p(R[k], X[i], pieces[i][1])
            from_proxy = s_directed(scale * o, scale * p, n_alpha, n_beta)
            S[i, k] = (to_proxy + from_proxy) / 2
    return S


def point_loss(Z, S, delta: float = 1.0) -> float:
    """Mean over ordered pairs i != j of (delta (1 - s(i, j)) - ||z_i - z_j||)^2."""
    Z, S = _as64(Z), _as64(S)
    B = Z.shape[0]
    terms = []
    for i in range(B):
        for j in range(B):
            if i != j:
                terms.append((delta * (1 - S[i, j]) - _norm(Z[i] - Z[j])) ** 2)
    return sum(terms) / len(terms) if terms else 0.0


def proxy_loss(Z, R, S_proxy, delta: float = 1.0, nearest=None) -> float:
    """Mean over i, k of (delta (1 - s(i, k)) - ||z_i - rho_k||)^2; with ``nearest`` = q, k runs over the q proxies
    most similar to x_i (ties: lower proxy index first)."""
    Z, R, S = _as64(Z), _as64(R), _as64(S_proxy)
    terms = []
    for i in range(Z.shape[0]):
        proxies = sorted(range(R.shape[0]), key=lambda k: (-S[i, k], k))
        for k in proxies[: nearest if nearest is not None else len(proxies)]:
            terms.append((delta * (1 - S[i, k]) - _norm(Z[i] - R[k])) ** 2)
    return sum(terms) / len(terms)


def most_similar(S_proxy, k: int, q: int) -> list[int]:
    """The q batch points most similar to proxy k (ties: lower index first)."""
    S = _as64(S_proxy)
    order = sorted(range(S.shape[0]), key=lambda i: (-S[i, k], i))
    return order[: min(q, S.shape[0])]


def neighbourhood_loss(X, S_proxy, R, V, q: int) -> float:
    """Mean over proxies k and their q most similar batch points i of ||(I - V_k V_k^T)(x_i - rho_k)||^2."""
    X, R, V = _as64(X), _as64(R), _as64(V)
    terms = []
    for k in range(R.shape[0]):
        for i in most_similar(S_proxy, k, q):
            terms.append(residual(X[i] - R[k], V[k]) ** 2)
    return sum(terms) / len(terms)
