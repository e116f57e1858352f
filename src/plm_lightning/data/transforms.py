"""Train and eval transforms per dataset family and backbone (PROTOCOLS.md §3)."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(*, augmentation: str, train: bool, augment: bool, image_size: int, resize: int,
                    in_channels: int, out_channels: int) -> v2.Compose:
    """augmentation: the dataset family ("natural" photographs or "digits").
    in_channels: what the dataset yields (1 or 3); out_channels: what the backbone takes (1 or 3)."""
    steps: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if in_channels == 1 and out_channels == 3:
        steps.append(v2.RGB())
    if augmentation == "digits":
        steps.append(v2.Resize((image_size, image_size), antialias=True))
        if train and augment:
            steps.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    elif train and augment:
        steps += [v2.RandomResizedCrop(image_size, scale=(0.16, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    if out_channels == 3:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    else:
        steps.append(v2.Normalize((0.5,), (0.5,)))
    return v2.Compose(steps)
