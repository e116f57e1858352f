"""plm-fit stops with one line and exit code 2 when the dataset folder fails its checks or an image is unreadable
(the folder checks run when the DataModule builds the datasets, before anything of the run is written; an
unreadable image is met when it is loaded)."""

import pytest
from trees import make_cub_tree, truncate_image

from plm_lightning.cli import fit as fit_cli

SMALL = [
    "model.backbone=small_cnn",
    "model.pretrained=false",
    "model.width=8",
    "model.embedding_dim=8",
    "data.image_size=16",
    "data.resize=16",
    "data.sampler.batch_size=6",
    "data.sampler.neighbours_per_seed=3",
    "method.proxies.count=4",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger.csv=false",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_official_count_mismatch_exits_2(tmp_path, capsys):
    root = make_cub_tree(tmp_path / "cub")
    code = fit_cli.main(
        ["--config", "digits.yaml", *SMALL, "data.name=cub", f"data.root={root}", f"run.dir={tmp_path / 'run'}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("plm-fit: error: CUB-200-2011 train split in")
    assert "(official: 5,864)" in err[-1] and "data.check_counts=false" in err[-1]


def test_unreadable_image_exits_2_naming_it(tmp_path, capsys):
    root = make_cub_tree(tmp_path / "cub")
    bad = truncate_image(next((root / "images" / "001.Bird_1").glob("*.jpg")))
    code = fit_cli.main(
        [
            "--config",
            "digits.yaml",
            *SMALL,
            "data.name=cub",
            f"data.root={root}",
            "data.check_counts=false",
            "eval.before_training=false",
            "eval.ks=[1,2]",
            f"run.dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (f"plm-fit: error: cannot read image {bad}: {err[-1].split(': ', 3)[-1]}")
    assert str(bad) in err[-1] and err[-1].endswith("set data.skip_unreadable=true to skip unreadable images")
