"""Backbones: networks that map images to a feature map (B x C x H x W), or vectors to features (B x C: mlp).
Pooling and embedding live in head.py. Each backbone names the input space its weights expect (docs/protocols.md);
data/transforms.py builds the matching preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional
from urllib.error import URLError

import torch
from torch import nn

from plm_lightning.models import bn_inception as _bn


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]  # (pretrained, in_channels, width) -> module
    out_channels: Callable[[int], int]  # width -> channels of the feature map
    input_channels: int  # 0 = any (follows the dataset), else what the network takes
    pretrainable: bool
    # The preprocessing the (pretrained) weights expect, one of data/transforms.INPUT_SPACES: "imagenet_rgb" (RGB in
    # [0, 1], ImageNet mean/std: torchvision), "caffe_bgr255" (BGR, 0-255, minus the Caffe mean [104, 117, 128], no
    # std: BN-Inception) or "any" (small nets from scratch: the dataset's own normalisation, vectors unchanged).
    input_space: str
    # Maps the published pretrained state_dict (torchvision's / pretrainedmodels' keys) to this module's keys, for
    # model.weights=PATH (models/weights.py); None where there is no published file.
    native_keys: Optional[Callable[[dict], dict]] = None


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be downloaded or loaded. The message is one line naming model.pretrained;
    plm-fit prints it and exits with 2."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "reason", None) or exc).split())


def _download_error(name: str, exc: BaseException) -> PretrainedWeightsError:
    if isinstance(exc, (URLError, ConnectionError, TimeoutError)):  # also DNS failures, refused connections
        return PretrainedWeightsError(
            f"could not download pretrained {name} weights: no network ({_one_line(exc)}); they are needed once "
            f"(then cached under {torch.hub.get_dir()}), or set model.pretrained=false"
        )
    # torch.hub's check_hash (a truncated or altered download), an unwritable cache, ...
    return PretrainedWeightsError(
        f"could not load pretrained {name} weights ({_one_line(exc)}); delete the cached "
        f"file under {torch.hub.get_dir()} and retry, or set model.pretrained=false"
    )


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(pretrained: bool = False, in_channels: int = 1, width: int = 64) -> nn.Module:
    """Three conv blocks, for small images (digits). Trains in seconds on a CPU."""
    if pretrained:
        raise ValueError("model.pretrained=true: small_cnn has no pretrained weights; set model.pretrained=false")
    return nn.Sequential(
        _conv_block(in_channels, width),
        _conv_block(width, width),
        nn.MaxPool2d(2),
        _conv_block(width, 2 * width),
        _conv_block(2 * width, 2 * width),
    )


def mlp(pretrained: bool = False, in_channels: int = 32, width: int = 64) -> nn.Module:
    """Two hidden layers for vector data (synthetic): B x in_channels -> B x width features. CPU-fast."""
    if pretrained:
        raise ValueError("model.pretrained=true: mlp has no pretrained weights; set model.pretrained=false")
    return nn.Sequential(
        nn.Linear(in_channels, width, bias=False),
        nn.BatchNorm1d(width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width, bias=False),
        nn.BatchNorm1d(width),
        nn.ReLU(inplace=True),
    )


def _torchvision(name: str, weights_enum: str):
    def build(pretrained: bool = True, in_channels: int = 3, width: int = 0) -> nn.Module:
        import torchvision

        ctor = getattr(torchvision.models, name)
        weights = getattr(torchvision.models, weights_enum).DEFAULT if pretrained else None
        kwargs: dict = {}
        if name == "googlenet":
            # transform_input=True always (torchvision sets it with its weights): the network takes ImageNet-normalised
            # input (our "imagenet_rgb") and maps it to the (x - 0.5) / 0.5 scaling its ported weights were trained
            # on. Always, so that a model rebuilt without downloading (plm-eval, model.weights) computes the same
            # function as the one trained from the downloaded weights.
            kwargs["transform_input"] = True
            if weights is None:
                kwargs.update(aux_logits=False, init_weights=True)
        try:
            net = ctor(weights=weights, **kwargs)
        except (URLError, OSError, RuntimeError) as exc:  # URLError is an OSError; RuntimeError: hash check
            raise _download_error(name, exc) from None
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
        for name in (
            "conv1",
            "maxpool1",
            "conv2",
            "conv3",
            "maxpool2",
            "inception3a",
            "inception3b",
            "maxpool3",
            "inception4a",
            "inception4b",
            "inception4c",
            "inception4d",
            "inception4e",
            "maxpool4",
            "inception5a",
            "inception5b",
        ):
            x = getattr(n, name)(x)
        return x


def bn_inception(pretrained: bool = True, in_channels: int = 3, width: int = 0) -> nn.Module:
    """BN-Inception (models/bn_inception.py); pretrained: the ImageNet weights of the pretrainedmodels port,
    downloaded once (hash-checked) and cached under torch.hub.get_dir()."""
    model = _bn.BNInception()
    if not pretrained:
        return model
    try:
        state = torch.hub.load_state_dict_from_url(
            _bn.WEIGHTS_URL, map_location="cpu", check_hash=True, weights_only=True, progress=False
        )
    except (URLError, OSError, RuntimeError) as exc:
        raise _download_error("bn_inception", exc) from None
    _bn.load_pretrained_state(model, state)
    return model


def _googlenet_native(state: dict) -> dict:
    return {"net." + k: v for k, v in state.items()}


def _resnet50_native(state: dict) -> dict:
    """torchvision's names (conv1, bn1, layer1, ...) -> positions in our nn.Sequential of its children."""
    children = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    position = {name: str(i) for i, name in enumerate(children)}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in position:
            out[f"{position[head]}.{rest}"] = value
    return out


def _bn_inception_native(state: dict) -> dict:
    return _bn.published_to_module_state(state)


BACKBONES: dict[str, BackboneSpec] = {
    "small_cnn": BackboneSpec(small_cnn, lambda w: 2 * w, input_channels=0, pretrainable=False, input_space="any"),
    "mlp": BackboneSpec(mlp, lambda w: w, input_channels=0, pretrainable=False, input_space="any"),
    "googlenet": BackboneSpec(
        _torchvision("googlenet", "GoogLeNet_Weights"),
        lambda w: 1024,
        input_channels=3,
        pretrainable=True,
        input_space="imagenet_rgb",
        native_keys=_googlenet_native,
    ),
    "resnet50": BackboneSpec(
        _torchvision("resnet50", "ResNet50_Weights"),
        lambda w: 2048,
        input_channels=3,
        pretrainable=True,
        input_space="imagenet_rgb",
        native_keys=_resnet50_native,
    ),
    "bn_inception": BackboneSpec(
        bn_inception,
        lambda w: _bn.OUT_CHANNELS,
        input_channels=3,
        pretrainable=True,
        input_space="caffe_bgr255",
        native_keys=_bn_inception_native,
    ),
}
