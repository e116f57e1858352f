"""Pooling + linear embedding head (docs/protocols.md: global average + global max pooling, summed, then a linear
layer with orthogonal initialisation)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from plm_lightning.models.backbones import BACKBONES

POOLINGS = ("avg", "max", "avg+max")


class EmbeddingHead(nn.Module):
    def __init__(self, in_channels: int, embedding_dim: int, pooling: str = "avg+max"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.linear = nn.Linear(in_channels, embedding_dim)
        nn.init.orthogonal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 2:  # vector backbones (mlp) have nothing to pool
            return self.linear(features)
        if self.pooling == "avg":
            pooled = features.mean(dim=(2, 3))
        elif self.pooling == "max":
            pooled = features.amax(dim=(2, 3))
        else:
            pooled = features.mean(dim=(2, 3)) + features.amax(dim=(2, 3))
        return self.linear(pooled)


class Embedder(nn.Module):
    """Backbone + head: images -> unnormalised embeddings. The loss and the evaluation normalise.

    freeze_bn: the backbone's batch-norm layers stay in eval mode (normalise with, and never update, their running
    statistics) and their affine parameters are not trained. Enforced in train(), which Lightning and every parent
    module call on their children, so it survives each epoch's model.train()."""

    def __init__(self, backbone: nn.Module, head: EmbeddingHead, freeze_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for bn in self._backbone_batch_norms():
                bn.requires_grad_(False)  # the optimiser skips parameters without gradients; so does DDP
            self.train(self.training)

    def _backbone_batch_norms(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for bn in self._backbone_batch_norms():
                bn.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def backbone_input_channels(backbone: str, dataset_channels: int) -> int:
    spec = BACKBONES[backbone]
    return spec.input_channels or dataset_channels


def backbone_input_space(backbone: str) -> str:
    """The preprocessing the backbone expects (BackboneSpec.input_space; data/transforms.py builds it)."""
    return BACKBONES[backbone].input_space


def build_embedder(
    backbone: str,
    *,
    embedding_dim: int,
    pooling: str,
    pretrained: bool,
    in_channels: int,
    width: int = 64,
    freeze_bn: bool = False,
    weights: Optional[str] = None,
) -> Embedder:
    """weights: a local file for the backbone (model.weights, models/weights.py), used instead of the download that
    ``pretrained`` asks for; the head always starts fresh."""
    spec = BACKBONES[backbone]
    net = spec.build(pretrained=pretrained and weights is None, in_channels=in_channels, width=width)
    if weights is not None:
        from plm_lightning.models.weights import load_backbone_weights

        load_backbone_weights(net, backbone, weights)
    return Embedder(net, EmbeddingHead(spec.out_channels(width), embedding_dim, pooling), freeze_bn=freeze_bn)
