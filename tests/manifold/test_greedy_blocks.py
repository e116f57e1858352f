"""The greedy selection decided in blocks (pieces._greedy_members) gives the decisions of one position at a time, and
the Cholesky QR orthonormalisation (pieces.orthonormal_basis) gives Gram-Schmidt's basis."""

import numpy as np
import pytest
import torch

from plm_lightning.manifold import PLMLoss, PLMSimilarity, ProxyManifold, fit_pieces, orthonormal_basis
from plm_lightning.manifold.loss import cdist_safe, point_and_proxy_loss, point_loss, proxy_loss


def _batches():
    g = torch.Generator().manual_seed(3)
    yield "random d=16", torch.randn(40, 16, generator=g, dtype=torch.float64)
    # A noisy 2-D sheet in 12 dimensions: a mix of acceptances and rejections.
    t = torch.rand(50, 2, generator=g, dtype=torch.float64) * 4
    sheet = torch.cat([t, torch.sin(t[:, :1]) * t[:, 1:]], 1) @ torch.randn(3, 12, generator=g, dtype=torch.float64)
    yield "noisy sheet", sheet + 0.05 * torch.randn(50, 12, generator=g, dtype=torch.float64)
    base = torch.randn(10, 5, generator=g, dtype=torch.float64)
    yield "duplicates", torch.cat([base, base[:4], base[:2]])


@pytest.mark.parametrize("greedy_test", ["refit", "current"])
@pytest.mark.parametrize("m,M", [(1, 7), (2, 10), (2, 13), (3, 9)])
def test_block_size_does_not_change_the_pieces(greedy_test, m, M):
    rejected = 0
    for name, x in _batches():
        one_at_a_time = fit_pieces(x, piece_dim=m, max_candidates=M, tau=0.5, greedy_test=greedy_test, greedy_block=1)
        rejected += int((one_at_a_time.accepted < 0.5).sum())
        for block in (2, 3, 4, 5, 8):
            got = fit_pieces(x, piece_dim=m, max_candidates=M, tau=0.5, greedy_test=greedy_test, greedy_block=block)
            assert torch.equal(got.members, one_at_a_time.members), f"{name}: block {block} members"
            torch.testing.assert_close(got.bases, one_at_a_time.bases, rtol=0, atol=1e-12)
    assert rejected > 0  # the batches exercise rejections, not only acceptances


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="greedy block"):
        fit_pieces(torch.randn(8, 3, dtype=torch.float64), greedy_block=0)


def _gram_schmidt(a: np.ndarray) -> np.ndarray:
    """Q of the QR factorisation with a positive diagonal, zero columns kept zero (numpy, float64)."""
    q = np.zeros_like(a)
    for j in range(a.shape[1]):
        v = a[:, j].copy()
        for _ in range(2):
            v -= q[:, :j] @ (q[:, :j].T @ v)
        n = np.linalg.norm(v)
        q[:, j] = v / n if n > 0 else 0.0
    return q


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e3])
def test_cholesky_qr_is_gram_schmidt(scale):
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((6, 9, 3)) * scale
    raw[:, :, 2] += 0.999 * raw[:, :, 0]  # nearly dependent columns (condition number ~ 50)
    raw[1, :, 1] = 0.0  # an absent direction in the middle
    raw[2, :, 2] = 0.0  # and at the end
    got = orthonormal_basis(torch.as_tensor(raw)).numpy()
    want = np.stack([_gram_schmidt(a) for a in raw])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.all(got[1, :, 1] == 0) and np.all(got[2, :, 2] == 0)


def test_one_pass_suffices_for_nearly_orthonormal_columns_and_the_identity_stays():
    q = orthonormal_basis(torch.randn(4, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(orthonormal_basis(q, passes=1), orthonormal_basis(q, passes=1))
    torch.testing.assert_close(orthonormal_basis(q, passes=1), q, rtol=0, atol=1e-14)
    nearly = q + 1e-6 * torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    once = orthonormal_basis(nearly, passes=1)
    eye = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    torch.testing.assert_close(once.mT @ once, eye, rtol=0, atol=1e-14)


def test_point_and_proxy_loss_in_one_pass_matches_the_separate_terms():
    g = torch.Generator().manual_seed(0)
    b, k = 9, 4
    z = torch.randn(b, 5, generator=g)
    rho = torch.randn(k, 5, generator=g)
    s_all = torch.rand(b, b + k, generator=g)
    distances = cdist_safe(z, torch.cat([z, rho]))
    loss_point, loss_proxy, combined = point_and_proxy_loss(s_all, distances, delta=1.5, lambda_proxy=0.1)
    want_point = point_loss(z, s_all[:, :b], 1.5)
    want_proxy = proxy_loss(z, rho, s_all[:, b:], 1.5)
    torch.testing.assert_close(loss_point, want_point)
    torch.testing.assert_close(loss_proxy, want_proxy)
    torch.testing.assert_close(combined, want_point + 0.1 * want_proxy)


def test_fused_loss_gradients_match_the_separate_terms():
    """PLMLoss's one-pass path (proxy_pairs=all) against its term-by-term path, value and gradients."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 6, generator=g)
    torch.manual_seed(0)
    proxies = ProxyManifold(5, 6, 2)
    proxies.initialise_random_(torch.Generator().manual_seed(1))
    grads = []
    for pairs in ("all", "nearest"):
        z = torch.randn(16, 6, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
        proxies.zero_grad(set_to_none=True)
        # proxy_neighbours = K: "nearest" then takes every proxy, the same pairs as "all" through the other code path
        loss = PLMLoss(PLMSimilarity(), lambda_proxy=0.3, proxy_neighbours=5, proxy_pairs=pairs)
        out = loss(z, x, proxies)
        out["loss"].backward()
        grads.append((out["loss"].detach(), z.grad, proxies.points.grad, proxies.raw_bases.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
