"""Miniature dataset trees in the exact official on-disk layouts (docs/protocols.md), for tests.

Each ``make_*_tree(root, ...)`` writes tiny images and the official metadata files into ``root`` and returns it.
Their class ids span both splits, and the first class carries the awkward files real datasets have: a greyscale
JPEG, a CMYK JPEG and a macOS ``._`` resource fork (the folder tree also a transparent palette PNG). Counts are far
below the official ones: build datasets from these with ``check_counts=False`` (config: data.check_counts=false).

Import: from tests in this folder ``from trees import make_cub_tree``; from another test folder put this folder on
``sys.path`` first (``sys.path.insert(0, str(Path(__file__).parents[1] / "data"))``), or, when the repository root
is on ``sys.path`` (``python -m pytest``), ``from tests.data.trees import make_cub_tree``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

# The kinds of image file write_image makes (all decode to RGB through plm_lightning.data.images.load_rgb).
KINDS = ("rgb", "grey", "cmyk", "palette", "rgba", "png")


def write_image(path, kind: str = "rgb", size: int = 24, seed: int = 0) -> Path:
    """A small deterministic image of ``kind`` at ``path`` (format from the kind: JPEG unless palette/rgba/png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = (base + rng.integers(-30, 30, size=(size, size, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if kind == "rgb":
        img.save(path, format="JPEG", quality=90)
    elif kind == "grey":
        img.convert("L").save(path, format="JPEG", quality=90)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, format="JPEG", quality=90)
    elif kind == "palette":
        pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        pal.info["transparency"] = 0
        pal.save(path, format="PNG", transparency=0)
    elif kind == "rgba":
        rgba = img.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path, format="PNG")
    elif kind == "png":
        img.save(path, format="PNG")
    else:
        raise ValueError(f"unknown image kind {kind!r}; one of {', '.join(KINDS)}")
    return path


def truncate_image(path) -> Path:
    """Cut an image file to half its bytes (as an interrupted download leaves it)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_resource_fork(path) -> Path:
    """A macOS ``._name`` AppleDouble file: image suffix, not an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    return path


def _kind(class_index: int, k: int) -> str:
    # First class: a greyscale and a CMYK JPEG among ordinary ones.
    if class_index == 0 and k == 0:
        return "grey"
    if class_index == 0 and k == 1:
        return "cmyk"
    return "rgb"


def make_cub_tree(root, classes: Sequence[int] = (1, 2, 101, 102), images_per_class: int = 3, size: int = 24) -> Path:
    """CUB_200_2011 layout: images/<NNN.Name>/<file>.jpg, images.txt, image_class_labels.txt, classes.txt,
    train_test_split.txt, bounding_boxes.txt."""
    root = Path(root)
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for ci, cid in enumerate(classes):
        folder = f"{cid:03d}.Bird_{cid}"
        for k in range(images_per_class):
            image_id += 1
            rel = f"{folder}/Bird_{cid}_{k:04d}_{image_id}.jpg"
            write_image(root / "images" / rel, _kind(ci, k), size, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
            split.append(f"{image_id} {k % 2}")  # the classification split: must be ignored
            boxes.append(f"{image_id} 1.0 2.0 {size - 3}.0 {size - 4}.0")
        if ci == 0:
            write_resource_fork(root / "images" / folder / f"._Bird_{cid}_0000_1.jpg")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in classes))
    write_resource_fork(root / "._images.txt")
    return root


def make_cars_tree(root, classes: Sequence[int] = (1, 2, 99, 100), images_per_class: int = 3, size: int = 24) -> Path:
    """Cars196 layout: car_ims/NNNNNN.jpg and cars_annos.mat (struct array 'annotations' 1 x N with the official
    field names, 'class_names' 1 x 196), written with scipy.io.savemat."""
    from scipy.io import savemat

    root = Path(root)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    n = 0
    for ci, cid in enumerate(classes):
        for k in range(images_per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_image(root / rel, _kind(ci, k), size, seed=1000 + n)
            rows.append((rel, 1, 2, size - 2, size - 3, cid, k % 2))
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            ann[0, i][f] = (
                np.array([[v]], dtype=np.uint8 if f == "test" else np.int32)
                if f != "relative_im_path"
                else np.array([v])
            )
    class_names = np.empty((1, 196), dtype=object)
    for c in range(196):
        class_names[0, c] = f"Make Model {c + 1} 2012"
    savemat(str(root / "cars_annos.mat"), {"annotations": ann, "class_names": class_names})
    write_resource_fork(root / "car_ims" / "._000001.jpg")
    return root


SOP_CATEGORIES = (
    "bicycle",
    "cabinet",
    "chair",
    "coffee_maker",
    "fan",
    "kettle",
    "lamp",
    "mug",
    "sofa",
    "stapler",
    "table",
    "toaster",
)


def make_sop_tree(
    root, classes: Sequence[int] = (1, 2, 11319, 11320), images_per_class: int = 3, size: int = 24
) -> Path:
    """Stanford_Online_Products layout: <category>_final/<product>_<k>.JPG, Ebay_train.txt / Ebay_test.txt /
    Ebay_info.txt with the header line. Classes <= 11318 are training classes, as in the official files."""
    root = Path(root)
    header = "image_id class_id super_class_id path"
    rows = {"train": [], "test": []}
    image_id = 0
    for ci, cid in enumerate(classes):
        super_id = ci % len(SOP_CATEGORIES) + 1
        category = SOP_CATEGORIES[super_id - 1]
        for k in range(images_per_class):
            image_id += 1
            rel = f"{category}_final/{111085122871 + cid}_{k}.JPG"
            write_image(root / rel, _kind(ci, k), size, seed=2000 + image_id)
            rows["train" if cid <= 11318 else "test"].append(f"{image_id} {cid} {super_id} {rel}")
    for split in ("train", "test"):
        (root / f"Ebay_{split}.txt").write_text("\n".join([header] + rows[split]) + "\n")
    (root / "Ebay_info.txt").write_text("\n".join([header] + rows["train"] + rows["test"]) + "\n")
    write_resource_fork(root / f"{SOP_CATEGORIES[0]}_final" / "._x.JPG")
    return root


def make_inshop_tree(
    root,
    train_items: Sequence[int] = (1, 2),
    test_items: Sequence[int] = (3, 4),
    images_per_item: int = 4,
    queries_per_item: int = 2,
    size: int = 24,
) -> Path:
    """In-Shop layout: img/<WOMEN|MEN>/<category>/id_<8 digits>/<NN_k_view>.jpg and Eval/list_eval_partition.txt
    (two header lines: the count, then 'image_name item_id evaluation_status'). Each test item's first
    ``queries_per_item`` images are queries, the rest gallery."""
    root = Path(root)
    rows = []
    n = 0
    views = ("front", "side", "back", "full", "additional", "flat")
    for ii, item in enumerate(list(train_items) + list(test_items)):
        item_id = f"id_{item:08d}"
        gender, category = ("WOMEN", "Dresses") if ii % 2 == 0 else ("MEN", "Denim")
        for k in range(images_per_item):
            n += 1
            rel = f"img/{gender}/{category}/{item_id}/{k // len(views) + 1:02d}_{k + 1}_{views[k % len(views)]}.jpg"
            write_image(root / rel, _kind(ii, k), size, seed=3000 + n)
            if item in train_items:
                status = "train"
            else:
                status = "query" if k < queries_per_item else "gallery"
            rows.append(f"{rel:<70s} {item_id}  {status}")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    )
    write_resource_fork(root / "img" / "._WOMEN")
    return root


def make_folder_tree(
    root, classes: Sequence[str] = ("ant", "bee", "cat", "dog"), images_per_class: int = 3, size: int = 24
) -> Path:
    """Users' own images: root/<class>/[<sub>/]<image> with mixed formats and suffix cases (JPEG, PNG, palette PNG,
    RGBA PNG, greyscale and CMYK JPEG), plus what must be ignored: ``._*`` files, a hidden folder with an image, a
    non-image file."""
    root = Path(root)
    kinds = ("rgb", "png", "palette", "rgba", "grey", "cmyk")
    n = 0
    for name in classes:
        for k in range(images_per_class):
            n += 1
            kind = kinds[n % len(kinds)]
            suffix = {"rgb": ".jpg", "grey": ".JPEG", "cmyk": ".jpeg", "png": ".PNG"}.get(kind, ".png")
            sub = "nested/deeper/" if k == images_per_class - 1 else ""
            write_image(root / name / f"{sub}img_{k}{suffix}", kind, size, seed=4000 + n)
        write_resource_fork(root / name / "._img_0.jpg")
        (root / name / "notes.txt").write_text("not an image\n")
    write_image(root / classes[0] / ".thumbnails" / "thumb.jpg", "rgb", size, seed=1)
    (root / ".hidden_class").mkdir(exist_ok=True)
    write_image(root / ".hidden_class" / "x.jpg", "rgb", size, seed=2)
    return root


def is_rgb(image) -> bool:
    """What a file dataset yields (data.images.load_rgb_tensor): a uint8 3 x H x W RGB tensor."""
    return isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
