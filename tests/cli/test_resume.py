"""Exact resume: a run stopped after one epoch and continued with resume=auto ends bitwise where an uninterrupted
run ends (deterministic mode, CPU): the same metrics history and the same student, teacher and proxies."""

import csv
import json
import os

import pytest
import torch
from runner import run_cli


def run_fit(*args):
    return run_cli("fit", *args, timeout=300, env_extra={"WANDB_MODE": "offline"})


COMMON = [
    "--config",
    "digits.yaml",
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=4",
    "trainer.enable_progress_bar=false",
]


def _final_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # plain data, no code


def _as_written_before_the_datamodule_held_batching_state(checkpoint_path):
    """The checkpoint layout of earlier versions: the sampler's epoch and table in the module's plm_resume."""
    ckpt = torch.load(checkpoint_path, weights_only=True)
    batching = ckpt.pop("RetrievalDataModule")
    ckpt["plm_resume"]["sampler_epoch"] = batching["epoch"]
    if "neighbours" in batching:
        ckpt["plm_resume"]["neighbours"] = batching["neighbours"]
    torch.save(ckpt, checkpoint_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "legacy"),
    [
        ([], False),  # the neighbour table is rebuilt from the restored teacher at the start of the resumed epoch
        # resumed mid-interval: the table comes from the checkpoint (the DataModule's state)
        (["data.sampler.refresh_every=2", "logger.csv=false"], False),
        (["data.sampler.refresh_every=2", "logger.csv=false"], True),  # ... from a checkpoint in the earlier layout
        (["method.name=stml", "logger.csv=false"], False),  # STML: two heads, the teacher of the auxiliary head
    ],
    ids=["refresh_every_epoch", "refresh_every_2", "refresh_every_2_legacy_checkpoint", "stml"],
)
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(tmp_path, extra, legacy):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*COMMON, *extra]
    result = run_fit(*common, f"run.dir={a}")
    assert result.returncode == 0, result.stderr[-3000:]

    # resume=auto with nothing to resume from starts fresh (and says so); stop after one epoch of three.
    result = run_fit(*common, f"run.dir={b}", "trainer.stop_after_epochs=1", "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting fresh" in result.stdout + result.stderr
    stopped = json.loads((b / "metrics.json").read_text())
    assert [h["epoch"] for h in stopped["history"]] == [0]
    # The batching state is the DataModule's (Lightning stores its state_dict); the module keeps only the RNG.
    saved = _final_state(b)
    assert saved["RetrievalDataModule"]["epoch"] == 0 and set(saved["plm_resume"]) == {"rng"}
    refresh_every = 2 if "data.sampler.refresh_every=2" in extra else 1
    assert ("neighbours" in saved["RetrievalDataModule"]) == (refresh_every > 1)
    if legacy:
        _as_written_before_the_datamodule_held_batching_state(b / "checkpoints" / "last.ckpt")

    result = run_fit(*common, f"run.dir={b}", "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "resuming from" in out and "last.ckpt" in out
    assert "initial (before training)" not in out  # the evaluation before training is not repeated

    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert [h["epoch"] for h in mb["history"]] == [0, 1, 2]
    for key in ("initial", "final", "best", "best_epoch", "history"):
        assert mb[key] == ma[key], key

    if "logger.csv=false" not in extra:  # the resumed run appends to the stopped run's metrics.csv
        timing = ("train/images_per_sec", "train/data_wait_fraction")  # wall-clock measurements differ by nature
        rows_a, rows_b = (
            [
                {k: v for k, v in row.items() if k not in timing}
                for row in csv.DictReader((d / "logs" / "metrics.csv").open())
            ]
            for d in (a, b)
        )
        assert len(rows_a) > 0 and rows_b == rows_a

    ca, cb = _final_state(a), _final_state(b)
    assert ca["epoch"] == cb["epoch"] == 2  # last.ckpt is the last epoch's, even when R@1 did not improve
    assert ca["global_step"] == cb["global_step"] == 12
    sa, sb = ca["state_dict"], cb["state_dict"]
    assert sa.keys() == sb.keys()
    assert any(k.startswith("teacher.") for k in sa)
    if "method.name=stml" in extra:
        assert any(k.startswith("auxiliary_head.") for k in sa)
    else:
        assert "proxies.points" in sa and "proxies.initialized" in sa
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different
    # The optimiser and schedule states continue too.
    assert ca["lr_schedulers"][0]["last_epoch"] == cb["lr_schedulers"][0]["last_epoch"]


def test_resume_auto_picks_the_newest_checkpoint(tmp_path):
    from plm_lightning.config import load_config
    from plm_lightning.run_directory import resume_checkpoint

    cfg = load_config("digits.yaml", [f"run.dir={tmp_path}", "resume=auto"])
    assert resume_checkpoint(cfg, tmp_path) is None  # nothing yet: start fresh
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"")
    assert resume_checkpoint(cfg, tmp_path) == str(last)
    hpc.write_bytes(b"")
    os.utime(last, (1_000, 1_000))
    assert resume_checkpoint(cfg, tmp_path) == str(hpc)  # a SLURM requeue checkpoint newer than last.ckpt
    os.utime(hpc, (500, 500))
    assert resume_checkpoint(cfg, tmp_path) == str(last)
    cfg = load_config("digits.yaml", [f"resume={hpc}"])
    assert resume_checkpoint(cfg, tmp_path) == str(hpc.resolve())
