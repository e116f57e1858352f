"""plm-fit end to end on the embedded digits, as a user runs it (a subprocess, the real config, small overrides)."""

import csv
import json

import pytest
import torch
from runner import run_cli

METRIC_KEYS = {"R@1", "R@2", "R@4", "R@8", "MAP@R", "R-precision", "NMI"}


def run_fit(*args, cwd=None, env_extra=None):
    return run_cli("fit", *args, cwd=cwd, timeout=300, env_extra={"WANDB_MODE": "offline", **(env_extra or {})})


def test_unknown_key_exits_2_with_one_line_naming_the_key(tmp_path):
    result = run_fit("--config", "digits.yaml", "optim.lrr=0.1", f"run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.lrr" in lines[0] and "'optim.lr'" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing started


def test_print_config_from_another_folder(tmp_path):
    result = run_fit("--config", "digits", "--print-config", "--optim.lr", "0.25", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lr: 0.25" in result.stdout and "name: digits" in result.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_fit_on_digits_writes_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = run_fit(
        "--config",
        "digits.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "logger.wandb=true",
        "method.proxies.count=10",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The run ends by saying how training changed the headline metrics and where its results are.
    assert f"results in {run_dir}: metrics.json, config.yaml, checkpoints/" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    r1 = f"training changed R@1 {metrics['initial']['R@1']:.2f} -> {metrics['final']['R@1']:.2f}; "
    assert r1 in result.stdout and "improved " in result.stdout and "; worse " in result.stdout
    # The resolved transforms are printed before training and kept with the run.
    transforms = (run_dir / "transforms.txt").read_text()
    assert "BatchRandomAffine" in transforms and "eval: Compose(" in transforms
    assert "transforms:" in result.stdout + result.stderr
    # Lightning's noise that is not the user's to act on is gone; its parameter summary stays.
    printed = result.stdout + result.stderr
    assert "Trainable params" in printed
    for noise in ("LeafSpec", "litlogger", "Total Flops", "FLOPs", "`srun` command is available"):
        assert noise not in printed, noise

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for part in ("initial", "final", "best"):
        assert set(metrics[part]) == METRIC_KEYS
        assert all(0.0 <= v <= 100.0 for v in metrics[part].values())
    assert metrics["best_epoch"] in (0, 1)
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert metrics["best"]["R@1"] == max(h["R@1"] for h in metrics["history"])
    assert metrics["final"]["R@1"] == metrics["history"][-1]["R@1"]
    assert metrics["initial"]["R@1"] > 50  # an untrained CNN already separates digits far above chance (~20%)

    assert "name: digits" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # plain data, no code
    state = ckpt["state_dict"]
    assert any(k.startswith("teacher.") for k in state) and "proxies.points" in state

    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["val/R@1_best"]) for r in rows if r.get("val/R@1_best")]
    assert logged[-1] == pytest.approx(metrics["best"]["R@1"])
    assert any(r.get("train/loss_point_step") for r in rows)

    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline run files missing"
    assert "R@1" in result.stdout and "initial" in result.stdout  # the final Recall@K table
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]  # no half-written files


@pytest.mark.slow
@pytest.mark.parametrize(
    "ablation",
    [
        ["method.similarity=kmeans", "method.plm.binary_threshold=0.5"],
        [
            "method.plm.subset_selection=false",
            "method.plm.n_beta=0",
            "method.proxies.count=0",
            "method.proxies.init=random",
        ],
    ],
)
def test_ablations_train_through_the_same_path(tmp_path, ablation):
    run_dir = tmp_path / "run"
    result = run_fit(
        "--config",
        "digits.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "eval.before_training=false",
        *ablation,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["initial"] is None and set(metrics["final"]) == METRIC_KEYS
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("simquality/purity") for r in rows)  # the diagnostic is logged each epoch


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_reduced_precision_trains_on_cpu(tmp_path, precision):
    # bf16-true makes every parameter bf16: QR of the proxy pieces and the loss must still run (in float32).
    run_dir = tmp_path / "run"
    result = run_fit(
        "--config",
        "synthetic.yaml",
        f"run.dir={run_dir}",
        f"trainer.precision={precision}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "logger.csv=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["final"]["R@1"] <= 100


def test_print_config_needs_no_dataset_on_disk_but_a_run_does(tmp_path, capsys, monkeypatch):
    from plm_lightning.cli.fit import main

    monkeypatch.delenv("PLM_DATA", raising=False)
    assert main(["--config", "cub_googlenet.yaml", "--print-config"]) == 0
    assert "name: cub" in capsys.readouterr().out
    missing = tmp_path / "no-cub-here"
    assert main(["--config", "cub_googlenet.yaml", f"data.root={missing}", f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.root" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_stml_trains_and_evaluates_through_the_same_path(tmp_path):
    """method.name=stml on the embedded digits: the same run directory, evaluation and plots as PLM; its checkpoint
    evaluates with plm-eval --ckpt (the target embedding f, not the auxiliary g)."""
    run_dir = tmp_path / "run"
    result = run_fit(
        "--config",
        "digits.yaml",
        "method.name=stml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["final"]) == METRIC_KEYS and [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert "MultiView(views=2" in (run_dir / "transforms.txt").read_text()  # STML's two views by default
    assert (run_dir / "plots" / "similarity_hist.png").is_file()  # STML's contextualised similarity
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("train/rc_epoch", "train/kl_epoch", "simquality/purity"):
        assert any(r.get(key) for r in rows), key
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["auxiliary_head.linear.weight"].shape[0] == 1024
    assert state["teacher.head.linear.weight"].shape[0] == 1024 and not any(k.startswith("proxies.") for k in state)

    from runner import run_cli

    out = tmp_path / "eval.json"
    ev = run_cli(
        "eval",
        "--ckpt",
        run_dir / "checkpoints" / "last.ckpt",
        "--config",
        run_dir / "config.yaml",
        "--output",
        out,
        "--no-nmi",
        timeout=300,
        env_extra={"WANDB_MODE": "disabled"},
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(out.read_text())["R@1"] == pytest.approx(metrics["final"]["R@1"], abs=1e-6)
