"""Stanford Online Products: 120,053 images of 22,634 products; train on classes 1-11,318 (Ebay_train.txt), test
on 11,319-22,634 (Ebay_test.txt) (docs/protocols.md)."""

from __future__ import annotations

from pathlib import Path

from plm_lightning.data.files import ImageFileDataset, SplitCounts, SplitListing, read_table, to_int

SPLIT_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}


class SOPDataset(ImageFileDataset):
    """Root: the ``Stanford_Online_Products`` folder. Labels are the official ``class_id`` column; paths are
    relative to the root (``bicycle_final/111085122871_0.JPG``)."""

    name = "sop"
    title = "Stanford Online Products"
    metadata_files = tuple(SPLIT_FILES.values())
    official = {"train": SplitCounts(59551, 11318), "test": SplitCounts(60502, 11316)}
    # The published download (ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip) has no checksum on
    # record here and FTP is unreliable: prepare from a local copy of the archive.
    manual_steps = (
        "Download Stanford_Online_Products.zip (2.9 GB) from the project page "
        "(https://cvgl.stanford.edu/projects/lifted_struct/, archive ftp://cs.stanford.edu/cs/cvgl/"
        "Stanford_Online_Products.zip) or a mirror you trust, then run: plm-data prepare sop --root ROOT "
        "--from Stanford_Online_Products.zip (or unzip it yourself so that ROOT is the "
        "Stanford_Online_Products folder)."
    )
    layout = """ROOT/                        (the Stanford_Online_Products folder of the archive)
  Ebay_train.txt             header 'image_id class_id super_class_id path', 59,551 rows
  Ebay_test.txt              same columns, 60,502 rows
  Ebay_info.txt
  bicycle_final/111085122871_0.JPG
  ...                        12 folders <category>_final/ (bicycle, cabinet, chair, coffee_maker, fan, kettle,
                             lamp, mug, sofa, stapler, table, toaster)"""

    @classmethod
    def read_split(cls, root: Path, split: str) -> SplitListing:
        path = Path(root) / SPLIT_FILES[split]
        rows = read_table(path, 4, header_lines=1)
        return SplitListing([f[3] for _, f in rows], [to_int(f[1], path, n, "class_id") for n, f in rows])
