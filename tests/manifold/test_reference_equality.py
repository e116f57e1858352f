"""The vectorised PLM implementation against the slow loop-per-point reference in reference.py (docs/method.md).

Pieces are compared by their neighbourhoods (exactly) and their projection matrices U U^T (bases are unique only up
to a rotation within the subspace); similarities and loss terms within 1e-5.
"""

import itertools

import numpy as np
import pytest
import reference as ref
import torch

from plm_lightning.manifold import (
    Pieces,
    PLMLoss,
    PLMSimilarity,
    ProxyManifold,
    fit_pieces,
    neighbourhood_loss,
    orthonormal_basis,
    piece_distances,
    point_loss,
    proxy_loss,
)

TOL = 1e-5


# ----------------------------------------------------------------------------------------------------------- helpers
def _t(a, dtype=torch.float64):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _projection(U) -> np.ndarray:
    U = np.asarray(U, dtype=np.float64)
    return U @ U.T


def _ref_pieces_as_package(X, pieces, m) -> Pieces:
    """The reference's pieces in the package's format (absent directions as zero columns)."""
    B, d = X.shape
    bases = np.zeros((B, d, m))
    members = np.zeros((B, B), dtype=bool)
    for j, (mem, U) in enumerate(pieces):
        bases[j, :, : U.shape[1]] = U
        members[j, mem] = True
    return Pieces(anchors=_t(X), bases=_t(bases), members=torch.as_tensor(members))


def assert_pieces_match(X, m, M, tau, subset_selection, context="", greedy_test="refit"):
    """Fits pieces both ways and checks members exactly and U U^T within TOL. Returns (package, reference) pieces."""
    got = fit_pieces(
        _t(X), piece_dim=m, max_candidates=M, tau=tau, subset_selection=subset_selection, greedy_test=greedy_test
    )
    want = ref.fit_all_pieces(X, m, M, tau, subset_selection, greedy_test)
    assert got.bases.shape == (X.shape[0], X.shape[1], m)  # B x d x m, absent directions as zero columns
    for j, (mem, U) in enumerate(want):
        got_members = torch.nonzero(got.members[j]).flatten().tolist()
        assert got_members == mem, f"{context} members of point {j}: package {got_members}, reference {mem}"
        assert int(got.dims[j]) == U.shape[1], f"{context} piece dimension of point {j}"
        diff = np.abs(_projection(got.bases[j].numpy()) - _projection(U)).max()
        assert diff <= TOL, f"{context} projection of point {j} differs by {diff}"
    return got, want


def random_proxies(rng, K, d, m):
    R = rng.standard_normal((K, d))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    V = orthonormal_basis(_t(rng.standard_normal((K, d, min(m, d))))).numpy()
    return R, V


