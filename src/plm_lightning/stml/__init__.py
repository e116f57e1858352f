"""STML (Kim et al., "Self-Taught Metric Learning without Labels", CVPR 2022) in pure torch: the teacher's
contextualised semantic similarity and the student's losses. No Lightning, no data; docs/stml.md."""

from plm_lightning.stml.loss import STMLLoss, relaxed_contrastive_loss, row_mean_distances, self_distillation_loss
from plm_lightning.stml.similarity import (
    ContextualSimilarity,
    contextual_similarity,
    gaussian_kernel,
    half_neighbourhood,
)

__all__ = [
    "ContextualSimilarity",
    "STMLLoss",
    "contextual_similarity",
    "gaussian_kernel",
    "half_neighbourhood",
    "relaxed_contrastive_loss",
    "row_mean_distances",
    "self_distillation_loss",
]
