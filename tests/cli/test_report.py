"""plm-fit --seeds and plm-report: a multi-seed request, and the paper-style table whose numbers are the runs' own."""

import argparse
import csv
import json
import statistics

import pytest
import yaml
from runner import run_cli

from plm_lightning.cli.common import parse_seeds
from plm_lightning.config import load_config, to_yaml

TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "eval.plots=false",
    "trainer.enable_progress_bar=false",
]


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,1,4") == [0, 1, 4]
    assert parse_seeds("3-5") == [3, 4, 5]
    for bad in ("a", "1,1", "0", "5-3", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


@pytest.mark.slow
def test_two_seed_request_and_its_report(tmp_path):
    base = tmp_path / "req"
    result = run_cli("fit", "--config", "digits.yaml", "--seeds", "0,1", f"run.dir={base}", *TINY, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    finals = []
    for seed in (0, 1):
        run_dir = base / f"seed-{seed}"
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["run"]["seed"] == seed and saved["logger"]["group"] == "req"
        finals.append(json.loads((run_dir / "metrics.json").read_text())["final"])
    assert finals[0] != finals[1]  # two seeds, two different runs
    # The request ends with the table; plm-report on the folder gives the same, from the runs' own metrics.json.
    assert (base / "report.md").read_text() in result.stdout
    again = run_cli("report", str(base), "--output", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr
    with open(tmp_path / "out" / "report.csv") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"R@1", "R@2", "R@4", "R@8"}
    for metric, row in rows.items():
        values = [f[metric] for f in finals]
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert float(row["std"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert row["n"] == "2" and row["seeds"] == "0,1" and row["epoch"] == "final"
    line = next(ln for ln in (tmp_path / "out" / "report.md").read_text().splitlines() if ln.startswith("| digits"))
    r1 = [f["R@1"] for f in finals]
    assert f"{statistics.fmean(r1):.2f} ± {statistics.stdev(r1):.2f}" in line
    assert (tmp_path / "out" / "report.tex").read_text().startswith("% plm-report: last epoch")


def fake_run(folder, config_name, overrides, seed, epochs_done, r1, check_data=True):
    """A run directory as plm-fit leaves it (config.yaml, metrics.json), without training."""
    cfg = load_config(config_name, [*overrides, f"run.seed={seed}", f"run.dir={folder}"], check_data=check_data)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(to_yaml(cfg))
    ks = list(cfg.eval.ks)
    history = [{"epoch": e, **{f"R@{k}": r1 + k for k in ks}} for e in range(epochs_done)]
    final = {f"R@{k}": r1 + k for k in ks}
    metrics = {"initial": None, "final": final, "best": {f"R@{k}": r1 + k + 1 for k in ks}, "history": history}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return cfg


def test_report_groups_by_config_lists_unfinished_runs_and_shows_the_paper(tmp_path, capsys):
    from plm_lightning.cli.report import main

    runs = tmp_path / "runs"
    # Two seeds of the digits config (run from different data roots / workers: the same measurement) ...
    fake_run(runs / "a0", "digits.yaml", ["trainer.max_epochs=2", "data.loader.num_workers=0"], 0, 2, 90.0)
    fake_run(runs / "a1", "digits.yaml", ["trainer.max_epochs=2", "data.loader.num_workers=2"], 1, 2, 92.0)
    # ... one seed of a different config, an unfinished run and a W&B copy of a config, which is not a run
    fake_run(runs / "b0", "digits.yaml", ["trainer.max_epochs=2", "method.proxies.count=0"], 0, 2, 80.0)
    fake_run(runs / "a2", "digits.yaml", ["trainer.max_epochs=2"], 2, 1, 10.0)
    (runs / "a0" / "wandb" / "files").mkdir(parents=True)
    (runs / "a0" / "wandb" / "files" / "config.yaml").write_text((runs / "a0" / "config.yaml").read_text())
    # A CUB run: its config carries the paper's numbers
    cub = fake_run(runs / "c0", "cub_googlenet.yaml", ["trainer.max_epochs=1"], 0, 1, 58.0, check_data=False)

    assert main([str(runs)]) == 0
    text = (runs / "report.md").read_text()
    lines = text.splitlines()
    digits = next(ln for ln in lines if ln.startswith("| digits, small_cnn, 64-d |"))
    assert "| 2 | 0,1 |" in digits and "92.00 ± 1.41" in digits  # R@1 = 90 + 1 and 92 + 1
    proxies = next(ln for ln in lines if "method.proxies.count=0" in ln)
    assert "| 1 | 0 |" in proxies and "81.00 |" in proxies  # one run: no std
    assert any(ln.startswith(f"- {runs / 'a2'}: unfinished: 1 of 2 epochs") for ln in lines)
    assert "wandb" not in text
    paper = next(ln for ln in lines if ln.startswith("| paper: PLM"))
    diff = next(ln for ln in lines if ln.startswith("| difference"))
    target = cub.paper.metrics["R@1"]
    assert f"{target:.1f}" in paper and f"{59.0 - target:+.2f}" in diff  # the CUB run's R@1 is 58 + 1
    assert "CUB-200 R@1" in lines[2]

    assert main([str(runs), "--best", "--output", str(tmp_path / "best")]) == 0
    best = (tmp_path / "best" / "report.md").read_text()
    assert "best epoch per run" in best and "93.00 ± 1.41" in best


def test_report_errors_are_one_line(tmp_path, capsys):
    from plm_lightning.cli.report import main

    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().endswith("no such file or directory")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run directories" in err[0]
    fake_run(tmp_path / "only" / "r", "digits.yaml", ["trainer.max_epochs=3"], 0, 1, 50.0)
    assert main([str(tmp_path / "only")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished run" in err[0] and "unfinished: 1 of 3 epochs" in err[0]


def test_seeds_on_several_devices_is_refused(tmp_path, capsys):
    from plm_lightning.cli.fit import main

    rc = main(["--config", "synthetic.yaml", "--seeds", "2", "trainer.devices=2", f"run.dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "plm-slurm --seeds" in err[0]
    assert not (tmp_path / "r").exists()
