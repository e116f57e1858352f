"""What every retrieval dataset provides: (image, label, index) items and a few facts the transforms need."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset


class DatasetError(ValueError):
    """A dataset folder that does not hold what its metadata or the official split promises (missing metadata or
    image files, wrong counts, unknown class names). One line, naming the folder or file."""


class RetrievalDataset(Dataset):
    """A class-disjoint split of a retrieval dataset. Items are (image, label, dataset index).

    Subclasses set ``labels`` (a LongTensor, one per item) and implement ``load(i)``. Labels are read by evaluation
    and diagnostics only; nothing that changes the weights sees them, and evaluation only compares them for
    equality: they may be the official class ids (not contiguous, not starting at 0).

    ``query_mask``: None means the standard protocol (query set = gallery set = the whole split, each item queries
    all others). A BoolTensor (one per item) means separate sets: the True items are the queries and the False
    items the gallery (In-Shop's test split; see InShopDataset.is_query / is_gallery).
    """

    query_mask: Optional[torch.Tensor] = None

    name: str = ""
    needs_root: bool = True  # False for datasets that ship with a package (digits)
    channels: int = 3
    # "natural": random resized crop + horizontal flip (docs/protocols.md); "digits": small affine jitter, no flip.
    augmentation: str = "natural"

    @classmethod
    def input_channels(cls, data_cfg) -> int:
        """Channels (or, for vector data, features) of what the dataset yields under this data config."""
        return cls.channels

    @classmethod
    def from_config(cls, split: str, transform, data_cfg) -> RetrievalDataset:
        """Build the split from the ``data`` config group (subclasses read their own keys)."""
        return cls(split, transform=transform, root=data_cfg.root)

    def __init__(self, split: str, transform: Optional[Callable[[Any], torch.Tensor]] = None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.transform = transform
        self.labels = torch.empty(0, dtype=torch.long)
        self._transformed: Optional[torch.Tensor] = None  # cache_transformed

    def cache_transformed(self) -> None:
        """Transform every item once now and serve the results from then on. Only for a dataset held in memory whose
        transform is deterministic (the upright-image family: its training augmentation runs on whole batches,
        data/transforms.py): the per-image work, a third of the quickstart's step time spent waiting for data, is
        then done once instead of every epoch. The items are the same tensors either way."""
        items = [self.load(i) for i in range(len(self))]
        self._transformed = torch.stack([self.transform(x) if self.transform is not None else x for x in items])

    def load(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if self._transformed is not None:
            return self._transformed[index], int(self.labels[index]), index
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), index

    @property
    def num_classes(self) -> int:
        return int(self.labels.unique().numel())

    @property
    def class_ids(self) -> list[int]:
        """The sorted label values of this split (for the benchmarks: the official class ids)."""
        return [int(c) for c in self.labels.unique().tolist()]
