"""BN-Inception (Inception-v2 with batch norm, Ioffe & Szegedy 2015) as deep metric learning uses it: the Caffe model
ported by Cadene's ``pretrainedmodels`` ("bninception"), up to inception_5b (1024 channels, no pooling, no classifier).

Parameter and buffer names follow that port (``conv1_7x7_s2.weight``, ``inception_3a_1x1_bn.running_mean``, ...), so
its published ImageNet weights load with ``load_state_dict(strict=True)``. Input: BGR, 0-255, minus the per-channel
mean [104, 117, 128] (BGR order), no division by a std (data/transforms.py, input space "caffe_bgr255").
Every convolution is followed by batch norm (eps 1e-5) and ReLU; max pools use ceil_mode as in Caffe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

# The port that DML code uses (Proxy-Anchor and others); the hex after the dash is the start of its SHA-256,
# which torch.hub checks. Its batch-norm tensors are stored as 1 x C and it carries the ImageNet classifier
# (last_linear.*); load_pretrained_state reshapes the first and drops the second. The download is backbones.py's.
WEIGHTS_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
OUT_CHANNELS = 1024


@dataclass(frozen=True)
class InceptionSpec:
    """One inception block. stride 2 (3c, 4e): no 1x1 branch, no pool projection, the two 3x3 branches downsample
    and the max-pooled input passes through unchanged."""

    name: str  # "3a": modules are named inception_3a_<branch>
    cin: int
    c1x1: int  # 0 = no 1x1 branch
    c3x3_reduce: int
    c3x3: int
    cdouble_reduce: int
    cdouble: int
    pool: str  # "avg" | "max"
    pool_proj: int  # 0 = the pooled input passes through (stride-2 blocks)
    stride: int = 1

    @property
    def out_channels(self) -> int:
        passthrough = self.cin if self.pool_proj == 0 else self.pool_proj
        return self.c1x1 + self.c3x3 + self.cdouble + passthrough


BLOCKS = (
    InceptionSpec("3a", 192, 64, 64, 64, 64, 96, "avg", 32),
    InceptionSpec("3b", 256, 64, 64, 96, 64, 96, "avg", 64),
    InceptionSpec("3c", 320, 0, 128, 160, 64, 96, "max", 0, stride=2),
    InceptionSpec("4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    InceptionSpec("4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    InceptionSpec("4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    InceptionSpec("4d", 608, 96, 128, 192, 160, 192, "avg", 128),
    InceptionSpec("4e", 608, 0, 128, 192, 192, 256, "max", 0, stride=2),
    InceptionSpec("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
    InceptionSpec("5b", 1024, 352, 192, 320, 192, 224, "max", 128),
)


class BNInception(nn.Module):
    """Images (B x 3 x H x W, caffe_bgr255) -> feature map (B x 1024 x H/32 x W/32, rounded as the pools round)."""

    def __init__(self):
        super().__init__()
        # Flat attribute names (not nested blocks) so that the state-dict keys are those of the published weights.
        self._conv_bn("conv1_7x7_s2", 3, 64, 7, stride=2)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._conv_bn("conv2_3x3_reduce", 64, 64, 1)
        self._conv_bn("conv2_3x3", 64, 192, 3)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.relu = nn.ReLU(inplace=True)  # parameter-free, shared by every convolution
        for b in BLOCKS:
            p = f"inception_{b.name}_"
            if b.c1x1:
                self._conv_bn(p + "1x1", b.cin, b.c1x1, 1)
            self._conv_bn(p + "3x3_reduce", b.cin, b.c3x3_reduce, 1)
            self._conv_bn(p + "3x3", b.c3x3_reduce, b.c3x3, 3, stride=b.stride)
            self._conv_bn(p + "double_3x3_reduce", b.cin, b.cdouble_reduce, 1)
            self._conv_bn(p + "double_3x3_1", b.cdouble_reduce, b.cdouble, 3)
            self._conv_bn(p + "double_3x3_2", b.cdouble, b.cdouble, 3, stride=b.stride)
            if b.stride == 2:
                pool: nn.Module = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif b.pool == "max":
                pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
            else:
                pool = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            setattr(self, p + "pool", pool)
            if b.pool_proj:
                self._conv_bn(p + "pool_proj", b.cin, b.pool_proj, 1)

    def _conv_bn(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        # Convolutions keep their bias (as in the Caffe model, whose weights carry it). Batch-norm momentum is
        # PyTorch's default 0.1: the port's momentum=0.9 is Caffe's "keep 90% of the old statistics" read with
        # PyTorch's opposite convention (it is not in the weights; with model.freeze_bn it does not matter).
        setattr(self, name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout, eps=1e-5))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

    def _block(self, b: InceptionSpec, x: torch.Tensor) -> torch.Tensor:
        p = f"inception_{b.name}_"
        branches = []
        if b.c1x1:
            branches.append(self._cbr(p + "1x1", x))
        branches.append(self._cbr(p + "3x3", self._cbr(p + "3x3_reduce", x)))
        double = self._cbr(p + "double_3x3_reduce", x)
        branches.append(self._cbr(p + "double_3x3_2", self._cbr(p + "double_3x3_1", double)))
        pooled = getattr(self, p + "pool")(x)
        branches.append(self._cbr(p + "pool_proj", pooled) if b.pool_proj else pooled)
        sizes = {tuple(t.shape[2:]) for t in branches}
        if len(sizes) > 1:
            raise ValueError(
                f"bn_inception: a {x.shape[2]}x{x.shape[3]} map entering inception_{b.name} gives "
                f"branches of sizes {sorted(sizes)}; use an input size that fits (data.image_size such "
                f"as 224 or 227)"
            )
        return torch.cat(branches, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_3x3_s2(self._cbr("conv1_7x7_s2", x))
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for b in BLOCKS:
            x = self._block(b, x)
        return x


def bn_inception_map_size(size: int) -> Optional[int]:
    """Side of the final feature map for a square input of side ``size``, or None when the input does not fit: the
    two stride-2 blocks (3c, 4e) concatenate a padded stride-2 convolution with a ceil-mode max pool, whose outputs
    agree only on even sides, and the pools need at least 3 pixels."""
    s = (size - 1) // 2 + 1  # conv1 7x7/2, padding 3
    for _ in range(2):  # pool1, pool2: 3x3/2, ceil mode
        if s < 3:
            return None
        s = -(-(s - 3) // 2) + 1
    for _ in range(2):  # inception 3c, 4e
        if s < 3 or s % 2:
            return None
        s //= 2
    return s


def published_to_module_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published state dict in this module's terms: the classifier dropped, its 1 x C vectors (batch-norm
    tensors, biases) as C. Without the classifier the network has no 2-D tensors, so every 1 x C one is such a
    vector."""
    return {
        key: value.reshape(-1) if value.dim() == 2 and value.shape[0] == 1 else value
        for key, value in state.items()
        if not key.startswith("last_linear.")
    }


def load_pretrained_state(model: BNInception, state: dict[str, torch.Tensor]) -> None:
    """Load the published state dict (published_to_module_state), strictly."""
    model.load_state_dict(published_to_module_state(state), strict=True)
