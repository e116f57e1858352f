"""plm-slurm's batch script and its refusals, without SLURM: --dry-run prints the script and writes nothing."""

import re
import shlex

import pytest

from plm_lightning.cli import slurm


def dry_run(capsys, *args):
    code = slurm.main(["--config", "digits.yaml", "--time", "02:00:00", "--dry-run", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_a_requeueable_gpu_script_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-123")
    monkeypatch.setenv("PLM_DATA", "/data/sets")
    monkeypatch.setenv("PLM_SECRET_TOKEN", "secret-token-456")
    monkeypatch.delenv("PLM_RUN_DIR", raising=False)
    code, out, err = dry_run(
        capsys,
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--partition",
        "gpu",
        "--account",
        "lab",
        "--cpus-per-task",
        "8",
        "--mem",
        "64G",
        "trainer.accelerator=gpu",
        "run.dir=runs/x",
        "optim.lr=3e-4",
    )
    assert code == 0, err
    run_dir = (tmp_path / "runs" / "x").resolve()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", out, re.M))
    assert directives == {
        "job-name": "x",
        "nodes": "2",
        "ntasks-per-node": "4",
        "gres": "gpu:4",
        "cpus-per-task": "8",
        "mem": "64G",
        "time": "02:00:00",
        "partition": "gpu",
        "account": "lab",
        "signal": "SIGUSR1@90",
        "requeue": "",
        "open-mode": "append",
        "output": f"{run_dir}/slurm/%j.out",
        "error": f"{run_dir}/slurm/%j.out",
        "chdir": str(tmp_path),
    }
    assert "--ntasks=" not in out  # Lightning detects SLURM by --ntasks-per-node
    last = out.strip().splitlines()[-1]
    words = shlex.split(last)
    assert words[:2] == ["exec", "srun"] and words[3:6] == ["-m", "plm_lightning.cli.fit", "--config"]
    assert words[6:] == [f"{run_dir}/config.yaml", "resume=auto", f"run.dir={run_dir}"]
    assert "export WANDB_MODE=offline" in out and "export PLM_DATA=/data/sets" in out
    assert "secret" not in out and "WANDB_API_KEY" not in out and "PLM_SECRET_TOKEN" not in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_cpu_job_requests_no_gpus(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = dry_run(capsys, "--cpu-tasks-per-node", "2", "--signal-lead", "300", "run.name=bash")
    assert code == 0, err
    assert "--gres" not in out and "#SBATCH --ntasks-per-node=2" in out and "#SBATCH --signal=SIGUSR1@300" in out
    assert "#SBATCH --job-name=plm-bash" in out  # a job named bash would count as interactive for Lightning
    # The default run dir is absolute and fixed at submission.
    run_dir = re.search(r"run\.dir=(\S+)", out).group(1)
    assert run_dir.startswith(str(tmp_path.resolve() / "runs" / "bash-"))
    assert "export PLM_SLURM_REQUEUE_GRACE=280" in out


def test_submission_writes_config_and_script_then_calls_sbatch(capsys, tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/sbatch-args\necho '4242;cluster'\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    code = slurm.main(
        [
            "--config",
            "digits.yaml",
            "--time",
            "1-00:00:00",
            "--cpu-tasks-per-node",
            "2",
            "run.dir=r",
            "trainer.max_epochs=2",
            "resume=auto",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    run_dir = tmp_path / "r"
    assert "submitted job 4242" in out and str(run_dir / "slurm" / "4242.out") in out
    assert (tmp_path / "sbatch-args").read_text().split() == ["--parsable", str(run_dir / "slurm" / "job.sbatch")]
    from plm_lightning.config import load_config

    cfg = load_config(str(run_dir / "config.yaml"))  # the job's config: what was asked for, with the placement
    assert (cfg.trainer.max_epochs, cfg.trainer.devices, cfg.trainer.num_nodes) == (2, 2, 1)
    assert cfg.trainer.accelerator == "cpu" and cfg.run.dir == str(run_dir) and cfg.resume is None


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--gpus-per-node", "2", "trainer.accelerator=gpu", "trainer.devices=4"],
            "trainer.devices=4 in the config contradicts --gpus-per-node 2",
        ),
        (
            ["--gpus-per-node", "2", "--nodes", "2", "trainer.accelerator=gpu", "trainer.num_nodes=3"],
            "trainer.num_nodes=3 in the config contradicts --nodes 2",
        ),
        (["--gpus-per-node", "2"], "trainer.accelerator=cpu in the config contradicts --gpus-per-node"),  # digits.yaml
        (["--cpu-tasks-per-node", "2", "trainer.accelerator=gpu"], "contradicts --cpu-tasks-per-node"),
        (["--gpus-per-node", "0", "trainer.accelerator=gpu"], "--gpus-per-node must be at least 1"),
        (["--cpu-tasks-per-node", "1", "--time", "90"], "--time '90' is not HH:MM:SS"),
        (["--cpu-tasks-per-node", "1", "--time", "1:75:00"], "minutes or seconds over 59"),
        (["--cpu-tasks-per-node", "1", "--time", "00:01:00"], "not longer than --signal-lead 90"),
        (["--cpu-tasks-per-node", "1", "--partition", "gpu\n#SBATCH --x"], "--partition"),
        (["--cpu-tasks-per-node", "1", "--mem", "lots"], "--mem 'lots'"),
        (["--cpu-tasks-per-node", "1", "trainer.max_epoch=3"], "unknown config key 'trainer.max_epoch'"),
    ],
)
def test_inconsistent_requests_are_refused_in_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code = slurm.main(["--config", "digits.yaml", "--time", "02:00:00", *args])  # not a dry run: must write nothing
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("plm-slurm: error: ") and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_parse_time():
    assert slurm.parse_time("01:02:03") == 3723
    assert slurm.parse_time("2-00:00:10") == 2 * 86400 + 10
    for bad in ("1:00", "1-25:00:00", "00:00:00", "ab:cd:ef"):
        with pytest.raises(slurm.RequestError):
            slurm.parse_time(bad)


def test_seeds_make_one_job_array_whose_tasks_are_the_seeds(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLM_RUN_DIR", raising=False)
    code, out, err = dry_run(capsys, "--cpu-tasks-per-node", "1", "--seeds", "3,5,9", "run.dir=runs/my seeds")
    assert code == 0, err
    run_dir = (tmp_path / "runs" / "my seeds").resolve()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", out, re.M))
    assert directives["array"] == "3,5,9"
    assert directives["output"] == directives["error"] == f"{run_dir}/slurm/%A_%a.out"
    assert "requeue" in directives
    # Each task is its own run: the shell expands the task id inside the quoted run folder.
    command = next(line for line in out.splitlines() if line.startswith("exec srun"))
    expanded = shlex.split(command.replace("${SLURM_ARRAY_TASK_ID}", "5"))
    assert expanded[-4:] == ["--config", f"{run_dir}/seed-5/config.yaml", "resume=auto", f"run.dir={run_dir}/seed-5"]
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
