"""The vectorised STML (plm_lightning.stml) against the loop reference (stml_reference.py), both float64: the similarity
W and every loss term to 1e-10, and the gradient of the loss against finite differences."""

import numpy as np
import pytest
import stml_reference as ref
import torch

from plm_lightning.stml import (
    STMLLoss,
    contextual_similarity,
    relaxed_contrastive_loss,
    row_mean_distances,
    self_distillation_loss,
)

TOL = 1e-10


def _views_batch(images: int, views: int, d: int, seed: int, spread: float = 0.3):
    """Teacher embeddings of ``views`` views per image, view-major as training flattens them, and ``same``."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(images, d))
    t = np.concatenate([centres + spread * g.normal(size=(images, d)) for _ in range(views)])
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    image = np.tile(np.arange(images), views)
    return t, image[:, None] == image[None, :]


@pytest.mark.parametrize(
    "images,views,k,sigma",
    [(12, 2, 10, 3.0), (20, 2, 6, 1.0), (15, 1, 5, 3.0), (9, 3, 8, 0.5), (6, 2, 40, 3.0)],
)
def test_similarity_equals_reference(images, views, k, sigma):
    t, same = _views_batch(images, views, 8, seed=images + k)
    w, w_p = contextual_similarity(torch.tensor(t), torch.tensor(same), sigma=sigma, k=k)
    expected = ref.contextual(t, same, sigma, k)
    assert np.abs(w.numpy() - expected).max() < TOL
    assert np.abs(w_p.numpy() - ref.kernel(t, sigma)).max() < TOL


def test_duplicate_images_in_a_batch_rank_as_views():
    """Nearest-neighbour batches can hold one image twice (a seed's neighbour is another seed): STML marks every
    pair with the same dataset index, so the copies rank first like views."""
    t, _ = _views_batch(10, 2, 6, seed=3)
    index = np.tile(np.array([0, 1, 2, 3, 4, 5, 6, 7, 2, 9]), 2)  # image 2 appears twice
    same = index[:, None] == index[None, :]
    w, _ = contextual_similarity(torch.tensor(t), torch.tensor(same), sigma=3.0, k=10)
    assert np.abs(w.numpy() - ref.contextual(t, same, 3.0, 10)).max() < TOL


@pytest.mark.parametrize("normalize", [False, True])
def test_loss_terms_equal_reference(normalize):
    g = np.random.default_rng(7)
    t, same = _views_batch(10, 2, 6, seed=11)
    f, aux = g.normal(size=(20, 5)), g.normal(size=(20, 9))
    knobs = dict(sigma=3.0, delta=1.0, k=10)
    out = STMLLoss(**knobs, kl_temperature=0.7, lambda_kl=0.5, normalize_student=normalize)(
        torch.tensor(f), torch.tensor(aux), torch.tensor(t), torch.tensor(same)
    )
    expected = ref.stml_loss(f, aux, t, same, **knobs, temperature=0.7, lambda_kl=0.5, normalize_student=normalize)
    for key in ("loss", "rc_f", "rc_g", "kl"):
        assert abs(float(out[key]) - expected[key]) < TOL, key
    assert np.abs(out["s"].numpy() - expected["s"]).max() < TOL


def test_distances_and_terms_separately():
    g = np.random.default_rng(1)
    e = g.normal(size=(11, 4))
    d = row_mean_distances(torch.tensor(e))
    assert np.abs(d.numpy() - ref.normalised_distances(e)).max() < TOL
    w = g.uniform(size=(11, 11))
    assert (
        abs(float(relaxed_contrastive_loss(d, torch.tensor(w), 0.9)) - ref.relaxed_contrastive(d.numpy(), w, 0.9)) < TOL
    )
    e2 = g.normal(size=(11, 6))
    d2 = row_mean_distances(torch.tensor(e2))
    kl = self_distillation_loss(d, d2, 2.0)
    assert abs(float(kl) - ref.self_distillation(d.numpy(), d2.numpy(), 2.0)) < TOL


def test_gradient_matches_finite_differences():
    """The student's gradient by torch.autograd.gradcheck (W fixed: no gradient flows through the teacher). The
    self-distillation target D_g is detached, so g's gradient is checked without that term, f's with it."""
    t, same = _views_batch(6, 2, 4, seed=5)
    g = torch.Generator().manual_seed(0)
    f = torch.randn(12, 3, dtype=torch.float64, generator=g, requires_grad=True)
    aux = torch.randn(12, 5, dtype=torch.float64, generator=g, requires_grad=True)
    tt, ss = torch.tensor(t), torch.tensor(same)
    full, no_kl = STMLLoss(k=6), STMLLoss(k=6, lambda_kl=0.0)
    assert torch.autograd.gradcheck(lambda a: full(a, aux.detach(), tt, ss)["loss"], (f,))
    assert torch.autograd.gradcheck(lambda b: no_kl(f.detach(), b, tt, ss)["loss"], (aux,))
    # and the detach holds: the self-distillation term gives g no gradient
    kl = self_distillation_loss(row_mean_distances(f), row_mean_distances(aux))
    assert torch.autograd.grad(kl, aux, allow_unused=True)[0] is None
