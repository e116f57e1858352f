"""Users' own images: ``root/<class name>/**/<image>`` (nested folders, mixed formats), split class-disjointly:
the first ``train_class_fraction`` of the sorted class names trains, or the explicit ``train_classes`` /
``test_classes`` lists."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from plm_lightning.data.base import DatasetError
from plm_lightning.data.files import ImageFileDataset, SplitListing
from plm_lightning.data.images import is_hidden, list_images
from plm_lightning.data.paths import resolve_root


def class_folders(root: Path) -> list[str]:
    """The class names: the non-hidden sub-folders of ``root``, sorted."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not is_hidden(p.name))


def split_classes(
    classes: Sequence[str], fraction: float, train_classes: Sequence[str] = (), test_classes: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(train, test) class names. Both lists empty: the first ``fraction`` of the sorted names trains (at least one
    class on each side). One list given: the other split gets all remaining classes. Both given: exactly those.
    ValueError (one line) for unknown names, a class in both lists, or an empty side."""
    classes = sorted(classes)
    train_classes, test_classes = list(train_classes), list(test_classes)
    known = set(classes)
    for key, names in (("data.train_classes", train_classes), ("data.test_classes", test_classes)):
        unknown = [n for n in names if n not in known]
        if unknown:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise ValueError(f"{key}: no class folder named {', '.join(map(repr, unknown))} (classes: {shown})")
    overlap = sorted(set(train_classes) & set(test_classes))
    if overlap:
        raise ValueError(
            f"data.train_classes and data.test_classes share {', '.join(map(repr, overlap))}; "
            "the splits must be class-disjoint"
        )
    if not train_classes and not test_classes:
        if len(classes) < 2:
            raise ValueError(f"need at least 2 class folders for a class-disjoint split, found {len(classes)}")
        n_train = min(max(1, round(len(classes) * fraction)), len(classes) - 1)
        return classes[:n_train], classes[n_train:]
    train = sorted(set(train_classes)) if train_classes else [c for c in classes if c not in set(test_classes)]
    test = sorted(set(test_classes)) if test_classes else [c for c in classes if c not in set(train_classes)]
    for key, names in (("train", train), ("test", test)):
        if not names:
            raise ValueError(f"the {key} split would have no classes; list some in data.{key}_classes")
    return train, test


class ImageFolderDataset(ImageFileDataset):
    """Labels are the positions of the class names in the sorted list of all class folders (so train and test
    labels never collide); ``class_names`` are this split's names, in label order. A class folder without images
    contributes nothing. Unreadable images: as for every image dataset (``skip_unreadable``, images.load_rgb)."""

    name = "folder"
    title = "image folder"
    layout = """ROOT/
  <class name>/<image>           one folder per class; images at any depth below it
  <class name>/<sub>/<image>     .jpg .jpeg .png .bmp .gif .webp .tif .tiff (any case); ._* and hidden ignored"""

    @classmethod
    def from_config(cls, split, transform, data_cfg):
        return cls(
            split,
            transform=transform,
            root=resolve_root(cls.name, data_cfg.root),
            train_class_fraction=data_cfg.train_class_fraction,
            train_classes=list(getattr(data_cfg, "train_classes", None) or ()),
            test_classes=list(getattr(data_cfg, "test_classes", None) or ()),
            skip_unreadable=bool(getattr(data_cfg, "skip_unreadable", False)),
        )

    def __init__(
        self,
        split: str,
        transform=None,
        root=None,
        train_class_fraction: float = 0.5,
        *,
        train_classes: Sequence[str] = (),
        test_classes: Sequence[str] = (),
        skip_unreadable: bool = False,
        check_counts: bool = True,
    ):
        self.train_class_fraction = train_class_fraction
        self.train_classes, self.test_classes = list(train_classes), list(test_classes)
        super().__init__(split, transform, root, check_counts=check_counts, skip_unreadable=skip_unreadable)
        self.class_names = [self.all_classes[i] for i in self.class_ids]

    @classmethod
    def prepare_hint(cls, root) -> str:
        return "point data.root at a folder with one sub-folder of images per class"

    def read_split(self, root: Path, split: str) -> SplitListing:
        self.all_classes = class_folders(root)
        try:
            train, test = split_classes(
                self.all_classes, self.train_class_fraction, self.train_classes, self.test_classes
            )
        except ValueError as exc:
            raise DatasetError(f"data.root {root}: {exc}") from None
        chosen = set(train if split == "train" else test)
        paths, labels = [], []
        for label, name in enumerate(self.all_classes):
            if name in chosen:
                files = list_images(root / name)
                paths.extend(p.relative_to(root).as_posix() for p in files)
                labels.extend([label] * len(files))
        if not paths:
            raise DatasetError(
                f"data.root {root}: no images found for the {split} split (classes {', '.join(sorted(chosen))})"
            )
        return SplitListing(paths, labels)
