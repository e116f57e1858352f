"""Similarity-quality metrics against brute-force definitions."""

import numpy as np
import pytest
import torch

from plm_lightning.manifold.quality import SimilarityQuality, batch_purity


def test_purity_by_hand_and_ties_count_fractionally():
    s = torch.tensor([[1.0, 0.9, 0.5, 0.5], [0.9, 1.0, 0.2, 0.1], [0.5, 0.2, 1.0, 0.3], [0.5, 0.1, 0.3, 1.0]])
    labels = torch.tensor([0, 0, 1, 0])
    p = batch_purity(s, labels, k=2)
    # point 0: top-2 = {1 (0.9), one of {2, 3} tied at 0.5}: 1 + 0.5 * (0 + 1) = 1.5 -> 0.75
    # point 1: {0, 2}: 1 + 0 -> 0.5 ; point 2: {0, 3}: 0 + 0 -> 0 ; point 3: {0, 2}: 1 + 0 -> 0.5
    assert p.tolist() == pytest.approx([0.75, 0.5, 0.0, 0.5])


def test_pooled_pearson_equals_numpy_over_all_pairs():
    g = torch.Generator().manual_seed(0)
    quality = SimilarityQuality(k=3)
    all_s, all_y = [], []
    for b in (6, 9, 12):
        s = torch.rand(b, b, generator=g)
        s = (s + s.T) / 2
        s.fill_diagonal_(1)
        y = torch.randint(0, 3, (b,), generator=g)
        quality.update(s, y)
        off = ~torch.eye(b, dtype=torch.bool)
        all_s.append(s[off].numpy())
        all_y.append((y[:, None] == y[None, :])[off].numpy().astype(float))
    expected = np.corrcoef(np.concatenate(all_s), np.concatenate(all_y))[0, 1]
    assert quality.compute()["pearson"] == pytest.approx(expected, rel=1e-9)


def test_perfect_similarity_scores_one():
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    s = (y[:, None] == y[None, :]).float()
    q = SimilarityQuality(k=2)
    q.update(s, y)
    assert q.compute() == {"purity": pytest.approx(1.0), "pearson": pytest.approx(1.0)}
