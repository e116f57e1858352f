"""Users' own images: ``root/<class name>/**/<image>``, split class-disjointly by sorted class name."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from plm_lightning.data.base import RetrievalDataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageFolderDataset(RetrievalDataset):
    """The first ``train_class_fraction`` of the sorted class folders is the train split, the rest the test split."""

    name = "folder"

    @classmethod
    def from_config(cls, split, transform, data_cfg):
        return cls(split, transform=transform, root=data_cfg.root, train_class_fraction=data_cfg.train_class_fraction)

    def __init__(self, split: str, transform=None, root=None, train_class_fraction: float = 0.5):
        super().__init__(split, transform)
        root_path = Path(root)
        classes = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise ValueError(f"data.root {root}: need at least 2 class folders, found {len(classes)}")
        n_train = min(max(1, round(len(classes) * train_class_fraction)), len(classes) - 1)
        chosen = classes[:n_train] if split == "train" else classes[n_train:]
        self.paths: list[Path] = []
        labels = []
        for label, cls in enumerate(classes):
            if cls not in chosen:
                continue
            files = sorted(p for p in (root_path / cls).rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._"))
            self.paths.extend(files)
            labels.extend([label] * len(files))
        if not self.paths:
            raise ValueError(f"data.root {root}: no images found for the {split} split")
        self.labels = torch.tensor(labels, dtype=torch.long)

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc
