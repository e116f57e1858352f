"""plm-slurm jobs on a real one-node SLURM cluster (tests/slurm/conftest.py): a 2-task CPU DDP run, and a run that
receives SIGUSR1, checkpoints, requeues itself and resumes. Each test prints its wall time (pytest -s shows it)."""

import json
import os
import re
import time

import pytest
import torch
import yaml
from runner import run_cli

# Small digits runs (as in tests/cli/test_resume.py): deterministic, in-process loading (data.loader.num_workers=0).
KNOBS = [
    "trainer.deterministic=true",
    "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false",
    "data.loader.num_workers=0",
]
COMPARED = ("initial", "final", "best", "best_epoch", "history")


def _env(cluster, wandb_mode="disabled"):
    env = dict(cluster.env, WANDB_MODE=wandb_mode, WANDB_SILENT="true")
    for name in ("WANDB_API_KEY", "PLM_RUN_DIR"):
        env.pop(name, None)
    return env


def submit(cluster, run_dir, *args, wandb_mode="disabled"):
    result = run_cli(
        "slurm",
        "--config",
        "digits.yaml",
        "--nodes",
        "1",
        "--time",
        "00:15:00",
        *args,
        *KNOBS,
        f"run.dir={run_dir}",
        env=_env(cluster, wandb_mode),
        cwd=run_dir.parent,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    job_id = re.search(r"submitted job (\d+)", result.stdout).group(1)
    assert str(run_dir / "slurm" / f"{job_id}.out") in result.stdout
    return job_id


def run_fit(run_dir, *args):
    # Not a SLURM job even when pytest itself runs inside one.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("WANDB_API_KEY", "PLM_RUN_DIR")
    }
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true")
    result = run_cli(
        "fit",
        "--config",
        "digits.yaml",
        *KNOBS,
        *args,
        f"run.dir={run_dir}",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def wait_done(cluster, job_id, log, timeout=300):
    info = cluster.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log.read_text()[-4000:] if log.exists() else '(no log)'}"
    return info


