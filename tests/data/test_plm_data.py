"""plm-data verify / info / prepare on miniature trees. Never touches the network: the download function is
replaced (by one that raises URLError, as on a machine without network, or one that copies a local archive)."""

import json
import tarfile
from urllib.error import URLError

import pytest
from trees import make_cub_tree, make_inshop_tree, make_sop_tree, truncate_image

from plm_lightning.cli import data as cli


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(url, folder, filename, md5):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cli, "download_url", refuse)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_ok_and_counts(tmp_path, capsys):
    root = make_inshop_tree(tmp_path / "inshop")
    code, out, err = run(capsys, "verify", "inshop", "--root", str(root), "--no-check-counts")
    assert code == 0 and "OK" in out
    assert "train       8 images       2 classes" in out and "(query 4, gallery 4)" in out
    code, out, err = run(capsys, "verify", "inshop", "--root", str(root))
    assert code == 1 and "official: 25,882" in err and "official: 26,830" in err and "2 problems" in err


def test_verify_lists_missing_and_unreadable_files(tmp_path, capsys):
    root = make_sop_tree(tmp_path / "sop")
    (root / "bicycle_final" / "111085122872_1.JPG").unlink()
    code, out, err = run(capsys, "verify", "sop", "--root", str(root), "--no-check-counts")
    assert code == 1 and "1 of 6 listed images are missing (bicycle_final/111085122872_1.JPG)" in err
    root = make_cub_tree(tmp_path / "cub")
    bad = truncate_image(next((root / "images" / "101.Bird_101").glob("*.jpg")))
    code, out, err = run(capsys, "verify", "cub", "--root", str(root), "--no-check-counts")
    assert code == 0  # without --decode only presence is checked
    code, out, err = run(capsys, "verify", "cub", "--root", str(root), "--no-check-counts", "--decode")
    assert code == 1 and f"cannot read image {bad}" in err


def test_verify_without_metadata(tmp_path, capsys):
    code, out, err = run(capsys, "verify", "cars196", "--root", str(tmp_path))
    assert code == 1 and "cars_annos.mat missing" in err


def test_info_json(tmp_path, capsys):
    root = make_cub_tree(tmp_path / "cub", images_per_class=2)
    code, out, err = run(capsys, "info", "cub", "--root", str(root), "--split", "test", "--json")
    assert code == 0
    info = json.loads(out)
    test = info["splits"]["test"]
    assert list(info["splits"]) == ["test"] and info["dataset"] == "cub"
    assert test["class_ids"] == [101, 102] and test["images_per_class"] == {"101": 2, "102": 2}
    assert (test["images"], test["classes"]) == (4, 2) and test["official"] == {"images": 5924, "classes": 100}
    root = make_inshop_tree(tmp_path / "inshop")
    info = json.loads(run(capsys, "info", "inshop", "--root", str(root), "--json")[1])
    assert (info["splits"]["test"]["query"], info["splits"]["test"]["gallery"]) == (4, 4)
    assert info["splits"]["train"]["class_ids"] == [1, 2]
    code, out, err = run(capsys, "info", "inshop", "--root", str(root))
    assert code == 0 and "class ids 3..4, 4-4 images per class" in out


def test_default_root_from_plm_data(tmp_path, capsys, monkeypatch):
    make_cub_tree(tmp_path / "cub")
    monkeypatch.setenv("PLM_DATA", str(tmp_path))
    assert run(capsys, "verify", "cub", "--no-check-counts")[0] == 0
    monkeypatch.delenv("PLM_DATA")
    code, out, err = run(capsys, "info", "cub")
    assert code == 2 and err.startswith("plm-data: error: no --root given and $PLM_DATA is not set")


