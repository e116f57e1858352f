"""The method's knobs of a config as the pure core's objects: the similarity estimator that ``method.similarity``
and the ablation knobs describe, and the knobs whose defaults derive from others. Used by the LightningModule, the
plots callback and the analyses, so that each builds the same estimator from the same config."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from plm_lightning.manifold.estimators import SimilarityEstimator, build_estimator


def derived_method_values(cfg: DictConfig) -> dict[str, int]:
    """Method knobs whose default depends on other knobs (docs/method.md: M = 2k, q = k)."""
    k = cfg.data.neighbours_per_seed
    me = cfg.method

    def default(value: Any, fallback: int) -> int:
        return value if value is not None else fallback

    return {
        "max_candidates": default(me.max_candidates, 2 * k),
        "proxy_neighbours": default(me.proxy_neighbours, k),
        "knn_k": default(me.knn_k, k),
        "kmeans_clusters": default(me.kmeans_clusters, cfg.data.batch_size // k),
    }


def build_similarity(cfg: DictConfig, name: Optional[str] = None) -> SimilarityEstimator:
    """The similarity estimator that ``method.similarity`` (or ``name``) and the ablation knobs describe."""
    me = cfg.method
    d = derived_method_values(cfg)
    return build_estimator(
        name or me.similarity,
        n_alpha=me.n_alpha,
        n_beta=me.n_beta,
        piece_dim=me.piece_dim,
        max_candidates=d["max_candidates"],
        tau=me.tau,
        subset_selection=me.subset_selection,
        gaussian_sigma=me.gaussian_sigma,
        knn_k=d["knn_k"],
        kmeans_clusters=d["kmeans_clusters"],
        seed=cfg.run.seed,
        binary_threshold=me.binary_threshold,
        symmetrize=me.symmetrize,
        greedy_test=me.greedy_test,
        distance_scale=me.distance_scale,
    )