@pytest.mark.slow
def test_two_task_cpu_ddp_job_matches_plain_runs(slurm_cluster, tmp_path):
    start = time.monotonic()
    epochs = "trainer.max_epochs=1"
    job_dir = tmp_path / "slurm-ddp"
    job_id = submit(slurm_cluster, job_dir, "--cpu-tasks-per-node", "2", epochs)
    log = job_dir / "slurm" / f"{job_id}.out"
    # The plain runs go while the job runs (two cores: this only overlaps the job's start-up).
    single = run_fit(tmp_path / "single", epochs, "trainer.devices=1")
    ddp = run_fit(tmp_path / "ddp", epochs, "trainer.devices=2", "trainer.accelerator=cpu")
    wait_done(slurm_cluster, job_id, log)
    text = log.read_text()
    job = json.loads((job_dir / "metrics.json").read_text())

    # Two SLURM tasks, each a rank of one DDP group (Lightning's SLURMEnvironment: no process launched by Lightning).
    # (Each of the two tasks launching its own pair of processes would print four of these.)
    assert re.findall(r"MEMBER: \d/\d", text) in (["MEMBER: 1/2", "MEMBER: 2/2"], ["MEMBER: 2/2", "MEMBER: 1/2"]), text[
        -3000:
    ]
    # The initial network is the same everywhere, so its evaluation equals the single-process one exactly; the
    # training shards batches by rank, so the rest equals a plain 2-process DDP run of the same config exactly.
    assert job["initial"] is not None and job["initial"] == single["initial"] == ddp["initial"]
    for key in COMPARED:
        assert job[key] == ddp[key], key
    assert [h["epoch"] for h in job["history"]] == [0]
    print(f"\n2-task CPU DDP SLURM test: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_sigusr1_checkpoints_requeues_and_resumes_exactly(slurm_cluster, tmp_path):
    start = time.monotonic()
    epochs = "trainer.max_epochs=3"
    job_dir = tmp_path / "slurm-requeue"
    job_id = submit(
        slurm_cluster, job_dir, "--cpu-tasks-per-node", "1", epochs, "logger.wandb=true", wandb_mode="offline"
    )
    log = job_dir / "slurm" / f"{job_id}.out"

    # Signal once the first epoch is done (its last.ckpt exists), as SLURM does ahead of the time limit.
    deadline = time.monotonic() + 240
    while not (job_dir / "checkpoints" / "last.ckpt").exists():
        info = slurm_cluster.job(job_id)
        assert info.get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), (
            f"{info}\n{log.read_text()[-4000:] if log.exists() else ''}"
        )
        assert time.monotonic() < deadline, "the job did not finish its first epoch"
        time.sleep(0.2)
    wandb_id = (job_dir / "wandb_id.txt").read_text()
    slurm_cluster.run("scancel", "--signal=USR1", job_id)

    # The job checkpoints at the end of the epoch and requeues itself; skip SLURM's two-minute requeue delay.
    info = slurm_cluster.wait_for_state(job_id, {"PENDING"}, timeout=120)
    assert info["Restarts"] == "1", info
    slurm_cluster.scontrol("update", f"JobId={job_id}", "StartTime=now")
    # Meanwhile, the uninterrupted reference run.
    reference = run_fit(tmp_path / "reference", epochs)
    info = wait_done(slurm_cluster, job_id, log)
    assert info["Restarts"] == "1", info

    text = log.read_text()
    starts = re.findall(r"plm-slurm: job (\d+) start (\d+)", text)
    assert starts == [(job_id, "0"), (job_id, "1")], text[-4000:]  # one log, appended by the requeued start
    assert "checkpointing at the end of this epoch" in text and f"requeueing SLURM job {job_id}" in text
    assert "scontrol requeue" not in text  # no "failed" warning, even when SLURM stops the job before scontrol returns
    hpc = job_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and f"saved {hpc}" in text
    assert f"resume=auto: resuming from {hpc}" in text, text[-4000:]
    saved = torch.load(hpc, weights_only=True)
    # the epoch boundary, with the RNG state (the module) and the batch sampler's (the DataModule)
    assert saved["epoch"] == 1 and "plm_resume" in saved and "RetrievalDataModule" in saved

    job = json.loads((job_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in job["history"]] == [0, 1, 2]
    for key in COMPARED:
        assert job[key] == reference[key], key
    a, b = (
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for d in (tmp_path / "reference", job_dir)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The restart continued the same W&B run (offline: two run folders of one run id).
    assert (job_dir / "wandb_id.txt").read_text() == wandb_id
    run_id = wandb_id.strip()
    runs = sorted(p.name for p in (job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs), runs
    print(f"\nSIGUSR1 requeue SLURM test: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_seed_array_ends_with_three_finished_runs_and_a_report(slurm_cluster, tmp_path):
    start = time.monotonic()
    base = tmp_path / "seeds"
    result = run_cli(
        "slurm",
        "--config",
        "digits.yaml",
        "--time",
        "00:15:00",
        "--cpu-tasks-per-node",
        "1",
        "--seeds",
        "3",
        "trainer.max_epochs=1",
        "eval.before_training=false",
        *KNOBS,
        f"run.dir={base}",
        env=_env(slurm_cluster),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    array = re.search(r"submitted job array (\d+) \(seeds 0,1,2", result.stdout).group(1)
    for seed in (0, 1, 2):
        wait_done(slurm_cluster, f"{array}_{seed}", base / "slurm" / f"{array}_{seed}.out")
    for seed in (0, 1, 2):
        run_dir = base / f"seed-{seed}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert [h["epoch"] for h in metrics["history"]] == [0]
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["run"]["seed"] == seed and saved["logger"]["group"] == "seeds"
        log = (base / "slurm" / f"{array}_{seed}.out").read_text()
        assert f"plm-slurm: job {array}_{seed} start 0" in log, log[-3000:]
    report = run_cli("report", str(base))
    assert report.returncode == 0, report.stderr
    row = next(ln for ln in report.stdout.splitlines() if ln.startswith("| digits"))
    assert "| 3 | 0,1,2 |" in row, report.stdout
    print(f"\n3-seed SLURM job array test: {time.monotonic() - start:.1f} s")
