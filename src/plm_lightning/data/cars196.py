"""Cars196 (Stanford Cars): 16,185 images of 196 car models; metric learning trains on classes 1-98 and tests on
99-196 (docs/protocols.md; the annotations' ``test`` flag is a classification split, ignored)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plm_lightning.data.base import DatasetError
from plm_lightning.data.files import ImageFileDataset, SplitCounts, SplitListing

LAST_TRAIN_CLASS = 98
FIELDS = ("relative_im_path", "class")


class Cars196Dataset(ImageFileDataset):
    """Root: the folder with ``cars_annos.mat`` and ``car_ims/``. Labels are the official class ids of
    ``cars_annos.mat`` (1-98 train, 99-196 test), read by field name with scipy.io.loadmat."""

    name = "cars196"
    title = "Cars196"
    metadata_files = ("cars_annos.mat",)
    official = {"train": SplitCounts(8054, 98), "test": SplitCounts(8131, 98)}
    # The original ai.stanford.edu downloads are gone (torchvision's StanfordCars says so too): no download here.
    loose_files = {"cars_annos.mat": "cars_annos.mat"}
    manual_steps = (
        "The original Stanford download (ai.stanford.edu/~jkrause/cars/car_dataset.html) is offline and "
        "there is no official mirror. Get car_ims.tgz (all 16,185 images) and cars_annos.mat (the "
        "annotations of all images, with class ids 1..196) from a copy you trust (a colleague, an "
        "institutional mirror, an archived copy of the original page), then run: plm-data prepare cars196 "
        "--root ROOT --from car_ims.tgz --from cars_annos.mat. The Kaggle re-packaging (names.csv, "
        "anno_train.csv, car_data/) orders classes differently and does not fit."
    )
    layout = """ROOT/
  cars_annos.mat             struct array 'annotations' (relative_im_path, bbox_*, class, test), 'class_names'
  car_ims/000001.jpg
  car_ims/...                16,185 images, 000001.jpg ... 016185.jpg"""

    @classmethod
    def read_annotations(cls, path: Path) -> tuple[list[str], list[int]]:
        from scipy.io import loadmat  # scipy is heavy; only this dataset needs it

        try:
            mat = loadmat(str(path), squeeze_me=True)
        except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... for a damaged file
            raise DatasetError(
                f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        if "annotations" not in mat:
            raise DatasetError(f"{path}: no 'annotations' struct array (found {', '.join(sorted(mat))})")
        ann = np.atleast_1d(mat["annotations"])
        names = ann.dtype.names or ()
        absent = [f for f in FIELDS if f not in names]
        if absent:
            raise DatasetError(f"{path}: 'annotations' has no field {', '.join(absent)} (fields: {', '.join(names)})")
        paths = [str(np.asarray(p).item()).strip() for p in ann["relative_im_path"]]
        try:
            labels = [int(np.asarray(c).item()) for c in ann["class"]]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'annotations.class' holds non-integer values") from None
        return paths, labels

    @classmethod
    def read_split(cls, root: Path, split: str) -> SplitListing:
        paths, labels = cls.read_annotations(Path(root) / "cars_annos.mat")
        keep = [i for i, c in enumerate(labels) if (c <= LAST_TRAIN_CLASS) == (split == "train")]
        return SplitListing([paths[i] for i in keep], [labels[i] for i in keep])
