"""Config validation of the data keys: one-line errors before any work starts, naming the folder and the fix."""

import pytest
from trees import make_cub_tree, make_folder_tree

from plm_lightning.config import ConfigError, load_config

BASE = ["model.backbone=small_cnn", "model.pretrained=false"]


def _error(args):
    with pytest.raises(ConfigError) as info:
        load_config("digits.yaml", BASE + args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root_names_the_prepare_command():
    message = _error(["data.name=cub", "data.root=/nonexistent"])
    assert "'data.root'" in message and "/nonexistent" in message
    assert message.endswith(
        "folder does not exist; download and prepare the dataset with: plm-data prepare cub --root /nonexistent)"
    )


def test_root_without_metadata(tmp_path):
    message = _error(["data.name=sop", f"data.root={tmp_path}"])
    assert "not a Stanford Online Products folder: Ebay_train.txt, Ebay_test.txt missing" in message
    assert f"plm-data prepare sop --root {tmp_path}" in message


def test_null_root_without_plm_data(monkeypatch):
    monkeypatch.delenv("PLM_DATA", raising=False)
    message = _error(["data.name=inshop"])
    assert "$PLM_DATA is not set" in message and "data.root=DIR" in message


def test_null_root_uses_plm_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PLM_DATA", str(tmp_path))
    message = _error(["data.name=cub"])
    assert f"'{tmp_path / 'cub'}'" in message and "$PLM_DATA/cub" in message
    make_cub_tree(tmp_path / "cub")
    cfg = load_config("digits.yaml", BASE + ["data.name=cub", "data.check_counts=false"])
    assert cfg.data.root is None and cfg.data.check_counts is False and cfg.data.skip_unreadable is False


def test_folder_class_lists_are_validated(tmp_path):
    root = make_folder_tree(tmp_path / "mine")
    load_config("digits.yaml", BASE + ["data.name=folder", f"data.root={root}", "data.train_classes=[ant, cat]"])
    message = _error(["data.name=folder", f"data.root={root}", "data.train_classes=[ant, zebra]"])
    assert "data.train_classes: no class folder named 'zebra'" in message
    message = _error(["data.name=folder", f"data.root={root}", "data.train_classes=[ant]", "data.test_classes=[ant]"])
    assert "share 'ant'" in message
    message = _error(["data.train_classes=[ant]"])
    assert "'data.train_classes'" in message and "data.name=folder only" in message
