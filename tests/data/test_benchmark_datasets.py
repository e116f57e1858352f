"""CUB, Cars196, SOP, In-Shop read from miniature trees in the official layouts: splits, labels, query/gallery,
count and file checks, unreadable images, the $PLM_DATA default root."""

import logging

import pytest
import torch
from trees import is_rgb, make_cars_tree, make_cub_tree, make_inshop_tree, make_sop_tree, truncate_image

from plm_lightning.data.base import DatasetError
from plm_lightning.data.cars196 import Cars196Dataset
from plm_lightning.data.cub import CUBDataset
from plm_lightning.data.images import UnreadableImageError
from plm_lightning.data.inshop import InShopDataset
from plm_lightning.data.registry import DATASETS
from plm_lightning.data.sop import SOPDataset

TREES = {"cub": make_cub_tree, "cars196": make_cars_tree, "sop": make_sop_tree, "inshop": make_inshop_tree}
IDS = {
    "cub": ([1, 2], [101, 102]),
    "cars196": ([1, 2], [99, 100]),
    "sop": ([1, 2], [11319, 11320]),
    "inshop": ([1, 2], [3, 4]),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    return {name: make(base / name) for name, make in TREES.items()}


def test_registered():
    assert (DATASETS["cub"], DATASETS["cars196"], DATASETS["sop"], DATASETS["inshop"]) == (
        CUBDataset,
        Cars196Dataset,
        SOPDataset,
        InShopDataset,
    )


@pytest.mark.parametrize("name", TREES)
def test_splits_are_class_disjoint_with_official_ids(trees, name):
    train = DATASETS[name]("train", root=trees[name], check_counts=False)
    test = DATASETS[name]("test", root=trees[name], check_counts=False)
    assert (train.class_ids, test.class_ids) == IDS[name]
    assert not set(train.labels.tolist()) & set(test.labels.tolist())
    assert train.labels.dtype == torch.long
    per_class = 4 if name == "inshop" else 3
    assert len(train) == len(test) == 2 * per_class
    image, label, index = test[len(test) - 1]
    assert is_rgb(image) and label == IDS[name][1][-1] and index == len(test) - 1
    for i in range(len(train)):  # includes the greyscale and the CMYK JPEG
        assert is_rgb(train.load(i))
    assert not any("._" in p for p in train.paths + test.paths)


def test_inshop_query_and_gallery(trees):
    test = InShopDataset("test", root=trees["inshop"], check_counts=False)
    assert test.is_query.tolist() == [True, True, False, False] * 2
    assert torch.equal(test.is_gallery, ~test.is_query) and test.query_mask is test.is_query
    assert test.labels[test.is_query].unique().tolist() == test.labels[test.is_gallery].unique().tolist() == [3, 4]
    train = InShopDataset("train", root=trees["inshop"], check_counts=False)
    assert train.is_query is None and train.query_mask is None


def test_cub_ignores_the_classification_split(trees):
    # train_test_split.txt marks every other image as test: the metric-learning split is by class id only.
    assert CUBDataset("train", root=trees["cub"], check_counts=False).class_ids == [1, 2]


@pytest.mark.parametrize("name", TREES)
def test_official_counts_are_checked_by_default(trees, name):
    with pytest.raises(DatasetError) as info:
        DATASETS[name]("test", root=trees[name])
    message = str(info.value)
    assert "\n" not in message and "official" in message and "data.check_counts=false" in message
    assert str(trees[name]) in message


def test_count_message_for_cub(trees):
    with pytest.raises(DatasetError, match=r"6 images \(official: 5,864\), 2 classes \(official: 100\)"):
        CUBDataset("train", root=trees["cub"])
    with pytest.raises(DatasetError, match=r"8 images \(official: 26,830\).*4 query images \(official: 14,218\)"):
        InShopDataset("test", root=trees["inshop"])


@pytest.mark.parametrize(
    "name, victims",
    [
        ("cub", ["images/001.Bird_1/Bird_1_0001_2.jpg", "images/002.Bird_2/Bird_2_0000_4.jpg"]),
        ("cars196", ["car_ims/000002.jpg"]),
        ("sop", ["bicycle_final/111085122872_0.JPG"]),
        ("inshop", ["img/WOMEN/Dresses/id_00000001/01_2_side.jpg"]),
    ],
)
def test_missing_listed_files_are_counted_and_named(tmp_path, name, victims):
    root = TREES[name](tmp_path / name)
    for v in victims:
        (root / v).unlink()
    for check_counts in (True, False):  # missing files are an error either way
        with pytest.raises(DatasetError) as info:
            DATASETS[name]("train", root=root, check_counts=check_counts)
        message = str(info.value)
        total = 8 if name == "inshop" else 6
        assert f"{len(victims)} of {total} listed images are missing" in message
        assert all(v in message for v in victims)
        assert f"plm-data prepare {name} --root {root}" in message and "\n" not in message


def test_many_missing_files_show_the_first_few(tmp_path):
    root = make_cub_tree(tmp_path / "cub", images_per_class=5)
    for p in sorted((root / "images" / "001.Bird_1").glob("*.jpg")):
        p.unlink()
    (root / "images" / "002.Bird_2").rename(root / "images" / "gone")
    with pytest.raises(DatasetError, match=r"10 of 10 listed images are missing \(.*, \.\.\.\)"):
        CUBDataset("train", root=root, check_counts=False)


@pytest.mark.parametrize("name", TREES)
def test_missing_metadata_or_root(tmp_path, name):
    with pytest.raises(
        DatasetError, match=f"does not exist; download and prepare the dataset with: plm-data prepare {name} --root"
    ):
        DATASETS[name]("train", root=tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="missing"):
        DATASETS[name]("train", root=tmp_path / "empty")


def test_malformed_metadata_names_file_and_line(tmp_path):
    root = make_sop_tree(tmp_path / "sop")
    (root / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 x 1 bicycle_final/a.JPG\n")
    with pytest.raises(DatasetError, match=r"Ebay_train.txt:2: class_id 'x' is not an integer"):
        SOPDataset("train", root=root, check_counts=False)
    root = make_inshop_tree(tmp_path / "inshop")
    path = root / "Eval" / "list_eval_partition.txt"
    path.write_text(path.read_text().replace("id_00000003  query", "item3  query", 1))
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:\d+: item id 'item3'"):
        InShopDataset("test", root=root, check_counts=False)


def test_cars_fields_are_read_by_name(tmp_path):
    from scipy.io import loadmat, savemat

    root = make_cars_tree(tmp_path / "cars")
    mat = loadmat(str(root / "cars_annos.mat"))
    ann = mat["annotations"]
    # The same annotations with the fields in another order: still read correctly.
    names = list(reversed(ann.dtype.names))
    shuffled = ann[names]
    savemat(
        str(root / "cars_annos.mat"),
        {"annotations": shuffled.astype([(n, "O") for n in names]), "class_names": mat["class_names"]},
    )
    assert Cars196Dataset("test", root=root, check_counts=False).class_ids == [99, 100]
    savemat(
        str(root / "cars_annos.mat"),
        {"annotations": ann[["relative_im_path", "test"]].astype([("relative_im_path", "O"), ("test", "O")])},
    )
    with pytest.raises(DatasetError, match="'annotations' has no field class"):
        Cars196Dataset("test", root=root, check_counts=False)
    (root / "cars_annos.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read .*cars_annos.mat"):
        Cars196Dataset("test", root=root, check_counts=False)


def test_unreadable_image_raises_naming_the_path(tmp_path):
    root = make_cub_tree(tmp_path / "cub")
    ds = CUBDataset("train", root=root, check_counts=False)
    bad = truncate_image(root / ds.paths[4])
    with pytest.raises(UnreadableImageError, match=f"cannot read image {bad}"):
        ds[4]


def test_skip_unreadable_substitutes_and_reports(tmp_path, caplog):
    root = make_cub_tree(tmp_path / "cub")
    ds = CUBDataset("train", root=root, check_counts=False, skip_unreadable=True)
    bad = truncate_image(root / ds.paths[3])  # the first image of class 2
    with caplog.at_level(logging.WARNING, logger="plm_lightning.data.files"):
        image, label, index = ds[3]
        assert (label, index) == (2, 3) and is_rgb(image)
        expected = ds.load(4)  # the next image of the same class stands in
        assert torch.equal(image, expected)
        ds[3]
    assert ds.skipped == {str(bad): ds.skipped[str(bad)]} and ds.num_skipped == 1
    warnings = [r for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(warnings) == 1 and str(bad) in warnings[0].getMessage()  # once per path


def test_skip_unreadable_falls_back_to_other_classes(tmp_path):
    root = make_cub_tree(tmp_path / "cub", images_per_class=1)
    ds = CUBDataset("train", root=root, check_counts=False, skip_unreadable=True)
    truncate_image(root / ds.paths[0])
    image, label, index = ds[0]
    assert label == 1 and index == 0 and ds.num_skipped == 1
    truncate_image(root / ds.paths[1])
    with pytest.raises(DatasetError, match="no readable image"):
        ds[1]


def test_plm_data_default_root(tmp_path, monkeypatch):
    make_cub_tree(tmp_path / "cub")
    monkeypatch.setenv("PLM_DATA", str(tmp_path))
    ds = CUBDataset("test", check_counts=False)
    assert ds.root == tmp_path / "cub" and len(ds) == 6
    from omegaconf import OmegaConf

    from plm_lightning.config.schema import DataConfig

    cfg = OmegaConf.structured(DataConfig(name="cub", check_counts=False))
    assert len(CUBDataset.from_config("train", None, cfg)) == 6
    monkeypatch.delenv("PLM_DATA")
    with pytest.raises(ValueError, match=r"data.root is null and \$PLM_DATA is not set"):
        CUBDataset("test", check_counts=False)