def test_errors_are_one_line(tmp_path, capsys):
    code, out, err = run(capsys, "info", "sop", "--root", str(tmp_path / "nope"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("plm-data: error: data.root")
    assert f"plm-data prepare sop --root {tmp_path / 'nope'}" in err


def test_prepare_without_network_prints_manual_steps(tmp_path, capsys):
    root = tmp_path / "cub"
    code, out, err = run(capsys, "prepare", "cub", "--root", str(root))
    assert code == 2
    assert "manual steps" in err and "https://data.caltech.edu/records/65de6-vp158" in err
    assert "image_class_labels.txt" in err  # the expected layout
    assert err.strip().splitlines()[-1].startswith("plm-data: error: cannot download")
    assert not (root / "images.txt").exists()


@pytest.mark.parametrize("name", ["cars196", "sop", "inshop"])
def test_prepare_without_a_public_download(tmp_path, capsys, name):
    code, out, err = run(capsys, "prepare", name, "--root", str(tmp_path / name))
    assert code == 2 and "manual steps" in err and "expected layout" in err
    assert "plm-data: error: " in err and "no reliable public download" in err


def _archive(tmp_path, name="mini.tgz", drop=None):
    """A CUB-like archive: CUB_200_2011/ (a miniature tree) and attributes.txt beside it, like the real one."""
    src = make_cub_tree(tmp_path / "src" / "CUB_200_2011")
    if drop:
        (src / drop).unlink()
    (tmp_path / "src" / "attributes.txt").write_text("1 has_bill_shape::dagger\n")
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tmp_path / "src" / "CUB_200_2011", arcname="CUB_200_2011")
        tar.add(tmp_path / "src" / "attributes.txt", arcname="attributes.txt")
    return path


def test_prepare_from_a_local_archive(tmp_path, capsys):
    archive = _archive(tmp_path)
    root = tmp_path / "data" / "cub"
    code, out, err = run(capsys, "prepare", "cub", "--root", str(root), "--from", str(archive), "--no-check-counts")
    assert code == 0 and f"prepared: {root}" in out
    assert (root / "images.txt").is_file() and (root / "images" / "101.Bird_101").is_dir()
    assert [p.name for p in root.iterdir() if p.name.startswith(".plm")] == []  # staging removed
    code, out, err = run(capsys, "prepare", "cub", "--root", str(root), "--no-check-counts")
    assert code == 0 and "already prepared" in out


def test_prepare_refuses_an_incomplete_archive_and_leaves_no_tree(tmp_path, capsys):
    archive = _archive(tmp_path, drop="images/002.Bird_2/Bird_2_0000_4.jpg")
    root = tmp_path / "cub"
    code, out, err = run(capsys, "prepare", "cub", "--root", str(root), "--from", str(archive), "--no-check-counts")
    assert code == 2 and "1 of 6 listed images are missing" in err
    assert list(root.iterdir()) == []  # nothing that looks like a dataset


def test_prepare_checks_the_official_md5_of_a_local_copy(tmp_path, capsys):
    archive = _archive(tmp_path, name="CUB_200_2011.tgz")
    code, out, err = run(capsys, "prepare", "cub", "--root", str(tmp_path / "cub"), "--from", str(archive))
    assert code == 2 and "md5 differs from the official 97eceeb196236b17998738112f37df78" in err


def test_prepare_downloads_then_extracts(tmp_path, capsys, monkeypatch):
    archive = _archive(tmp_path)
    calls = []

    def fake_download(url, folder, filename, md5):
        calls.append((url, filename, md5))
        (tmp_path / "dl").mkdir(exist_ok=True)
        import shutil

        shutil.copy(archive, f"{folder}/{filename}")

    monkeypatch.setattr(cli, "download_url", fake_download)
    root = tmp_path / "cub"
    code, out, err = run(capsys, "prepare", "cub", "--root", str(root), "--no-check-counts")
    assert code == 0 and calls == [
        (
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
            "CUB_200_2011.tgz",
            "97eceeb196236b17998738112f37df78",
        )
    ]
    assert (root / "images.txt").is_file() and not (root / cli.DOWNLOADS).exists()


def test_prepare_inshop_from_loose_files(tmp_path, capsys):
    src = make_inshop_tree(tmp_path / "src")
    with tarfile.open(tmp_path / "img.tar", "w") as tar:  # stands in for img.zip
        tar.add(src / "img", arcname="img")
    root = tmp_path / "inshop"
    code, out, err = run(
        capsys,
        "prepare",
        "inshop",
        "--root",
        str(root),
        "--from",
        str(tmp_path / "img.tar"),
        "--from",
        str(src / "Eval" / "list_eval_partition.txt"),
        "--no-check-counts",
    )
    assert code == 0, err
    assert (root / "Eval" / "list_eval_partition.txt").is_file() and (root / "img" / "WOMEN").is_dir()