def check_everything(
    X,
    *,
    m,
    M,
    tau,
    subset_selection,
    n_alpha=4.0,
    n_beta=1.0,
    R=None,
    V=None,
    Z=None,
    qs=(1, 3),
    delta=1.0,
    context="",
    greedy_test="refit",
    distance_scale="absolute",
):
    """Pieces, pairwise and proxy similarity (end to end, and from identical pieces) and all three loss terms."""
    X = np.asarray(X, dtype=np.float64)
    sim = PLMSimilarity(
        n_alpha=n_alpha,
        n_beta=n_beta,
        piece_dim=m,
        max_candidates=M,
        tau=tau,
        subset_selection=subset_selection,
        greedy_test=greedy_test,
        distance_scale=distance_scale,
    )
    got_pieces, want_pieces = assert_pieces_match(X, m, M, tau, subset_selection, context, greedy_test)
    scale = ref.batch_scale(X) if distance_scale == "batch" else 1.0
    assert float(sim.scale(_t(X))) == pytest.approx(scale, rel=1e-12), f"{context} distance scale"
    want_s = ref.pairwise_similarity(X, want_pieces, n_alpha, n_beta, scale)
    got_s = sim.pairwise(_t(X), got_pieces).numpy()
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=TOL, err_msg=f"{context} pairwise s (end to end)")
    same_pieces = _ref_pieces_as_package(X, want_pieces, m)
    np.testing.assert_allclose(
        sim.pairwise(_t(X), same_pieces).numpy(),
        want_s,
        rtol=0,
        atol=TOL,
        err_msg=f"{context} pairwise s (reference pieces)",
    )
    if Z is None:
        Z = np.random.default_rng(0).standard_normal(X.shape)
    assert point_loss(_t(Z), _t(want_s), delta).item() == pytest.approx(ref.point_loss(Z, want_s, delta), abs=TOL), (
        f"{context} point loss"
    )
    if R is None:
        return
    want_sp = ref.proxy_similarity(X, want_pieces, R, V, n_alpha, n_beta, scale)
    got_sp = sim.to_proxies(_t(X), got_pieces, _t(R), _t(V)).numpy()
    np.testing.assert_allclose(got_sp, want_sp, rtol=0, atol=TOL, err_msg=f"{context} proxy s (end to end)")
    np.testing.assert_allclose(
        sim.to_proxies(_t(X), same_pieces, _t(R), _t(V)).numpy(),
        want_sp,
        rtol=0,
        atol=TOL,
        err_msg=f"{context} proxy s (reference pieces)",
    )
    assert proxy_loss(_t(Z), _t(R), _t(want_sp), delta).item() == pytest.approx(
        ref.proxy_loss(Z, R, want_sp, delta), abs=TOL
    ), f"{context} proxy loss"
    for q in qs:  # proxy_pairs=nearest: each point's q most similar proxies (q > K: all of them)
        assert proxy_loss(_t(Z), _t(R), _t(want_sp), delta, nearest=q).item() == pytest.approx(
            ref.proxy_loss(Z, R, want_sp, delta, nearest=q), abs=TOL
        ), f"{context} proxy loss, nearest {q}"
    for q in qs:
        got = neighbourhood_loss(_t(X), _t(want_sp), _t(R), _t(V), q).item()
        assert got == pytest.approx(ref.neighbourhood_loss(X, want_sp, R, V, q), abs=TOL), (
            f"{context} neighbourhood loss, q={q}"
        )


# ---------------------------------------------------------------------------------- the reference's own sanity
def test_reference_reproduces_the_hand_computed_examples():
    # test_similarity.py's worked examples, checked on the reference itself.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    pieces = ref.fit_all_pieces(x, 1, 2, 0.5)
    assert [mem for mem, _ in pieces] == [[1, 2], [0, 2], [0, 1]]
    assert abs(pieces[0][1][:, 0] @ np.array([0.0, 1.0])) == pytest.approx(1.0)
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.1, 0.05], [0.0, 1.2]])
    assert ref.fit_piece(x, 0, 1, 3, 0.5)[0] == [1, 2]
    assert ref.fit_piece(x, 0, 1, 3, 0.999)[0] == [1, 2, 3]
    assert ref.fit_piece(x, 0, 1, 3, 0.5, subset_selection=False)[0] == [1, 2, 3]
    line = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    s = ref.pairwise_similarity(line, ref.fit_all_pieces(line, 2, 2, 0.5), 4, 1)
    np.testing.assert_allclose(s, [[1, 1 / 2, 1 / 4], [1 / 2, 1, 1 / 3], [1 / 4, 1 / 3, 1]], atol=1e-12)
    o, p = ref.o_p([3.0, 4.0], [0.0, 0.0], np.array([[1.0], [0.0]]))
    assert (o, p) == pytest.approx((4.0, 3.0))
    assert ref.s_directed(o, p, 4, 1) == pytest.approx(1 / 324)


def test_reference_candidates_break_ties_by_index():
    x = np.array([[0.0], [1.0], [-1.0], [2.0], [-2.0]])
    assert ref.candidates(x, 0, 4) == [1, 2, 3, 4]
    assert ref.candidates(x[::-1], 4, 4) == [2, 3, 0, 1]


