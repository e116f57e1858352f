"""The embedded default dataset: scikit-learn's handwritten digits (1,797 8 x 8 images, no download).

Class-disjoint like the retrieval benchmarks: train on digits 0-4, evaluate zero-shot on the unseen 5-9.
"""

from __future__ import annotations

import torch

from plm_lightning.data.base import RetrievalDataset

TRAIN_CLASSES = (0, 1, 2, 3, 4)


class DigitsDataset(RetrievalDataset):
    name = "digits"
    needs_root = False
    channels = 1
    augmentation = "digits"

    def __init__(self, split: str, transform=None, root=None):
        super().__init__(split, transform)
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32)  # values 0..16
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        in_train = torch.isin(labels, torch.tensor(TRAIN_CLASSES))
        keep = in_train if split == "train" else ~in_train
        # uint8 1 x 8 x 8 images, like a decoded greyscale file, so the standard transforms apply unchanged.
        self.images = (images[keep] * 255 / 16).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
        self.labels = labels[keep]

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]
