"""Users' own image folders: nested sub-folders, mixed formats, ._* and hidden entries ignored, class-disjoint
split by fraction or by explicit class lists."""

import pytest
from trees import is_rgb, make_folder_tree, truncate_image

from plm_lightning.data.base import DatasetError
from plm_lightning.data.folder import ImageFolderDataset, split_classes


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_folder_tree(tmp_path_factory.mktemp("folder") / "mine")


def test_fraction_split_and_items(root):
    train, test = ImageFolderDataset("train", root=root), ImageFolderDataset("test", root=root)
    assert (train.class_names, test.class_names) == (["ant", "bee"], ["cat", "dog"])
    assert (train.class_ids, test.class_ids) == ([0, 1], [2, 3])
    assert len(train) == len(test) == 6
    assert any("nested/deeper" in p for p in train.paths)
    assert not any("._" in p or "/." in p or p.startswith(".") or p.endswith(".txt") for p in train.paths + test.paths)
    for ds in (train, test):  # JPEG, PNG, palette PNG with transparency, RGBA, greyscale and CMYK JPEG
        assert all(is_rgb(ds[i][0]) for i in range(len(ds)))
    assert ImageFolderDataset("train", root=root, train_class_fraction=0.75).class_names == ["ant", "bee", "cat"]


def test_explicit_class_lists(root):
    train = ImageFolderDataset("train", root=root, train_classes=["dog", "ant"])
    test = ImageFolderDataset("test", root=root, train_classes=["dog", "ant"])
    assert (train.class_names, test.class_names) == (["ant", "dog"], ["bee", "cat"])
    test = ImageFolderDataset("test", root=root, train_classes=["ant"], test_classes=["cat"])
    assert test.class_names == ["cat"]  # bee and dog unused
    assert ImageFolderDataset("train", root=root, test_classes=["bee"]).class_names == ["ant", "cat", "dog"]


@pytest.mark.parametrize(
    "train, test, message",
    [
        (["ant", "zebra"], [], r"data.train_classes: no class folder named 'zebra' \(classes: ant, bee, cat, dog\)"),
        ([], ["Ant"], r"data.test_classes: no class folder named 'Ant'"),
        (["ant", "bee"], ["bee"], r"share 'bee'; the splits must be class-disjoint"),
        (["ant", "bee", "cat", "dog"], [], r"the test split would have no classes"),
    ],
)
def test_bad_class_lists(root, train, test, message):
    with pytest.raises(DatasetError, match=message):
        ImageFolderDataset("train", root=root, train_classes=train, test_classes=test)


def test_split_classes_edges():
    assert split_classes(["b", "a"], 0.01) == (["a"], ["b"])  # at least one class on each side
    assert split_classes(["b", "a", "c"], 0.99) == (["a", "b"], ["c"])
    with pytest.raises(ValueError, match="at least 2 class folders"):
        split_classes(["a"], 0.5)


def test_unreadable_image_in_a_folder(tmp_path):
    root = make_folder_tree(tmp_path / "mine")
    ds = ImageFolderDataset("train", root=root, skip_unreadable=True)
    truncate_image(root / ds.paths[0])
    assert is_rgb(ds[0][0]) and ds.num_skipped == 1


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; point data.root at a folder with one sub-folder"):
        ImageFolderDataset("train", root=tmp_path / "nope")
