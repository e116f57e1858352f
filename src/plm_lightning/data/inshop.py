"""In-Shop Clothes Retrieval (DeepFashion): train on the 3,997 items marked train; the test split is the query and
gallery images of the other 3,985 items, evaluated query -> gallery (docs/protocols.md)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from plm_lightning.data.base import DatasetError
from plm_lightning.data.files import ImageFileDataset, SplitCounts, SplitListing, read_table

PARTITION = "Eval/list_eval_partition.txt"
ITEM_ID = re.compile(r"^id_(\d+)$")


def item_label(item: str, path: Path, number: int) -> int:
    """``id_00000001`` -> 1: the item id's number is the label (unique per item, and it survives the split)."""
    match = ITEM_ID.match(item)
    if match is None:
        raise DatasetError(f"{path}:{number}: item id {item!r} is not of the form id_<digits>")
    return int(match.group(1))


class InShopDataset(ImageFileDataset):
    """Root: the folder with ``img/`` and ``Eval/list_eval_partition.txt``. Labels are the item ids' numbers.

    The test split holds the query and gallery images in the order of the partition file; ``is_query`` and
    ``is_gallery`` (BoolTensors, one per item; ``query_mask`` is ``is_query``) say which is which, so evaluation
    ranks the gallery for each query. On the train split every item is a training image and both are None.
    """

    name = "inshop"
    title = "In-Shop Clothes"
    metadata_files = (PARTITION,)
    official = {"train": SplitCounts(25882, 3997), "test": SplitCounts(26830, 3985, query=14218, gallery=12612)}
    loose_files = {"list_eval_partition.txt": PARTITION}
    # DeepFashion is distributed through Google Drive folders behind an agreement form: no scripted download.
    manual_steps = (
        "In-Shop is distributed through Google Drive (DeepFashion, In-shop Clothes Retrieval Benchmark: "
        "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html, linked after its "
        "agreement). Download Img/img.zip and Eval/list_eval_partition.txt, then run: plm-data prepare "
        "inshop --root ROOT --from img.zip --from list_eval_partition.txt."
    )
    layout = """ROOT/
  Eval/list_eval_partition.txt   2 header lines (count; 'image_name item_id evaluation_status'), then rows
                                 img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery
  img/WOMEN/...                  52,712 images in img/<WOMEN|MEN>/<category>/id_<item>/
  img/MEN/..."""

    @classmethod
    def read_split(cls, root: Path, split: str) -> SplitListing:
        path = Path(root) / PARTITION
        paths, labels, is_query = [], [], []
        for number, (image, item, status) in ((n, f[:3]) for n, f in read_table(path, 3, header_lines=2)):
            if status not in ("train", "query", "gallery"):
                raise DatasetError(f"{path}:{number}: evaluation_status {status!r} is not train, query or gallery")
            if (status == "train") != (split == "train"):
                continue
            paths.append(image)
            labels.append(item_label(item, path, number))
            is_query.append(status == "query")
        return SplitListing(paths, labels, is_query if split == "test" else None)

    @property
    def is_query(self) -> torch.Tensor | None:
        return self.query_mask

    @property
    def is_gallery(self) -> torch.Tensor | None:
        return None if self.query_mask is None else ~self.query_mask
