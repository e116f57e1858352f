"""The embedded digits dataset: real sklearn digits, class-disjoint split, transforms for each backbone kind."""

import torch

from plm_lightning.data.digits import DigitsDataset
from plm_lightning.data.transforms import build_transform


def test_class_disjoint_split():
    train, test = DigitsDataset("train"), DigitsDataset("test")
    assert set(train.labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(test.labels.tolist()) == {5, 6, 7, 8, 9}
    assert len(train) + len(test) == 1797


def test_items_and_transforms():
    t = build_transform(
        augmentation="digits", train=True, augment=True, image_size=16, resize=16, in_channels=1, out_channels=3
    )
    image, label, index = DigitsDataset("test", transform=t)[7]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert index == 7 and 5 <= label <= 9
    t = build_transform(
        augmentation="digits", train=False, augment=True, image_size=16, resize=16, in_channels=1, out_channels=1
    )
    a = DigitsDataset("train", transform=t)[0][0]
    assert torch.equal(a, DigitsDataset("train", transform=t)[0][0])  # eval transform is deterministic
    assert a.shape == (1, 16, 16)
