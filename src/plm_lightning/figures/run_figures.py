"""The figures of a trained run: Recall@K against epoch, a retrieval grid, same- vs different-class similarity
histograms, and a 2-D projection of the test embeddings.

Pure matplotlib (Agg) on arrays: every function takes numbers or images and returns a figure; ``save_figure``
writes it atomically. The callback (callbacks/run_plots.py), plm-search and the notebooks draw through here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from plm_lightning.figures.common import plt, save_figure
from plm_lightning.manifold.similarity import teacher_space

__all__ = [
    "embedding_projection",
    "pca_2d",
    "query_choice",
    "raw_image",
    "recall_curve",
    "retrieval_grid",
    "same_class_histogram",
    "save_figure",
]

MATCH_COLOURS = {True: "tab:green", False: "tab:red", None: "0.6"}


# --- Recall@K against epoch ---------------------------------------------------------------------------------------
def recall_curve(
    history: Sequence[Mapping[str, Any]],
    ks: Sequence[int],
    initial: Optional[Mapping[str, Any]] = None,
    title: str = "Zero-shot retrieval on the test split",
):
    """One line per K (and MAP@R, dashed, when the history has it). ``initial`` (before training) is epoch -1."""
    rows = ([{"epoch": -1, **initial}] if initial else []) + [dict(h) for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    epochs = [r["epoch"] for r in rows]
    for k in ks:
        ax.plot(epochs, [_value(r, f"R@{k}") for r in rows], marker="o", markersize=3, label=f"R@{k}")
    if any(r.get("MAP@R") is not None for r in rows):
        ax.plot(
            epochs,
            [_value(r, "MAP@R") for r in rows],
            marker="s",
            markersize=3,
            linestyle="--",
            color="k",
            label="MAP@R",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (-1 = before training)" if initial else "epoch")
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _value(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return float("nan") if v is None else float(v)


# --- retrieval grid -----------------------------------------------------------------------------------------------
def query_choice(labels: np.ndarray, n: int) -> list[int]:
    """A fixed, spread-out choice of query indices: the first item of each class (classes in sorted order), then
    the second of each, ..., until ``n`` are chosen. Depends on the labels only."""
    labels = np.asarray(labels)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    chosen: list[int] = []
    for rank in range(max((len(m) for m in by_class), default=0)):
        for members in by_class:
            if rank < len(members) and len(chosen) < n:
                chosen.append(int(members[rank]))
    return chosen


def raw_image(image: Any) -> np.ndarray:
    """A dataset's raw image (PIL image, C x H x W tensor or array, or H x W [x C] array) as an array that imshow
    shows as stored: H x W (grey) or H x W x 3."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        image = np.asarray(image.convert("L" if image.mode in ("L", "1", "I", "I;16", "F") else "RGB"))
    elif hasattr(image, "detach"):  # torch tensor, C x H x W
        image = image.detach().cpu().numpy()
        image = np.moveaxis(image, 0, -1) if image.ndim == 3 else image
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"not an image: array of shape {image.shape}")
    return image