# ---------------------------------------------------------------------------------------------- random batches
# (subset_selection, greedy_test): both greedy rules, and the "no subset selection" ablation.
SELECTIONS = [(True, "refit"), (True, "current"), (False, "refit")]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("B", [2, 3, 8, 30])
@pytest.mark.parametrize("d", [1, 2, 5, 32])
def test_random_batches_match_reference(seed, B, d):
    rng = np.random.default_rng(1000 * seed + 10 * B + d)
    for m, (subset_selection, greedy_test) in itertools.product([1, 2, 3], SELECTIONS):
        M = int(rng.integers(1, 13))  # includes M = 1 and M > B - 1
        tau = float(rng.uniform(0.1, 0.9))
        n_alpha = float(rng.uniform(1.0, 6.0))
        n_beta = float(rng.uniform(0.0, n_alpha))
        X = rng.standard_normal((B, d))
        if seed != 1:  # the method's teacher embeddings are unit vectors; seed 1 keeps raw Gaussian scale
            X /= np.linalg.norm(X, axis=1, keepdims=True)
        K = int(rng.integers(1, 5))
        R, V = random_proxies(rng, K, d, m)
        Z = rng.standard_normal((B, d))
        scale = "batch" if rng.random() < 0.5 else "absolute"
        check_everything(
            X,
            m=m,
            M=M,
            tau=tau,
            subset_selection=subset_selection,
            n_alpha=n_alpha,
            n_beta=n_beta,
            R=R,
            V=V,
            Z=Z,
            qs=(1, 3, B + 2),
            delta=float(rng.uniform(0.5, 2.0)),
            greedy_test=greedy_test,
            distance_scale=scale,
            context=f"m={m} M={M} tau={tau:.3f} subset_selection={subset_selection} {greedy_test} {scale}",
        )


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 0.8, 0.99])
def test_greedy_threshold_sweep_on_a_noisy_curve(tau):
    # Points on a curved 1-D manifold with noise: tau decides which candidates are kept, in all ways.
    rng = np.random.default_rng(7)
    t = np.sort(rng.uniform(0, 3, 25))
    X = np.stack([np.cos(t), np.sin(t), 0.3 * t**2], 1) + 0.05 * rng.standard_normal((25, 3))
    X = X[rng.permutation(25)]
    for m, greedy_test in itertools.product((1, 2), ("refit", "current")):
        check_everything(
            X, m=m, M=8, tau=tau, subset_selection=True, greedy_test=greedy_test, context=f"m={m} {greedy_test}"
        )


