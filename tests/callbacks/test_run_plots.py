"""The run's figures after a short digits fit (a subprocess, as a user runs plm-fit): PNGs in RUN_DIR/plots and
images in the offline W&B run; the similarity histogram has pairs of both kinds."""

import os

import numpy as np
import pytest
from runner import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("recall", "retrieval_grid", "similarity_hist", "embeddings_pca")


@pytest.mark.slow
def test_short_fit_writes_the_plots_and_logs_them_to_wandb(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    result = run_cli(
        "fit",
        "--config",
        "digits.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "method.proxies.count=10",
        "logger.wandb=true",
        "logger.csv=false",
        "trainer.enable_progress_bar=false",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in PLOTS:
        path = run_dir / "plots" / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list((run_dir / "plots").glob("*.tmp")) and not list((run_dir / "plots").glob(".*"))
    logged = {p.name.split("_")[0] for p in run_dir.glob("wandb/offline-run-*/files/media/images/plots/*.png")}
    assert {"recall", "retrieval", "similarity", "embeddings"} <= logged, logged

    # The histogram's numbers, as the callback computes them from the trained model's test embeddings.
    from plm_lightning.checkpoints import load_trained_model
    from plm_lightning.figures.run_figures import pair_similarities
    from plm_lightning.models.similarity_estimator import build_similarity

    model = load_trained_model(run_dir / "checkpoints" / "last.ckpt", "cpu")
    emb, labels, _ = model.embed_split(model.cfg.data, "test")
    same, different, quality = pair_similarities(
        emb, labels, build_similarity(model.cfg), batch_size=60, neighbours_per_seed=5, max_batches=20
    )
    assert same.size > 0 and different.size > 0
    assert np.all((0 < same) & (same <= 1)) and np.all((0 < different) & (different <= 1))
    assert same.mean() > different.mean()  # the similarity knows something about the classes
    assert 0 < quality["purity"] <= 1


@pytest.mark.slow
def test_vector_data_gets_no_retrieval_grid(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="disabled")
    result = run_cli(
        "fit",
        "--config",
        "synthetic.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "logger.csv=false",
        "trainer.enable_progress_bar=false",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(p.stem for p in (run_dir / "plots").glob("*.png"))
    assert written == ["embeddings_pca", "recall", "similarity_hist"]  # vectors have no pictures to show


@pytest.mark.parametrize("on", [True, False])
def test_eval_plots_switches_the_callback(tmp_path, on):
    from plm_lightning.callbacks.run_plots import RunPlots
    from plm_lightning.config import load_config
    from plm_lightning.experiment import build

    cfg = load_config("synthetic.yaml", [f"run.dir={tmp_path}", f"eval.plots={str(on).lower()}", "logger.csv=false"])
    trainer = build(cfg)[0]
    assert any(isinstance(c, RunPlots) for c in trainer.callbacks) == on
