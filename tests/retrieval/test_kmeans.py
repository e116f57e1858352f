"""The torch k-means behind NMI on the training device, against faiss (the CPU path) and by its invariants."""

import numpy as np
import pytest
import torch

from plm_lightning.retrieval.kmeans import kmeans
from plm_lightning.retrieval.metrics import nmi


def _classes(n_classes=60, per_class=15, dim=32, noise=0.35, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = centres[labels] + noise * torch.randn(len(labels), dim, generator=g) / dim**0.5 * 4
    return torch.nn.functional.normalize(x, dim=1), labels


def test_assignment_is_each_points_nearest_centroid_and_centroids_are_cluster_means():
    x, _ = _classes()
    centroids, assignment = kmeans(x, 60, niter=10, seed=1, memory_budget_mb=0.01)  # tiny tiles: many of them
    nearest = torch.cdist(x.double(), centroids.double()).argmin(1)
    assert torch.equal(assignment, nearest)
    # Lloyd's fixed point: run to convergence, each centroid is the mean of the points assigned to it
    centroids, assignment = kmeans(x, 60, niter=100, seed=1)
    for c in assignment.unique():
        assert torch.allclose(centroids[c], x[assignment == c].mean(0), atol=1e-5)


def test_deterministic_for_a_seed_and_different_across_seeds():
    x, _ = _classes()
    a = kmeans(x, 60, seed=3)[1]
    assert torch.equal(a, kmeans(x, 60, seed=3)[1])
    assert not torch.equal(a, kmeans(x, 60, seed=4)[1])


def test_empty_clusters_take_over_half_of_a_large_one():
    # 8 distinct points, each repeated: 12 clusters leave some empty after the first assignment
    base = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    x = base.repeat(5, 1)
    centroids, assignment = kmeans(x, 12, seed=0)
    assert torch.isfinite(centroids).all()
    assert assignment.min() >= 0 and assignment.max() < 12
    # every distinct point is its own cluster's centre (no two distinct points merged)
    for i in range(8):
        members = assignment[torch.arange(i, 40, 8)]
        assert len(set(members.tolist())) == 1


def test_nmi_agrees_with_faiss_in_distribution():
    """The speed issue's criterion: over seeds, the torch k-means' NMI is within 0.5 points of faiss's."""
    x, y = _classes(noise=0.6)
    seeds = range(5)
    ours = [nmi(x, y, seed=s, kmeans="torch") for s in seeds]
    theirs = [nmi(x, y, seed=s, kmeans="faiss") for s in seeds]
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.5, (ours, theirs)


def test_auto_uses_faiss_on_the_cpu_and_bad_backend_is_refused():
    x, y = _classes()
    assert nmi(x, y, seed=2) == nmi(x, y, seed=2, kmeans="faiss")
    with pytest.raises(ValueError, match="k-means backend 'gpu'"):
        nmi(x, y, kmeans="gpu")