# -------------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("subset_selection", [True, False])
def test_duplicated_points(m, subset_selection):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((9, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X[5] = X[3]  # each is the other's nearest neighbour, with a zero offset
    X[8] = X[0]
    X[7] = X[0]  # a triplicate
    R, V = random_proxies(rng, 3, 4, m)
    check_everything(X, m=m, M=5, tau=0.5, subset_selection=subset_selection, R=R, V=V, qs=(1, 2, 4))
    pieces = ref.fit_all_pieces(X, m, 5, 0.5, subset_selection)
    assert 5 in pieces[3][0] and 3 in pieces[5][0]
    assert ref.candidates(X, 0, 2) == [7, 8]


@pytest.mark.parametrize("m", [1, 2])
def test_duplicate_is_the_only_neighbour(m):
    # M = 1: N_j = {duplicate}, a zero offset, so the piece has no direction at all (m_eff = 0).
    X = np.array([[0.0, 1.0], [0.0, 1.0], [3.0, -1.0]])
    got, want = assert_pieces_match(X, m, 1, 0.5, True)
    assert want[0][1].shape[1] == 0 and int(got.dims[0]) == 0
    check_everything(X, m=m, M=1, tau=0.5, subset_selection=True, R=X[:1] + 0.1, V=np.eye(2)[None, :, :1])
    check_everything(X, m=m, M=2, tau=0.3, subset_selection=True)


def test_all_points_identical():
    X = np.tile([[0.6, -0.8, 0.0]], (4, 1))
    check_everything(X, m=2, M=3, tau=0.5, subset_selection=True, R=np.zeros((1, 3)), V=np.eye(3)[None, :, :2])
    got = fit_pieces(_t(X), piece_dim=2, max_candidates=3)
    assert got.dims.tolist() == [0, 0, 0, 0] and got.members.sum().item() == 12


@pytest.mark.parametrize("B,m", [(2, 2), (2, 3), (3, 3)])
def test_neighbourhood_smaller_than_the_piece_dimension(B, m):
    rng = np.random.default_rng(B * 10 + m)
    X = rng.standard_normal((B, 5))
    R, V = random_proxies(rng, 2, 5, m)
    for subset_selection in (True, False):
        got, want = assert_pieces_match(X, m, 10, 0.5, subset_selection)
        assert [U.shape[1] for _, U in want] == [B - 1] * B  # m_eff = |N_j| = B - 1 < m
        check_everything(X, m=m, M=10, tau=0.5, subset_selection=subset_selection, R=R, V=V)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_points_on_one_line(m):
    # Integer coordinates: distances are exact, so the equal-distance ties are broken by index in both.
    t = np.array([3, 0, 4, 1, 2, 7, 5, -2])
    X = np.array([1.0, 2.0, -2.0])[None, :] + t[:, None] * np.array([2.0, -1.0, 2.0])[None, :]
    for M, tau, subset_selection in [(3, 0.5, True), (7, 0.1, True), (4, 0.5, False)]:
        got, want = assert_pieces_match(X, m, M, tau, subset_selection)
        assert [U.shape[1] for _, U in want] == [1] * len(t)  # collinear offsets: rank 1 whatever m is
        R = X[[0, 5]] + np.array([[0.0, 0.0, 0.5], [0.3, 0.0, 0.0]])
        V = orthonormal_basis(_t(np.random.default_rng(0).standard_normal((2, 3, m)))).numpy()
        check_everything(X, m=m, M=M, tau=tau, subset_selection=subset_selection, R=R, V=V, qs=(1, 4))


def test_points_on_a_line_plus_one_off_it():
    t = np.arange(6, dtype=np.float64)
    X = np.stack([t, np.zeros(6)], 1)
    X = np.vstack([X, [[2.5, 1.0]]])
    for m, tau in itertools.product([1, 2], [0.3, 0.5, 0.9]):
        check_everything(X, m=m, M=4, tau=tau, subset_selection=True, context=f"m={m} tau={tau}")


@pytest.mark.parametrize("d,m", [(1, 2), (1, 3), (2, 3)])
def test_dimension_smaller_than_the_piece_dimension(d, m):
    rng = np.random.default_rng(d * 10 + m)
    for B in (3, 8, 15):
        X = rng.standard_normal((B, d))
        R, V = random_proxies(rng, 3, d, m)
        for subset_selection in (True, False):
            got, want = assert_pieces_match(X, m, 6, 0.5, subset_selection)
            assert all(U.shape[1] <= d for _, U in want)
            check_everything(X, m=m, M=6, tau=0.5, subset_selection=subset_selection, R=R, V=V)


def test_proxies_at_batch_points_and_more_proxies_than_points():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((6, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    R, V = random_proxies(rng, 10, 4, 2)
    R[0] = X[2]  # a proxy sitting on a batch point
    R[1] = X[4] + V[1] @ np.array([0.3, -0.2])  # a proxy whose piece passes through a batch point
    check_everything(X, m=2, M=4, tau=0.5, subset_selection=True, R=R, V=V, qs=(1, 6, 20))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plm_loss_terms_match_reference(seed):
    # The composed loss (float32, normalised student and teacher, QR'd proxy pieces) against the reference.
    gen = torch.Generator().manual_seed(seed)
    B, d, m, q = 12, 6, 2, 3
    x = torch.randn(B, d, generator=gen)
    z = torch.randn(B, d, generator=gen)
    proxies = ProxyManifold(4, d, m)
    knn = torch.cdist(x, x).argsort(1)[:, :4]
    proxies.initialise_(torch.nn.functional.normalize(x, dim=1), knn, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        proxies.points.add_(0.1 * torch.randn(proxies.points.shape, generator=gen))
    sim = PLMSimilarity(n_alpha=4, n_beta=1, piece_dim=m, max_candidates=5, tau=0.5)
    out = PLMLoss(sim, delta=1.0, proxy_neighbours=q)(z, x, proxies)

    X = torch.nn.functional.normalize(x, dim=1).double().numpy()
    Z = torch.nn.functional.normalize(z, dim=1).double().numpy()
    R = proxies.points.detach().double().numpy()
    V = proxies.bases().detach().double().numpy()
    pieces = ref.fit_all_pieces(X, m, 5, 0.5)
    S = ref.pairwise_similarity(X, pieces, 4, 1)
    S_proxy = ref.proxy_similarity(X, pieces, R, V, 4, 1)
    np.testing.assert_allclose(out["s"].double().numpy(), S, atol=TOL)
    assert out["loss_point"].item() == pytest.approx(ref.point_loss(Z, S), abs=TOL)
    assert out["loss_proxy"].item() == pytest.approx(ref.proxy_loss(Z, R, S_proxy), abs=TOL)
    assert out["loss_nbhd"].item() == pytest.approx(ref.neighbourhood_loss(X, S_proxy, R, V, q), abs=TOL)
    assert out["neighbourhood_size_mean"].item() == pytest.approx(np.mean([len(mem) for mem, _ in pieces]))


def test_neighbourhood_loss_with_an_untied_similarity_matrix():
    X = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    R = np.zeros((2, 2))
    V = np.array([[[1.0], [0.0]], [[0.0], [1.0]]])
    S = np.array([[0.9, 0.1], [0.8, 0.4], [0.2, 0.3], [0.1, 0.2]])
    for q in (1, 2, 3, 4, 9):
        got = neighbourhood_loss(_t(X), _t(S), _t(R), _t(V), q).item()
        assert got == pytest.approx(ref.neighbourhood_loss(X, S, R, V, q), abs=1e-12)


def test_neighbourhood_loss_ties_keep_the_lower_index():
    # Proxy at the origin with piece e1; all five points tie at s = 0.5, their residuals differ (0, 1, 4, 9, 16).
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])
    R, V = np.zeros((1, 2)), np.array([[[1.0], [0.0]]])
    S = np.full((5, 1), 0.5)
    want = ref.neighbourhood_loss(X, S, R, V, 2)  # points 0 and 1: (0 + 1) / 2
    assert want == pytest.approx(0.5)
    assert neighbourhood_loss(_t(X), _t(S), _t(R), _t(V), 2).item() == pytest.approx(want)
    # A partial tie straddling the cut (torch.topk would pick index 2 over 0 here), and ties in several columns.
    S = np.array([[0.5, 0.2], [0.5, 0.7], [0.5, 0.7], [0.9, 0.7], [0.5, 0.1]])
    R, V = np.zeros((2, 2)), np.array([[[1.0], [0.0]], [[0.6], [0.8]]])
    for q in (1, 2, 3, 4):
        got = neighbourhood_loss(_t(X), _t(S), _t(R), _t(V), q).item()
        assert got == pytest.approx(ref.neighbourhood_loss(X, S, R, V, q), abs=1e-12)


# ------------------------------------------------------------------------------------------------- precision
# A piece that spans all of R^d contains every point: o must be 0 for all of them, and s'(i, j) = (1 + p)^-N_beta.
# The package computes o = sqrt(||x_i - x_j||^2 - p^2), which turns a relative error e in the projector U U^T into
# an error of about sqrt(e) ||x_i - x_j|| in o. Two sources of e, both guarded by fit_pieces now: bases built as
# O^T V diag(l)^-1/2 from the Gram matrix lose orthonormality by about eps * l_max / l_min when a kept direction is
# weak (l_min / l_max ~ 1e-8, still 100x above the 1e-10 rank cut): o ~ 4e-4 where o = 0 before a final QR pass;
# float32 bases (PLMLoss feeds float32 teacher embeddings), e ~ 1e-7: o ~ 1e-4 before the bases were kept in float64.
WEAK_DIRECTION = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 6e-4], [5, -7, 9]], dtype=np.float64)


