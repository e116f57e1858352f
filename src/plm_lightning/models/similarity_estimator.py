"""The method's knobs of a config as the pure core's objects: the similarity estimator that ``method.similarity``
and the ablation knobs describe, and the knobs whose defaults derive from others. Used by the LightningModule, the
plots callback and the analyses, so that each builds the same estimator from the same config."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from plm_lightning.manifold.estimators import ESTIMATORS, Binarized, SimilarityEstimator, build_estimator
from plm_lightning.stml import ContextualSimilarity

# method.similarity and plm-simreport's estimators: the PLM core's, and STML's contextualised similarity
SIMILARITIES = (*ESTIMATORS, "stml")


def derived_method_values(cfg: DictConfig) -> dict[str, int]:
    """Method knobs whose default depends on other knobs (docs/method.md: M = 2k, q = k)."""
    k = cfg.data.sampler.neighbours_per_seed
    method = cfg.method

    def default(value: Any, fallback: int) -> int:
        return value if value is not None else fallback

    return {
        "max_candidates": default(method.plm.max_candidates, 2 * k),
        "proxy_neighbours": default(method.proxies.neighbours, k),
        "knn_k": default(method.knn.k, k),
        "kmeans_clusters": default(method.kmeans.clusters, cfg.data.sampler.batch_size // k),
    }


def build_similarity(cfg: DictConfig, name: Optional[str] = None) -> SimilarityEstimator:
    """The similarity estimator that ``method.similarity`` (or ``name``) and the ablation knobs describe; a run of
    method.name=stml measures with STML's own (``stml``).

    ``stml`` here sees one view per image (plm-simreport's batches, ``method.similarity=stml`` in PLM's loss), so its
    k is method.stml.neighbours or the neighbours per seed; STML's training counts every view (models/derived.py)."""
    method = cfg.method
    d = derived_method_values(cfg)
    name = name or ("stml" if method.name == "stml" else method.similarity)
    if name == "stml":
        k = method.stml.neighbours or cfg.data.sampler.neighbours_per_seed
        est: SimilarityEstimator = ContextualSimilarity(sigma=method.stml.sigma, k=int(k))
        threshold = method.plm.binary_threshold
        return est if threshold is None else Binarized(est, threshold)
    return build_estimator(
        name,
        n_alpha=method.plm.n_alpha,
        n_beta=method.plm.n_beta,
        piece_dim=method.plm.piece_dim,
        max_candidates=d["max_candidates"],
        tau=method.plm.tau,
        subset_selection=method.plm.subset_selection,
        gaussian_sigma=method.gaussian.sigma,
        knn_k=d["knn_k"],
        kmeans_clusters=d["kmeans_clusters"],
        seed=cfg.run.seed,
        binary_threshold=method.plm.binary_threshold,
        symmetrize=method.plm.symmetrize,
        greedy_test=method.plm.greedy_test,
        distance_scale=method.plm.distance_scale,
    )
