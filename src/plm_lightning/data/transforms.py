"""Train and eval transforms per dataset family and backbone (docs/protocols.md)."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Caffe models' per-channel mean in BGR order, on the 0-255 scale (BN-Inception: input space "caffe_bgr255").
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)
INPUT_SPACES = ("imagenet_rgb", "caffe_bgr255", "any")  # BackboneSpec.input_space (models/backbones.py)
# Train-time augmentation of vector data: isotropic Gaussian jitter of this std (absolute, in data units; for the
# synthetic manifolds, whose class pieces span [-1, 1] along each tangent direction, that is 0.5% of a piece's width
# and equal to the default data.synthetic.noise).
VECTOR_JITTER_STD = 0.01
# The paper's training crop of photographs: RandomResizedCrop keeping 16-100 % of the image's area.
NATURAL_CROP_SCALE = (0.16, 1.0)
# The most colour jitter data.augmentation.color_jitter allows: its hue range, 0.1 s, must stay within torchvision's
# 0.5.
MAX_COLOR_JITTER = 5.0


class VectorTransform:
    """Vectors are already features: cast to a float32 tensor and, for training with augmentation, add Gaussian
    jitter of std ``jitter_std`` (from torch's global generator, which Lightning seeds per worker). A class rather
    than a lambda, so DataLoader workers can pickle it."""

    def __init__(self, jitter_std: float = 0.0):
        self.jitter_std = float(jitter_std)

    def __call__(self, vector: Any) -> torch.Tensor:
        x = torch.as_tensor(vector, dtype=torch.float32)
        if self.jitter_std > 0:
            x = x + self.jitter_std * torch.randn_like(x)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(jitter_std={self.jitter_std})"


class MultiView:
    """``views`` independent draws of a random transform of one image, stacked (views x ...): the two augmented views
    per image of STML-style training (data.augmentation.views). A class rather than a lambda, so DataLoader workers
    can pickle it."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], views: int):
        self.transform = transform
        self.views = int(views)

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.views)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(views={self.views}, {self.transform!r})"


def flatten_views(images: torch.Tensor) -> torch.Tensor:
    """A batch of stacked views (B x V x ...) as V * B items, view-major: all first views, then all second views."""
    return images.transpose(0, 1).reshape(-1, *images.shape[2:])


