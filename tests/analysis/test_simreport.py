"""plm-simreport on the embedded digits: JSON for every estimator, a PNG, and clear errors."""

import json

import pytest
from runner import run_cli


def run(*args):
    return run_cli("simreport", *args, timeout=300, env_extra={"WANDB_MODE": "offline"})


@pytest.mark.parametrize("features", ["raw", "initial"])
def test_report_for_all_estimators(tmp_path, features):
    out = tmp_path / "report.json"
    result = run("--config", "digits.yaml", "--output", str(out), "--features", features, "--max-batches", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) == {"plm", "gaussian", "knn", "kmeans", "stml"}  # stml: its contextualised similarity
    for numbers in report.values():
        assert 0 <= numbers["purity"] <= 1 and -1 <= numbers["pearson"] <= 1
    # digits are easy: every estimator is far better than chance purity (~0.2 for 5 classes)
    assert min(n["purity"] for n in report.values()) > 0.5
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_checkpoint_features_from_a_trained_run(tmp_path):
    fit = run_cli(
        "fit",
        "--config",
        "digits.yaml",
        f"run.dir={tmp_path / 'run'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "eval.before_training=false",
        timeout=300,
        env_extra={"WANDB_MODE": "offline"},
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    out = tmp_path / "r.json"
    result = run(
        "--config",
        "digits.yaml",
        "--output",
        str(out),
        "--ckpt",
        str(tmp_path / "run/checkpoints/last.ckpt"),
        "--estimators",
        "plm",
        "--max-batches",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(json.loads(out.read_text())) == {"plm"}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--estimators", "plm,magic"], "--estimators"),
        (["--ckpt", "/no/such.ckpt"], "--ckpt"),
        (["--features", "checkpoint"], "--ckpt"),
        (["optim.lrr=1"], "optim.lrr"),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, args, fragment):
    result = run("--config", "digits.yaml", "--output", str(tmp_path / "r.json"), *args)
    assert result.returncode == 2
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
