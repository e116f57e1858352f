"""Backbones, the embedding head and the LightningModule that composes them with the PLM method.

The LightningModule lives in ``plm_lightning.models.plm_module`` (imported explicitly: it pulls in Lightning, which
config validation does not need)."""

from plm_lightning.models.backbones import BACKBONES
from plm_lightning.models.head import Embedder, EmbeddingHead, build_embedder

__all__ = ["BACKBONES", "Embedder", "EmbeddingHead", "build_embedder"]
