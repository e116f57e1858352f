"""Baseline similarity estimators and the binary ablation, against values worked out by hand."""

import math

import pytest
import torch

from plm_lightning.manifold import PLMLoss, ProxyManifold
from plm_lightning.manifold.estimators import (
    Binarized,
    GaussianSimilarity,
    KMeansSimilarity,
    KNNSimilarity,
    build_estimator,
    kmeans,
)

X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 10.0]])


def test_gaussian_by_hand():
    s = GaussianSimilarity(sigma=2.0)(X, proxy_points=torch.tensor([[0.0, 1.0]])).s
    assert s[0, 1].item() == pytest.approx(math.exp(-1 / 2))
    assert s[1, 2].item() == pytest.approx(math.exp(-5 / 2))
    assert torch.all(s.diagonal() == 1) and torch.equal(s, s.T)
    s_proxy = GaussianSimilarity(sigma=2.0)(X, proxy_points=torch.tensor([[0.0, 1.0]])).s_proxy
    assert s_proxy[:, 0].tolist() == pytest.approx(
        [math.exp(-1 / 2), math.exp(-2 / 2), math.exp(-1 / 2), math.exp(-181 / 2)]
    )


def test_knn_by_hand():
    result = KNNSimilarity(k=1)(X, proxy_points=torch.tensor([[0.5, 0.0], [5.0, 5.0]]))
    # nearest neighbours: 0->1, 1->0, 2->0, 3->2 ; symmetrised
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(result.s, expected)
    # proxy (0.5, 0) is within the 1-NN radius of points 0 and 1; (5, 5) is within none except point 3's (radius^2=164)
    assert result.s_proxy.tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]


def test_kmeans_recovers_separated_clusters_deterministically():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(7, 2, generator=g) for c in centres])
    assign, _ = kmeans(x, 3, seed=1)
    groups = [set(assign[i * 7 : (i + 1) * 7].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    s = KMeansSimilarity(clusters=3, seed=1)(x).s
    assert torch.equal(s, KMeansSimilarity(clusters=3, seed=1)(x).s)
    assert s[0, 6] == 1 and s[0, 7] == 0


def test_binarized_thresholds_but_keeps_the_diagonal():
    s = Binarized(GaussianSimilarity(sigma=2.0), threshold=0.5)(X).s
    assert s[0, 1] == 1 and s[1, 2] == 0 and torch.all(s.diagonal() == 1)


@pytest.mark.parametrize("name", ["plm", "gaussian", "knn", "kmeans"])
@pytest.mark.parametrize("binary", [None, 0.5])
def test_every_estimator_trains_through_the_same_loss(name, binary):
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    z = torch.randn(20, 8, requires_grad=True)
    proxies = ProxyManifold(4, 8, 2)
    proxies.initialise_(x, torch.cdist(x, x).argsort(1)[:, :5], torch.Generator().manual_seed(0))
    est = build_estimator(name, knn_k=4, kmeans_clusters=4, max_candidates=8, binary_threshold=binary)
    out = PLMLoss(est, proxy_neighbours=4)(z, x, proxies)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(z.grad).all()
    assert ((out["s"] >= 0) & (out["s"] <= 1)).all()
