"""Properties of STML's similarity and losses that follow from the definitions (docs/stml.md)."""

import torch

from plm_lightning.stml import STMLLoss, contextual_similarity, half_neighbourhood, row_mean_distances


def _batch(n=16, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, dtype=torch.float64, generator=g), dim=1)


def test_similarity_is_symmetric_and_in_unit_interval():
    w, w_p = contextual_similarity(_batch(), sigma=3.0, k=6)
    assert torch.allclose(w, w.T) and torch.allclose(w_p, w_p.T)
    assert w.min() >= 0 and w.max() <= 1
    # a point is its own nearest: its context term W_C(i, i) is positive, so W(i, i) > W_P(i, i) / 2
    assert (w.diagonal() > 0.5).all()


def test_views_of_one_image_are_more_similar_than_their_kernel_alone():
    """Marked views rank first, share reciprocal neighbourhoods and so gain context similarity."""
    t = _batch(20)
    t = torch.cat([t[:10], t[:10] + 0.3 * _batch(10, seed=1)])  # second views: perturbed copies
    image = torch.arange(10).repeat(2)
    w, w_p = contextual_similarity(t, image[:, None] == image[None, :], sigma=3.0, k=4)
    twins = w[torch.arange(10), torch.arange(10) + 10]
    kernel = w_p[torch.arange(10), torch.arange(10) + 10]
    assert (twins > kernel / 2).all() and twins.mean() > w.fill_diagonal_(0).mean() * 2


def test_relaxed_contrastive_loss_ignores_the_student_scale():
    """Distances are divided by their row mean, so scaling the student's embeddings changes nothing."""
    loss = STMLLoss(k=6)
    t, f, g = _batch(), _batch(16, 5, seed=2), _batch(16, 9, seed=3)
    a, b = loss(f, g, t), loss(7.5 * f, 0.2 * g, t)
    assert torch.allclose(a["loss"], b["loss"])


def test_self_distillation_vanishes_when_the_two_embeddings_agree():
    f = _batch(16, 5, seed=4)
    out = STMLLoss(k=6)(f, 3 * f, _batch())
    assert abs(float(out["kl"])) < 1e-12


def test_row_mean_distances_have_unit_row_means():
    d = row_mean_distances(_batch(12, 4, seed=5) * 10)
    assert torch.allclose(d.mean(1), torch.ones(12, dtype=torch.float64))
    assert (d.diagonal() == 0).all()


def test_half_neighbourhood_rounds_like_stml_and_never_empties():
    assert [half_neighbourhood(k) for k in (1, 2, 3, 4, 5, 10)] == [1, 1, 2, 2, 2, 5]


def test_gradient_is_finite_for_coinciding_views():
    """Two identical embeddings (an image whose augmentation did nothing) must not give NaN gradients."""
    f = _batch(8, 4, seed=6)
    f = torch.cat([f, f]).requires_grad_(True)
    g = torch.cat([_batch(8, 7, seed=7)] * 2).requires_grad_(True)
    STMLLoss(k=4)(f, g, _batch(16))["loss"].backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(g.grad).all()
