"""Backbones: networks that map images to a feature map (B x C x H x W), or vectors to features (B x C: mlp).
Pooling and embedding live in head.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]  # (pretrained, in_channels, width) -> module
    out_channels: Callable[[int], int]  # width -> channels of the feature map
    input_channels: int  # 0 = any (follows the dataset), else what the network takes
    pretrainable: bool


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(pretrained: bool = False, in_channels: int = 1, width: int = 64) -> nn.Module:
    """Three conv blocks, for small images (digits). Trains in seconds on a CPU."""
    if pretrained:
        raise ValueError("model.pretrained=true: small_cnn has no pretrained weights; set model.pretrained=false")
    return nn.Sequential(
        _conv_block(in_channels, width), _conv_block(width, width), nn.MaxPool2d(2),
        _conv_block(width, 2 * width), _conv_block(2 * width, 2 * width),
    )


def mlp(pretrained: bool = False, in_channels: int = 32, width: int = 64) -> nn.Module:
    """Two hidden layers for vector data (synthetic): B x in_channels -> B x width features. CPU-fast."""
    if pretrained:
        raise ValueError("model.pretrained=true: mlp has no pretrained weights; set model.pretrained=false")
    return nn.Sequential(
        nn.Linear(in_channels, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
        nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
    )


def _torchvision(name: str, weights_enum: str):
    def build(pretrained: bool = True, in_channels: int = 3, width: int = 0) -> nn.Module:
        import torchvision

        ctor = getattr(torchvision.models, name)
        weights = getattr(torchvision.models, weights_enum).DEFAULT if pretrained else None
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" and weights is None else {}
        try:
            net = ctor(weights=weights, **kwargs)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise RuntimeError(f"could not load pretrained {name} weights ({exc}); they need network access once "
                               f"(then they are cached), or set model.pretrained=false") from None
        # Keep everything up to the last feature map: drop pooling, dropout and the classifier.
        if name == "googlenet":
            # Unused parameters would also break DDP (every parameter must receive a gradient).
            net.aux1 = net.aux2 = None
            net.aux_logits = False
            net.fc = nn.Identity()
            return _GoogLeNetFeatures(net)
        return nn.Sequential(*[m for n, m in net.named_children() if n not in ("avgpool", "fc")])

    return build


class _GoogLeNetFeatures(nn.Module):
    """torchvision's GoogLeNet up to inception5b (its forward transforms input only when transform_input=True)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if getattr(n, "transform_input", False):
            x = n._transform_input(x)
        for name in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                     "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                     "inception5a", "inception5b"):
            x = getattr(n, name)(x)
        return x


BACKBONES: dict[str, BackboneSpec] = {
    "small_cnn": BackboneSpec(small_cnn, lambda w: 2 * w, input_channels=0, pretrainable=False),
    "mlp": BackboneSpec(mlp, lambda w: w, input_channels=0, pretrainable=False),
    "googlenet": BackboneSpec(_torchvision("googlenet", "GoogLeNet_Weights"), lambda w: 1024, input_channels=3,
                              pretrainable=True),
    "resnet50": BackboneSpec(_torchvision("resnet50", "ResNet50_Weights"), lambda w: 2048, input_channels=3,
                             pretrainable=True),
}
