"""PLM similarity and pieces against values worked out by hand."""

import math

import pytest
import torch

from plm_lightning.manifold import PLMSimilarity, directed_similarity, fit_pieces, piece_distances


def test_distances_to_a_piece_by_hand():
    # Piece through the origin along e1; x_i = (3, 4): in-plane p = 3, orthogonal o = 4.
    o, p = piece_distances(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2), torch.tensor([[[1.0], [0.0]]]))
    assert o.item() == pytest.approx(4.0)
    assert p.item() == pytest.approx(3.0)
    s = directed_similarity(o, p, n_alpha=4, n_beta=1)
    assert s.item() == pytest.approx(3.0**-4 * 4.0**-1)  # (1 + 4/2)^-4 (1 + 3)^-1 = 1/324


def test_points_on_one_line_get_in_plane_decay_only():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    sim = PLMSimilarity(n_alpha=4, n_beta=1, piece_dim=2, max_candidates=2)
    pieces = sim.fit(x)
    assert pieces.dims.tolist() == [1, 1, 1]  # collinear offsets: rank 1 whatever m is
    s = sim.pairwise(x, pieces)
    expected = torch.tensor([[1, 1 / 2, 1 / 4], [1 / 2, 1, 1 / 3], [1 / 4, 1 / 3, 1]])
    assert torch.allclose(s, expected, atol=1e-6)


def _unit(v):
    v = torch.tensor(v, dtype=torch.float64)
    return v / v.norm()


def test_greedy_pieces_and_similarity_by_hand():
    # a = (0,0), b = (1,0), c = (0,2); m = 1, M = 2, tau = 0.5. Worked out by hand:
    # a: N = {b}, then c refits the piece to the top direction of offsets (1,0),(0,2): e2; c's residual 0 -> kept.
    # b: offsets (-1,0),(-1,2): O^T O = [[2,-2],[-2,4]], top eigenvector (1, -(1+sqrt5)/2); c's relative residual 0.089.
    # c: offsets (0,-2),(1,-2): O^T O = [[1,-2],[-2,8]], top eigenvector (1, -3.7656); b's relative residual 0.203.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    pieces = fit_pieces(x, piece_dim=1, max_candidates=2, tau=0.5)
    assert pieces.members.tolist() == [[False, True, True], [True, False, True], [True, True, False]]
    golden = (1 + math.sqrt(5)) / 2
    lam_c = 4.5 + math.sqrt(4.5**2 - 4)
    expected_dirs = [_unit([0.0, 1.0]), _unit([1.0, -golden]), _unit([1.0, (1 - lam_c) / 2])]
    for j, u in enumerate(expected_dirs):
        got = pieces.bases[j, :, 0]
        assert abs(float(got @ u)) == pytest.approx(1.0, abs=1e-9)

    def s_directed(i, j):  # s'(i, j) from the hand-derived piece of j
        off = x[i] - x[j]
        p = abs(float(off @ expected_dirs[j]))
        o = math.sqrt(max(float(off @ off) - p * p, 0.0))
        return (1 + o / 2) ** -4 * (1 + p) ** -1

    sim = PLMSimilarity(n_alpha=4, n_beta=1, piece_dim=1, max_candidates=2, tau=0.5)
    s = sim.pairwise(x, pieces)
    for i in range(3):
        for j in range(3):
            want = 1.0 if i == j else (s_directed(i, j) + s_directed(j, i)) / 2
            assert float(s[i, j]) == pytest.approx(want, rel=1e-9)
    # b from a's piece (e2): p = 0, o = 1 -> 1.5^-4
    assert s_directed(1, 0) == pytest.approx(1.5**-4)


def test_candidate_off_the_piece_is_rejected():
    # Anchor at the origin, m = 1. b and c lie near the e1 axis; d = (0, 1.2) is off it. The piece refitted with d
    # still follows e1 (offsets b, c dominate), leaving d with relative residual ~1 > tau: rejected. A looser tau or
    # no subset selection keeps it.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.1, 0.05], [0.0, 1.2]], dtype=torch.float64)
    assert fit_pieces(x, piece_dim=1, max_candidates=3, tau=0.5).members[0].tolist() == [False, True, True, False]
    assert fit_pieces(x, piece_dim=1, max_candidates=3, tau=0.999).members[0].tolist() == [False, True, True, True]
    no_selection = fit_pieces(x, piece_dim=1, max_candidates=3, subset_selection=False)
    assert no_selection.members[0].tolist() == [False, True, True, True]


def test_duplicates_and_range():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    x[5] = x[3]  # an exact duplicate
    sim = PLMSimilarity()
    s = sim.pairwise(x, sim.fit(x))
    assert torch.isfinite(s).all()
    assert (s > 0).all() and (s <= 1).all()
    assert torch.equal(s, s.T)
    assert torch.all(s.diagonal() == 1)
    assert s[3, 5].item() == pytest.approx(1.0)  # o = p = 0 between duplicates


@pytest.mark.parametrize("how, combine", [("mean", lambda a, b: (a + b) / 2), ("min", min), ("max", max)])
def test_symmetrization_knob(how, combine):
    torch.manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(9, 4), dim=1)
    sim = PLMSimilarity(max_candidates=4, symmetrize=how)
    pieces = sim.fit(x)
    o, p = piece_distances(x, pieces.anchors, pieces.bases)
    directed = directed_similarity(o, p, sim.n_alpha, sim.n_beta)
    s = sim.pairwise(x, pieces)
    for i, j in [(0, 1), (2, 7), (8, 3)]:
        assert s[i, j].item() == pytest.approx(combine(directed[i, j].item(), directed[j, i].item()), rel=1e-6)
    assert torch.equal(s, s.T)