def test_weak_direction_batch_has_well_defined_pieces():
    # The inputs of the precision tests below are not ill-posed: the pieces themselves agree with the reference, and the
    # weakest kept direction of x_0's piece is 400x above the rank cut.
    _, want = assert_pieces_match(WEAK_DIRECTION, 3, 3, 0.5, False)
    assert want[0][0] == [1, 2, 3] and want[0][1].shape[1] == 3
    sv2 = np.linalg.svd(WEAK_DIRECTION[1:4], compute_uv=False) ** 2
    assert sv2[2] / sv2[0] > 100 * ref.RANK_EPS


def test_weak_direction_piece_gives_zero_orthogonal_distance():
    sim = PLMSimilarity(n_alpha=4, n_beta=1, piece_dim=3, max_candidates=3, subset_selection=False)
    x = _t(WEAK_DIRECTION)
    pieces = sim.fit(x)
    want = ref.pairwise_similarity(WEAK_DIRECTION, ref.fit_all_pieces(WEAK_DIRECTION, 3, 3, 0.5, False), 4, 1)
    o, _ = piece_distances(x, pieces.anchors, pieces.bases)
    assert o[:, 0].max().item() <= TOL  # x_0's piece is all of R^3 (Gram-built bases: o(4, 0) ~ 3.9e-4)
    np.testing.assert_allclose(sim.pairwise(x, pieces).numpy(), want, rtol=0, atol=TOL)  # (were off by 2.9e-5)