class CaffeBGR255:
    """RGB in [0, 1] (C x H x W) -> BGR on the 0-255 scale minus CAFFE_BGR_MEAN, no std division: the input of
    Caffe-trained weights (BN-Inception). A class rather than a lambda, so DataLoader workers can pickle it."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CAFFE_BGR_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return image.flip(-3) * 255.0 - mean

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean_bgr={CAFFE_BGR_MEAN})"


def _input_space_steps(input_space: str, out_channels: int) -> list:
    """The final steps that turn an RGB (or gray) image in [0, 1] into what the backbone's weights expect."""
    if input_space == "caffe_bgr255":
        return [CaffeBGR255()]
    if input_space == "imagenet_rgb" or (input_space == "any" and out_channels == 3):
        return [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return [v2.Normalize((0.5,), (0.5,))]  # "any", one channel


class BatchRandomAffine(torch.nn.Module):
    """Random rotation (+-degrees), translation (+-translate of the size) and scaling of every image of a batch, each
    with its own draw, in one affine_grid + grid_sample (bilinear): the augmentation of the upright-image family
    (digits, glyphs; no flip), done on the batch tensor, on the training device, instead of image by image in the
    loader, whose per-image cost equalled the network's on the digits. ``fill`` is the value of a black pixel after
    normalisation (per channel): what the image is padded with. Random numbers come from torch's global generator
    on the batch's device, which checkpoints save and restore (exact resume)."""

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        fill: tuple[float, ...] = (0.0,),
    ):
        super().__init__()
        self.degrees, self.translate, self.scale = float(degrees), float(translate), tuple(scale)
        self.fill = tuple(float(f) for f in fill)

    def matrices(self, n: int, device: torch.device) -> torch.Tensor:
        """n x 2 x 3 sampling matrices (output -> input, in affine_grid's normalised coordinates)."""
        u = torch.rand(n, 4, device=device)
        angle = (u[:, 0] * 2 - 1) * math.radians(self.degrees)
        factor = self.scale[0] + u[:, 1] * (self.scale[1] - self.scale[0])
        shift = (u[:, 2:] * 2 - 1) * self.translate * 2  # a fraction of the size; the coordinates span 2
        return affine_sampling_matrices(angle, factor, shift)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        shape = images.shape
        flat = images.reshape(-1, *shape[-3:])  # also B x V x C x H x W (data.augmentation.views)
        theta = self.matrices(flat.shape[0], flat.device).to(flat.dtype)
        grid = torch.nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
        fill = torch.tensor(self.fill, dtype=flat.dtype, device=flat.device).view(1, -1, 1, 1)
        out = (
            torch.nn.functional.grid_sample(
                flat - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            + fill
        )
        return out.reshape(shape)

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, fill={self.fill}"


def affine_sampling_matrices(angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """For images rotated by ``angle`` (radians, counter-clockwise on screen), scaled by ``scale`` about the centre,
    then shifted by ``shift`` (n x 2, normalised coordinates): the inverse maps that affine_grid samples with. The
    same geometry as torchvision's ``v2.functional.affine`` (angle in degrees, translate in pixels = shift * size / 2).
    """
    # Output point q samples input point R(-angle) (q - shift) / scale, R the rotation in (x right, y down)
    # coordinates, where a positive angle turns clockwise on screen.
    cos, sin = torch.cos(angle) / scale, -torch.sin(angle) / scale
    row0 = torch.stack([cos, -sin, -(cos * shift[:, 0] - sin * shift[:, 1])], dim=1)
    row1 = torch.stack([sin, cos, -(sin * shift[:, 0] + cos * shift[:, 1])], dim=1)
    return torch.stack([row0, row1], dim=1)


def batch_augmentation(
    *, augmentation: str, augment: bool, eval_transform: Callable[[Any], torch.Tensor], in_channels: int
) -> Optional[BatchRandomAffine]:
    """The batch-level training augmentation of a dataset family, or None (natural photographs and vectors are
    augmented image by image in the loader). ``eval_transform`` gives the fill: the normalised value of black."""
    if augmentation != "digits" or not augment:
        return None
    black = eval_transform(np.zeros((4, 4) if in_channels == 1 else (4, 4, 3), dtype=np.uint8))
    return BatchRandomAffine(degrees=10, translate=0.1, scale=(0.9, 1.1), fill=tuple(black[:, 0, 0].tolist()))


def build_transform(
    *,
    augmentation: str,
    train: bool,
    augment: bool,
    image_size: int,
    resize: int,
    in_channels: int,
    out_channels: int,
    input_space: str = "any",
    crop_scale: tuple[float, float] = NATURAL_CROP_SCALE,
    hflip: bool = True,
    color_jitter: float = 0.0,
) -> Callable[[Any], torch.Tensor]:
    """augmentation: the dataset family ("natural" photographs, "digits", or "vector" features).
    in_channels: what the dataset yields (1 or 3); out_channels: what the backbone takes (1 or 3).
    input_space: the backbone's (BackboneSpec.input_space): "imagenet_rgb" (torchvision weights: ImageNet
    mean/std), "caffe_bgr255" (BN-Inception: BGR, 0-255, minus the Caffe mean) or "any" (small nets trained from
    scratch: ImageNet mean/std for 3 channels, (x - 0.5) / 0.5 for 1).
    crop_scale, hflip, color_jitter: the training augmentation of photographs (data.augmentation.crop_scale, hflip,
    color_jitter): RandomResizedCrop's area range, a random horizontal flip, and colour jitter of strength s
    (brightness, contrast and saturation +-0.4 s, hue +-0.1 s; 0 = none). The paper's recipe is the default.
    Vector data ignores the image arguments: no image ops, no Normalize, only VECTOR_JITTER_STD jitter in training."""
    if input_space not in INPUT_SPACES:
        raise ValueError(f"unknown input space {input_space!r}; one of {', '.join(INPUT_SPACES)}")
    if augmentation == "vector":
        return VectorTransform(VECTOR_JITTER_STD if train and augment else 0.0)
    to_float = v2.ToDtype(torch.float32, scale=True)
    steps: list = [v2.ToImage()]
    if in_channels == 1 and out_channels == 3:
        steps.append(v2.RGB())
    if augmentation == "digits":
        # Training augmentation of this family is done on whole batches (BatchRandomAffine, applied by the
        # DataModule after the batch reaches the device): the per-image pipeline is the same in train and eval.
        steps += [to_float, v2.Resize((image_size, image_size), antialias=True)]
    elif train and augment:
        # Photographs: crop, resize and flip the decoded uint8 image, then convert. Resizing a full-size float
        # image was most of a loader worker's time (benchmarks/loader.py); uint8 rounding moves a pixel by at most
        # one level of 255.
        steps.append(v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True))
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(to_float)
        if color_jitter > 0:
            s = float(color_jitter)
            steps.append(v2.ColorJitter(brightness=0.4 * s, contrast=0.4 * s, saturation=0.4 * s, hue=0.1 * s))
    else:
        steps += [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size), to_float]
    return v2.Compose(steps + _input_space_steps(input_space, out_channels))
