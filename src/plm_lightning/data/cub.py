"""CUB-200-2011 (Caltech-UCSD Birds): 11,788 images of 200 bird species; metric learning trains on classes 1-100
and tests on 101-200 (docs/protocols.md; the shipped train_test_split.txt is a classification split, unused)."""

from __future__ import annotations

from pathlib import Path

from plm_lightning.data.base import DatasetError
from plm_lightning.data.files import Download, ImageFileDataset, SplitCounts, SplitListing, read_table, to_int

LAST_TRAIN_CLASS = 100


class CUBDataset(ImageFileDataset):
    """Root: the ``CUB_200_2011`` folder. Labels are the official class ids (1-100 train, 101-200 test), read from
    ``image_class_labels.txt`` for the image ids of ``images.txt`` (paths relative to ``images/``)."""

    name = "cub"
    title = "CUB-200-2011"
    metadata_files = ("images.txt", "image_class_labels.txt")
    official = {"train": SplitCounts(5864, 100), "test": SplitCounts(5924, 100)}
    # Caltech DATA's record of the archive; the md5 is the one torchvision-style loaders have long checked.
    downloads = (
        Download(
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
            "CUB_200_2011.tgz",
            "97eceeb196236b17998738112f37df78",
        ),
    )
    manual_steps = (
        "Download CUB_200_2011.tgz (1.1 GB) from https://data.caltech.edu/records/65de6-vp158 on a "
        "machine with network access, copy it here, then run: plm-data prepare cub --root ROOT "
        "--from CUB_200_2011.tgz (or extract it yourself so that ROOT is the CUB_200_2011 folder)."
    )
    layout = """ROOT/                        (the CUB_200_2011 folder of the archive)
  images.txt                 <image_id> <path below images/>
  image_class_labels.txt     <image_id> <class_id 1..200>
  classes.txt                <class_id> <class_name>
  images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
  images/...                 200 folders, 11,788 images"""

    @classmethod
    def read_split(cls, root: Path, split: str) -> SplitListing:
        root = Path(root)
        images_txt, labels_txt = root / "images.txt", root / "image_class_labels.txt"
        paths = {
            to_int(f[0], images_txt, n, "image id"): f[1].strip() for n, f in read_table(images_txt, 2, maxsplit=1)
        }
        classes = {
            to_int(f[0], labels_txt, n, "image id"): to_int(f[1], labels_txt, n, "class id")
            for n, f in read_table(labels_txt, 2)
        }
        unlabelled = sorted(set(paths) - set(classes))
        if unlabelled:
            raise DatasetError(
                f"{labels_txt}: no class for image id {unlabelled[0]} of images.txt ({len(unlabelled)} unlabelled)"
            )
        keep = [i for i in sorted(paths) if (classes[i] <= LAST_TRAIN_CLASS) == (split == "train")]
        return SplitListing([f"images/{paths[i]}" for i in keep], [classes[i] for i in keep])
