"""The run figures' drawing functions on small arrays: what they draw, and that they draw it deterministically."""

import numpy as np
import pytest
import torch
from PIL import Image

from plm_lightning.figures.run_figures import (
    embedding_projection,
    pair_similarities,
    pca_2d,
    query_choice,
    raw_image,
    recall_curve,
    retrieval_grid,
    same_class_histogram,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_recall_curve_one_line_per_k_plus_map_r_and_saves_png(tmp_path):
    history = [{"epoch": e, "R@1": 50 + e, "R@2": 60 + e, "MAP@R": 20 + e} for e in range(3)]
    fig = recall_curve(history, [1, 2], initial={"R@1": 40.0, "R@2": 45.0, "MAP@R": None})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["R@1", "R@2", "MAP@R"]
    assert list(ax.get_lines()[0].get_xdata()) == [-1, 0, 1, 2]
    assert list(ax.get_lines()[0].get_ydata()) == [40, 50, 51, 52]
    save_figure(fig, tmp_path / "deep" / "recall.png")
    data = (tmp_path / "deep" / "recall.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["recall.png"]  # no temporary left behind


def test_recall_curve_without_map_r():
    fig = recall_curve([{"epoch": 0, "R@1": 1.0}], [1])
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["R@1"]


def test_query_choice_is_spread_over_classes_and_fixed():
    labels = np.array([3, 3, 1, 1, 1, 2])
    assert query_choice(labels, 4) == [2, 5, 0, 3]  # first of classes 1, 2, 3, then the second of class 1
    assert query_choice(labels, 100) == [2, 5, 0, 3, 1, 4]
    assert query_choice(labels, 4) == query_choice(labels.copy(), 4)


def test_raw_image_shows_stored_pixels():
    digit = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)  # a dataset's 1 x H x W tensor
    assert np.array_equal(raw_image(digit), digit[0].numpy())
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(raw_image(Image.fromarray(rgb)), rgb)
    assert np.array_equal(raw_image(torch.from_numpy(rgb).permute(2, 0, 1)), rgb)
    assert raw_image(Image.fromarray(rgb[..., 0])).shape == (5, 7)
    with pytest.raises(ValueError):
        raw_image(np.zeros(4))


def test_retrieval_grid_borders_say_same_or_different_class():
    img = np.zeros((8, 8), np.uint8)
    fig = retrieval_grid([img, img], [[img, img, img], [img]], matches=[[True, False, None], [False]])
    axes = np.array(fig.axes).reshape(2, 4)
    colour = lambda ax: ax.spines["left"].get_edgecolor()  # noqa: E731
    import matplotlib.colors as mc

    assert colour(axes[0, 1]) == mc.to_rgba("tab:green") and colour(axes[0, 2]) == mc.to_rgba("tab:red")
    assert colour(axes[0, 0]) == mc.to_rgba("tab:blue")
    assert not axes[1, 2].axison  # a shorter row leaves empty cells


def test_same_class_histogram_has_both_kinds_of_pairs():
    rng = np.random.default_rng(0)
    fig = same_class_histogram(
        rng.uniform(0.8, 1, 50), rng.uniform(0.5, 0.9, 200), title="t", quality={"purity": 0.9, "pearson": 0.5}
    )
    _, labels = fig.axes[0].get_legend_handles_labels()
    assert labels == ["different class (200 pairs)", "same class (50 pairs)"]
    assert "purity 0.90" in fig.axes[0].get_title()
    same_class_histogram(np.ones(3), np.ones(3))  # a degenerate range still draws


def test_pca_is_deterministic_and_matches_the_principal_axes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1])
    a, b = pca_2d(x), pca_2d(x[::-1].copy())[::-1]
    assert a.shape == (200, 2) and np.allclose(a, b)
    centred = x - x.mean(0)
    assert np.allclose(np.abs(a[:, 0]), np.abs(centred[:, 0]), atol=0.5)
    assert pca_2d(np.zeros((0, 3))).shape == (0, 2)
    fig = embedding_projection(x, np.repeat([0, 1], 100))
    assert len(fig.axes[0].collections) == 2


def test_pair_similarities_on_separated_classes():
    from plm_lightning.manifold import PLMSimilarity

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 3
    labels = np.repeat(np.arange(4), 30)
    emb = centres[labels] + 0.1 * rng.normal(size=(120, 8))
    same, different, quality = pair_similarities(
        emb, labels, PLMSimilarity(), batch_size=20, neighbours_per_seed=5, max_batches=4
    )
    assert same.size and different.size and same.mean() > different.mean()
    assert quality["purity"] > 0.8
