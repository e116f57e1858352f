"""The bundled paper configs (cub/cars/sop googlenet 128 + 512, inshop resnet50, folder resnet50): they hold the
paper's settings, validate against miniature trees in the official layouts, refuse a missing root with the prepare
command, and run 2 training steps end to end through plm-fit (model.pretrained=false, small images)."""

import json
import sys
from importlib import resources
from pathlib import Path

import pytest

from plm_lightning.config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from runner import run_cli
from trees import make_cars_tree, make_cub_tree, make_folder_tree, make_inshop_tree, make_sop_tree  # noqa: E402

CONFIGS = Path(str(resources.files("plm_lightning") / "configs"))
TREES = {
    "cub": make_cub_tree,
    "cars196": make_cars_tree,
    "sop": make_sop_tree,
    "inshop": make_inshop_tree,
    "folder": make_folder_tree,
}
# config -> (dataset, backbone, embedding size, K list, the paper's R@1 target in the header comment or None)
PAPER = {
    "cub_googlenet": ("cub", "googlenet", 128, [1, 2, 4, 8], "60.6"),
    "cub_googlenet_512": ("cub", "googlenet", 512, [1, 2, 4, 8], "61.7"),
    "cars_googlenet": ("cars196", "googlenet", 128, [1, 2, 4, 8], "49.5"),
    "cars_googlenet_512": ("cars196", "googlenet", 512, [1, 2, 4, 8], "51.2"),
    "sop_googlenet": ("sop", "googlenet", 128, [1, 10, 100, 1000], "65.1"),
    "sop_googlenet_512": ("sop", "googlenet", 512, [1, 10, 100, 1000], "66.4"),
    "inshop_resnet50": ("inshop", "resnet50", 512, [1, 10, 20, 30, 40, 50], None),
    "folder_resnet50": ("folder", "resnet50", 512, [1, 2, 4, 8], None),
}
SMALL = [
    "data.check_counts=false",
    "model.pretrained=false",
    "data.image_size=32",
    "data.resize=36",
    "data.sampler.batch_size=6",
    "data.sampler.neighbours_per_seed=2",
    "data.loader.eval_batch_size=8",
    "data.loader.num_workers=0",
    "method.proxies.count=4",
    "trainer.max_steps=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "eval.nmi=false",
    "eval.ks=[1,2]",
    "eval.plots=false",
]


def tree(name: str, tmp_path: Path) -> Path:
    return TREES[name](tmp_path / name)


@pytest.mark.parametrize("config", sorted(PAPER))
def test_config_holds_the_settings_and_validates_on_a_miniature_tree(config, tmp_path):
    dataset, backbone, dim, ks, target = PAPER[config]
    cfg = load_config(f"{config}.yaml", [f"data.root={tree(dataset, tmp_path)}"])
    assert (cfg.data.name, cfg.model.backbone, cfg.model.embedding_dim, list(cfg.eval.ks)) == (
        dataset,
        backbone,
        dim,
        ks,
    )
    assert cfg.model.pretrained and cfg.data.check_counts  # the real runs: ImageNet weights, official counts
    assert cfg.data.loader.num_workers > 0  # images stream from disk through worker processes
    header = (CONFIGS / f"{config}.yaml").read_text().split("\ndata:")[0]
    if target:
        assert f"R@1 {target}" in header  # the paper's target number is in the comments
    assert "plm-fit --config" in header


@pytest.mark.parametrize("config", ["cub_googlenet", "sop_googlenet", "inshop_resnet50"])
def test_a_null_root_is_plm_data_slash_name(config, tmp_path, monkeypatch):
    dataset = PAPER[config][0]
    tree(dataset, tmp_path)
    monkeypatch.setenv("PLM_DATA", str(tmp_path))
    cfg = load_config(f"{config}.yaml", [])
    assert cfg.data.root is None  # resolved by the dataset, so a sweep or a requeued job keeps the env's choice
    monkeypatch.setenv("PLM_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match=rf"plm-data prepare {dataset} --root .*elsewhere/{dataset}"):
        load_config(f"{config}.yaml", [])


def test_missing_root_exits_2_with_one_line_naming_the_folder_and_the_prepare_command(tmp_path):
    result = run_cli("fit", "--config", "cub_googlenet.yaml", "data.root=/nonexistent", f"run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "/nonexistent" in lines[0] and "plm-data prepare cub --root /nonexistent" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(PAPER))
def test_two_training_steps_end_to_end(config, tmp_path):
    dataset = PAPER[config][0]
    root = tree(dataset, tmp_path)
    run_dir = tmp_path / "run"
    extra = ["data.loader.num_workers=2"] if config == "folder_resnet50" else []  # one run through worker processes
    result = run_cli("fit", "--config", f"{config}.yaml", f"data.root={root}", *SMALL, *extra, f"run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["final"]) >= {"R@1", "R@2", "MAP@R"}
    assert all(0.0 <= metrics["final"][k] <= 100.0 for k in ("R@1", "R@2"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    if dataset == "inshop":
        # Query -> gallery evaluation: plm-eval on the checkpoint gives exactly the run's numbers.
        out = tmp_path / "eval.json"
        ev = run_cli(
            "eval",
            "--ckpt",
            str(run_dir / "checkpoints" / "last.ckpt"),
            "--config",
            str(run_dir / "config.yaml"),
            "--output",
            str(out),
        )
        assert ev.returncode == 0, ev.stderr
        assert json.loads(out.read_text()) == pytest.approx({k: v for k, v in metrics["final"].items()}, abs=1e-9)


def test_a_training_split_smaller_than_one_batch_exits_2_naming_the_batch_size(tmp_path):
    root = tree("cub", tmp_path)  # 6 training images, the config's batch is 120
    result = run_cli(
        "fit",
        "--config",
        "cub_googlenet.yaml",
        f"data.root={root}",
        "data.check_counts=false",
        "model.pretrained=false",
        "trainer.accelerator=cpu",
        f"run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("plm-fit: error:") and "data.sampler.batch_size=120" in last and "6 images" in last
