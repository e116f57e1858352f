"""Loss terms against values computed by hand, and the gradient routing the method prescribes."""

import math

import pytest
import torch

from plm_lightning.manifold import PLMLoss, PLMSimilarity, ProxyManifold, neighbourhood_loss, point_loss, proxy_loss


def test_point_loss_by_hand():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
    # pairs (i != j), delta = 2: targets 2 * (1 - s); distances 5, 1, sqrt(18)
    d01, d02, d12 = 5.0, 1.0, math.sqrt(9 + 9)
    r = [(2 * 0.5 - d01) ** 2, (2 * 0.8 - d02) ** 2, (2 * 0.9 - d12) ** 2]
    expected = 2 * sum(r) / 6  # each unordered pair appears twice among the 6 ordered pairs
    assert point_loss(z, s, delta=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_proxy_loss_by_hand_and_detached_proxies():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    rho = torch.tensor([[0.0, 2.0]], requires_grad=True)
    s = torch.tensor([[0.5], [0.0]])
    expected = ((0.5 - 2.0) ** 2 + (1.0 - math.sqrt(5)) ** 2) / 2
    loss = proxy_loss(z, rho, s)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert rho.grad is None and z.grad is not None  # this term moves the network, not the proxies


def test_neighbourhood_loss_by_hand():
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0], [5.0, 5.0]])
    rho = torch.tensor([[0.0, 0.0]], requires_grad=True)
    basis = torch.tensor([[[1.0], [0.0]]], requires_grad=True)  # piece along e1
    s = torch.tensor([[0.9], [0.8], [0.1]])  # q = 2 most similar: points 0 and 1
    loss = neighbourhood_loss(x, s, rho, basis, num_neighbours=2)
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)  # orthogonal residuals 1 and 0
    loss.backward()
    assert rho.grad is not None and basis.grad is not None  # this term moves the proxies


def test_full_loss_gradients_route_as_documented():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(10, 6), dim=1)
    z = torch.randn(10, 6, requires_grad=True)
    proxies = ProxyManifold(3, 6, 2)
    knn = torch.cdist(x, x).argsort(1)[:, :4]
    proxies.initialise_(x, knn, torch.Generator().manual_seed(0))
    loss = PLMLoss(PLMSimilarity(max_candidates=4), proxy_neighbours=3)
    out = loss(z, x, proxies)
    assert set(out) >= {"loss", "loss_point", "loss_proxy", "loss_nbhd"}
    total = out["loss_point"] + out["loss_proxy"] + out["loss_nbhd"]
    assert out["loss"].item() == pytest.approx(total.item())
    out["loss"].backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert proxies.points.grad.abs().sum() > 0 and proxies.raw_bases.grad.abs().sum() > 0


def test_identical_student_embeddings_give_finite_gradients():
    z = torch.zeros(4, 3, requires_grad=True)
    s = torch.full((4, 4), 0.5)
    point_loss(z, s).backward()
    assert torch.isfinite(z.grad).all()


def test_random_proxy_initialisation_is_unit_and_orthonormal():
    proxies = ProxyManifold(5, 7, 3)
    proxies.initialise_random_(torch.Generator().manual_seed(0))
    assert bool(proxies.initialized)
    assert torch.allclose(proxies.points.norm(dim=1), torch.ones(5))
    b = proxies.bases()
    assert torch.allclose(b.transpose(1, 2) @ b, torch.eye(3).expand(5, 3, 3), atol=1e-6)
