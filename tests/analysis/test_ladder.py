"""plm-study ladder end to end at a small setting: pretraining on the source task, every rung over two seeds from
that backbone, and the table, CSV, JSON and plots whose numbers are the runs' own."""

import csv
import json
import statistics

import pytest
from runner import run_cli

from plm_lightning.analysis.ladder import LADDER, goal_checks, markdown_table, summarise

TINY = [
    "data.glyphs.classes=4",
    "data.glyphs.images_per_class=6",
    "data.sampler.batch_size=10",
    "trainer.max_epochs=2",
    "method.proxies.count=4",
    "data.loader.eval_batch_size=64",
]
TINY_PRETRAIN = [
    "data.glyphs.source_classes=6",
    "data.glyphs.source_images_per_class=4",
    "data.sampler.batch_size=8",
    "trainer.max_epochs=1",
    "eval.every_n_epochs=1",
]


@pytest.mark.slow
def test_ladder_runs_end_to_end_and_reports_the_runs_numbers(tmp_path):
    out = tmp_path / "ladder"
    args = [
        "ladder",
        "--config",
        "glyphs.yaml",
        "--seeds",
        "0,1",
        *[a for kv in TINY_PRETRAIN for a in ("--pretrain-set", kv)],
        *TINY,
        f"run.dir={out}",
    ]
    result = run_cli("study", *args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("ladder.md", "ladder.csv", "ladder.json", "ladder.png", "ladder_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "ladder.json").read_text())
    rows = {r["rung"]: r for r in report["rows"]}
    assert list(rows) == ["raw input", "random network", "pretrained only", *[r.name for r in LADDER]]
    # Every rung's row is the mean and std of its two runs' final R@1, read back from their metrics.json.
    for rung in LADDER:
        finals = [
            json.loads((out / "runs" / f"{rung.slug}-s{s}" / "metrics.json").read_text())["final"]["R@1"]
            for s in (0, 1)
        ]
        assert rows[rung.name]["R@1"] == pytest.approx(statistics.fmean(finals))
        assert rows[rung.name]["R@1_std"] == pytest.approx(statistics.stdev(finals))
        assert rows[rung.name]["seeds"] == 2
    # All rungs start from the pretrained backbone: their initial evaluation is the pretrained-only row's.
    plm0 = json.loads((out / "runs" / "plm-s0" / "metrics.json").read_text())
    config0 = (out / "runs" / "plm-s0" / "config.yaml").read_text()
    assert str(out / "pretrain" / "checkpoints" / "last.ckpt") in config0
    assert rows["pretrained only"]["R@1"] == pytest.approx(
        statistics.fmean(
            json.loads((out / "runs" / f"plm-s{s}" / "metrics.json").read_text())["initial"]["R@1"] for s in (0, 1)
        )
    )
    assert plm0["history"][-1]["epoch"] == 1
    with open(out / "ladder.csv") as f:
        assert [r["rung"] for r in csv.DictReader(f)] == list(rows)
    assert "| PLM |" in (out / "ladder.md").read_text()

    # A second invocation reuses every finished run (and the pretraining) instead of training again.
    again = run_cli("study", *args, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("(reused)") == len(LADDER) * 2 and "pretraining reused" in again.stdout
    assert json.loads((out / "ladder.json").read_text())["rows"] == report["rows"]


def test_goal_checks_and_table_follow_the_numbers():
    def row(name, values, best=None):
        runs = [
            {"final": {"R@1": v}, "best": {"R@1": b}, "best_epoch": 1, "wall_s": 1.0}
            for v, b in zip(values, best or values)
        ]
        return summarise(name, runs)

    rows = {
        "pretrained only": row("pretrained only", [50, 52]),
        "PLM": row("PLM", [64, 66], best=[64.5, 66.5]),
        "no proxies": row("no proxies", [64, 65]),
    }
    checks = {c["check"]: c for c in goal_checks(rows)}
    assert checks["PLM > pretrained only"]["holds"] and checks["PLM > pretrained only"]["gap"] == pytest.approx(14)
    assert not checks["PLM > no proxies"]["holds"]  # a 0.5 gap inside the larger std, 1.41
    assert checks["PLM beats pretrained only by >= 10 R@1"]["holds"]
    assert checks["PLM's final R@1 within 1 of its best"]["holds"]
    table = markdown_table(list(rows.values()), list(checks.values()), "# t")
    assert "| PLM | 65.00 ± 1.41 |" in table and "| PLM > no proxies | +0.50 | 1.41 | **no** |" in table


def test_only_selects_rungs_by_name_or_slug_and_names_an_unknown_one(tmp_path, capsys):
    from argparse import Namespace

    from plm_lightning.analysis.ladder import KNOBS
    from plm_lightning.cli.study import _selected_rungs, main

    rungs, error = _selected_rungs(Namespace(rungs="knobs", only="proxy-lr-1e-2, PLM,proxy lr 1e-2"))
    assert error is None and [r.name for r in rungs] == ["proxy lr 1e-2", "PLM"]  # order kept, repeats dropped
    assert _selected_rungs(Namespace(rungs="knobs", only=None)) == (KNOBS, None)

    out = tmp_path / "ladder"
    rc = main(["ladder", "--config", "glyphs.yaml", "--only", "PLM,nope", f"run.dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no rung named 'nope'" in err[0] and "'no proxies'" in err[0]
    assert not out.exists()  # refused before anything was written