def retrieval_grid(
    queries: Sequence[np.ndarray],
    results: Sequence[Sequence[np.ndarray]],
    matches: Optional[Sequence[Sequence[Optional[bool]]]] = None,
    captions: Optional[Sequence[Sequence[str]]] = None,
    query_captions: Optional[Sequence[str]] = None,
    title: str = "",
):
    """One row per query: the query (blue border), then its results left to right, each with a green border
    (same class as the query), red (different class) or grey (unknown). Images are shown as given (raw pixels)."""
    rows = len(queries)
    cols = 1 + max((len(r) for r in results), default=0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.35 * rows), squeeze=False)
    for i in range(rows):
        _tile(axes[i][0], queries[i], "tab:blue", query_captions[i] if query_captions else "query")
        for j in range(1, cols):
            ax = axes[i][j]
            if j - 1 >= len(results[i]):
                ax.axis("off")
                continue
            match = matches[i][j - 1] if matches is not None else None
            caption = captions[i][j - 1] if captions is not None else f"{j}"
            _tile(ax, results[i][j - 1], MATCH_COLOURS[match], caption)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _tile(ax, image: np.ndarray, colour: str, caption: str) -> None:
    image = np.asarray(image)
    grey = image.ndim == 2
    # Greyscale at its own range, so that an 8 x 8 digit and a photo both show their content.
    ax.imshow(image, cmap="gray" if grey else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    ax.set_title(caption, fontsize=7, color=colour if colour != "0.6" else "k")


# --- similarity histograms ----------------------------------------------------------------------------------------
def same_class_histogram(
    same: np.ndarray,
    different: np.ndarray,
    *,
    title: str = "",
    bins: int = 40,
    quality: Optional[Mapping[str, float]] = None,
):
    """The distribution of an estimated similarity s for same-class and for different-class pairs."""
    same, different = np.asarray(same, dtype=np.float64), np.asarray(different, dtype=np.float64)
    both = np.concatenate([same, different])
    # Bins over the observed range: a trained PLM similarity often lives in a narrow band near 1.
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.hist(
        different,
        bins=edges,
        density=True,
        alpha=0.6,
        color="tab:red",
        label=f"different class ({different.size} pairs)",
    )
    ax.hist(same, bins=edges, density=True, alpha=0.6, color="tab:green", label=f"same class ({same.size} pairs)")
    ax.set_yscale("log")
    ax.set_xlabel("estimated similarity s")
    ax.set_ylabel("density (log)")
    if quality:
        purity, pearson = quality.get("purity", float("nan")), quality.get("pearson", float("nan"))
        title = f"{title}\npurity {purity:.2f}  r {pearson:.2f}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


# --- 2-D projection -----------------------------------------------------------------------------------------------
def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """The first two principal components (N x 2), deterministic: each axis's sign makes its largest-magnitude
    loading positive."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[0] == 0:
        return np.zeros((0, 2))
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:2]
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    proj = x @ (vt * signs[:, None]).T
    if proj.shape[1] < 2:  # one-dimensional embeddings
        proj = np.concatenate([proj, np.zeros((proj.shape[0], 2 - proj.shape[1]))], axis=1)
    return proj


def embedding_projection(
    embeddings: np.ndarray, labels: np.ndarray, *, method: str = "pca", seed: int = 0, title: str = "Test embeddings"
):
    """A scatter plot of the embeddings in 2-D (PCA, or t-SNE from scikit-learn), coloured by class."""
    labels = np.asarray(labels)
    if method == "pca":
        xy = pca_2d(embeddings)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        n = len(labels)
        xy = TSNE(
            n_components=2, init="pca", random_state=seed, perplexity=min(30.0, max(2.0, (n - 1) / 3))
        ).fit_transform(np.asarray(embeddings, dtype=np.float32))
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    fig, ax = plt.subplots(figsize=(5, 4.4))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=str(c))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("PC 1" if method == "pca" else "t-SNE 1")
    ax.set_ylabel("PC 2" if method == "pca" else "t-SNE 2")
    ax.set_title(title, fontsize=10)
    if len(classes) <= 20:
        ax.legend(
            fontsize=7, markerscale=2, title="class", title_fontsize=7, loc="best", ncol=2 if len(classes) > 10 else 1
        )
    return fig


# --- the numbers behind the grid and the histograms ---------------------------------------------------------------
def pair_similarities(
    embeddings,
    labels,
    estimator,
    *,
    batch_size: int,
    neighbours_per_seed: int,
    seed: int = 0,
    max_batches: Optional[int] = 20,
    normalize: bool = True,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(same-class s, different-class s, {purity, pearson}) of ``estimator`` on the nearest-neighbour batches
    that training would build from these embeddings (data.sampler.training_batches, manifold.quality)."""
    import torch

    from plm_lightning.data.sampler import training_batches
    from plm_lightning.manifold.quality import similarity_report

    emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    emb = teacher_space(emb, normalize)  # as the similarity sees the teacher's embeddings in training
    batch_size = min(batch_size, emb.shape[0] - emb.shape[0] % neighbours_per_seed)
    batches = training_batches(
        emb, batch_size, neighbours_per_seed, seed=seed, max_batches=max_batches, backend=backend
    )
    report, values = similarity_report(
        emb, lab, {"s": estimator}, batches, purity_k=neighbours_per_seed, keep_values=True
    )
    return values["s"]["same"].numpy(), values["s"]["different"].numpy(), report["s"]