def test_float32_batch_matches_reference():
    sim = PLMSimilarity(n_alpha=4, n_beta=1, piece_dim=2, max_candidates=2)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # every piece spans R^2: o = 0 for all pairs
    pieces = sim.fit(x)
    o, _ = piece_distances(x, pieces.anchors, pieces.bases)
    x64 = x.double().numpy()
    want = ref.pairwise_similarity(x64, ref.fit_all_pieces(x64, 2, 2, 0.5), 4, 1)
    errors = [o.max().item(), np.abs(sim.pairwise(x, pieces).double().numpy() - want).max()]
    for seed in range(3):  # unit-norm float32 batches, as PLMLoss feeds them
        xr = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(seed)), dim=1)
        xr64 = xr.double().numpy()
        want = ref.pairwise_similarity(xr64, ref.fit_all_pieces(xr64, 2, 2, 0.5), 4, 1)
        errors.append(np.abs(sim.pairwise(xr, sim.fit(xr)).double().numpy() - want).max())
    assert max(errors) <= TOL, errors  # with float32 bases: o up to 4e-4, s off by up to ~2e-4
    assert pieces.bases.dtype == torch.float64


def test_float32_losses_with_duplicate_and_near_duplicate_embeddings():
    # The training path runs the loss in float32; near-coincident student embeddings must not cost accuracy.
    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(6, 128, generator=gen), dim=1)
    z[3] = z[1]
    z[5] = z[1] + 1e-4 * torch.randn(128, generator=gen)
    s = torch.rand(6, 6, generator=gen)
    s = (s + s.T) / 2
    s.fill_diagonal_(1.0)
    s[1, 3] = s[3, 1] = 1.0
    rho = torch.cat([z[:2], z[1:2] + 1e-4])
    s_proxy = torch.rand(6, 3, generator=gen)
    Z, S, R, SP = (t.double().numpy() for t in (z, s, rho, s_proxy))
    assert point_loss(z, s).item() == pytest.approx(ref.point_loss(Z, S), abs=TOL)
    assert proxy_loss(z, rho, s_proxy).item() == pytest.approx(ref.proxy_loss(Z, R, SP), abs=TOL)
