"""The PLM method in pure torch: linear pieces, similarity, proxies, loss, EMA teacher. No Lightning, no data."""

from plm_lightning.manifold.loss import PLMLoss, neighbourhood_loss, point_loss, proxy_loss
from plm_lightning.manifold.pieces import Pieces, fit_pieces, local_pca_basis, orthonormal_basis
from plm_lightning.manifold.proxies import ProxyManifold
from plm_lightning.manifold.similarity import PLMSimilarity, directed_similarity, piece_distances
from plm_lightning.manifold.teacher import ema_update_, make_teacher

__all__ = [
    "PLMLoss",
    "PLMSimilarity",
    "Pieces",
    "ProxyManifold",
    "directed_similarity",
    "ema_update_",
    "fit_pieces",
    "local_pca_basis",
    "make_teacher",
    "neighbourhood_loss",
    "orthonormal_basis",
    "piece_distances",
    "point_loss",
    "proxy_loss",
]
