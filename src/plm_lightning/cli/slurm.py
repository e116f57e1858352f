"""plm-slurm --config NAME.yaml --nodes N --gpus-per-node G --time HH:MM:SS [options] [overrides...]: submit a
plm-fit run to SLURM as a requeueable batch job.

The config (with the overrides) is loaded and validated here, before anything is written. The run directory is fixed
now (run.dir, or the default resolved once) as an absolute path, and the merged config goes into RUN_DIR/config.yaml:
every start of the job, the first and each requeued one, runs
``plm-fit --config RUN_DIR/config.yaml resume=auto run.dir=RUN_DIR`` and so continues the same run from its newest
checkpoint, with the same W&B run id (RUN_DIR/wandb_id.txt). ``--signal=SIGUSR1@LEAD`` asks SLURM to warn the job
LEAD seconds before its time limit; the job then checkpoints at the end of the current epoch and requeues itself
(plm_lightning.callbacks.slurm_requeue). The batch script is RUN_DIR/slurm/job.sbatch, its log
RUN_DIR/slurm/<jobid>.out.

For CPU clusters (and tests), ``--cpu-tasks-per-node K`` replaces ``--gpus-per-node``: accelerator=cpu, K processes
per node, no GPU request.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from plm_lightning.cli.common import SEEDS_HELP, config_or_none, fail, parse_seeds, seed_run
from plm_lightning.config import to_yaml
from plm_lightning.run_directory import stored_config
from plm_lightning.utils.io import atomic_write_text

PROG = "plm-slurm"
# Environment variables that the job needs and that hold no secrets; PLM_RUN_DIR is left out on purpose (run.dir is
# passed explicitly, and a stale value would only confuse).
_EXPORT_NAMES = ("WANDB_MODE",)
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# SLURM's time formats that name hours, minutes and seconds: HH:MM:SS or D-HH:MM:SS.
_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_PLAIN = re.compile(r"^[A-Za-z0-9_.,:+-]+$")  # partition/account names: no spaces, quotes or newlines in a #SBATCH line
# Lightning treats a job with these names as an interactive session and does not manage it as SLURM.
_INTERACTIVE_NAMES = {"bash", "interactive"}
SCRIPT_NAME = "job.sbatch"
GRACE_ENV = "PLM_SLURM_REQUEUE_GRACE"  # = plm_lightning.callbacks.slurm_requeue.GRACE_ENV (not imported: lightning)


class RequestError(ValueError):
    """An inconsistent or malformed request, reported as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="example: plm-slurm --config cub.yaml --nodes 1 --gpus-per-node 4 --time 24:00:00 "
        "--partition gpu run.dir=/scratch/runs/cub1 optim.lr=3e-4",
    )
    parser.add_argument("--config", required=True, help="a YAML file, or the name of a bundled config")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (trainer.num_nodes); default 1")
    devices = parser.add_mutually_exclusive_group(required=True)
    devices.add_argument(
        "--gpus-per-node",
        type=int,
        metavar="G",
        help="GPUs per node: one process per GPU (trainer.devices=G, --ntasks-per-node=G)",
    )
    devices.add_argument(
        "--cpu-tasks-per-node",
        type=int,
        metavar="K",
        help="no GPUs: accelerator=cpu with K processes per node (CPU clusters, tests)",
    )
    parser.add_argument("--time", required=True, help="time limit, HH:MM:SS or D-HH:MM:SS")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per process (data loading workers + 1)")
    parser.add_argument("--mem", help="memory per node, e.g. 64G")
    parser.add_argument(
        "--signal-lead",
        type=int,
        default=90,
        metavar="SECONDS",
        help="SIGUSR1 this long before the time limit; the job checkpoints at the end of the current "
        "epoch and requeues, so make it longer than one epoch plus its evaluation (default 90)",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help=f"one job array, a task per seed, each its own run in RUN_DIR/seed-N ({SEEDS_HELP}); "
        "plm-report RUN_DIR tabulates them when they are done",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the batch script; write and submit nothing")
    return parser


def parse_time(text: str) -> int:
    """Seconds in a SLURM time limit given as HH:MM:SS or D-HH:MM:SS."""
    match = _TIME.match(text)
    if not match:
        raise RequestError(f"--time '{text}' is not HH:MM:SS or D-HH:MM:SS")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    if minutes >= 60 or seconds >= 60 or (days and hours >= 24):
        raise RequestError(f"--time '{text}' has minutes or seconds over 59 (or hours over 23 after a day count)")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise RequestError(f"--time '{text}' is zero")
    return total


def apply_request(cfg: DictConfig, args: argparse.Namespace) -> DictConfig:
    """The config with trainer.devices / num_nodes / accelerator set from the request; a config that says otherwise
    (its YAML or an override sets a non-default value that differs) is refused rather than silently overridden."""
    gpu = args.gpus_per_node is not None
    per_node = args.gpus_per_node if gpu else args.cpu_tasks_per_node
    flag = "--gpus-per-node" if gpu else "--cpu-tasks-per-node"
    if per_node < 1:
        hint = "; for a CPU job use --cpu-tasks-per-node K" if gpu else ""
        raise RequestError(f"{flag} must be at least 1, got {per_node}{hint}")
    if args.nodes < 1:
        raise RequestError(f"--nodes must be at least 1, got {args.nodes}")
    configured = cfg.trainer
    if configured.devices not in (1, per_node):  # 1 is the schema default: the request sets it
        raise RequestError(
            f"trainer.devices={configured.devices} in the config contradicts {flag} {per_node}; drop one of them"
        )
    if configured.num_nodes not in (1, args.nodes):
        raise RequestError(
            f"trainer.num_nodes={configured.num_nodes} in the config contradicts --nodes {args.nodes}; drop one of them"
        )
    accelerator = str(configured.accelerator).lower()
    if gpu and accelerator not in ("auto", "gpu", "cuda"):
        raise RequestError(
            f"trainer.accelerator={configured.accelerator} in the config contradicts --gpus-per-node; "
            "override trainer.accelerator=gpu, or use --cpu-tasks-per-node"
        )
    if not gpu and accelerator not in ("auto", "cpu"):
        raise RequestError(
            f"trainer.accelerator={configured.accelerator} in the config contradicts --cpu-tasks-per-node"
        )
    return OmegaConf.merge(
        cfg, {"trainer": {"devices": per_node, "num_nodes": args.nodes, "accelerator": "gpu" if gpu else "cpu"}}
    )


def resolve_run_dir(cfg: DictConfig, cwd: Path) -> Path:
    """The run directory, absolute and fixed now: every (re)start of the job must find the same one. The default
    follows plm_lightning.experiment.resolve_run_dir (runs/<name>-<timestamp>), resolved once at submission."""
    if cfg.run.dir:
        path = Path(cfg.run.dir).expanduser()
        return (path if path.is_absolute() else cwd / path).resolve()
    name = cfg.run.name or cfg.data.name
    return (cwd / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()


def job_name(cfg: DictConfig, run_dir: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(cfg.run.name or run_dir.name)).strip("-") or "plm"
    return f"plm-{name}" if name.lower() in _INTERACTIVE_NAMES else name


def exported_environment(environ: dict[str, str]) -> dict[str, str]:
    """What the job needs from the submitting shell, never a secret (sbatch passes the rest of the environment
    along by itself, but a requeued job must not depend on what a shell looked like at submission)."""
    names = [n for n in environ if n in _EXPORT_NAMES or (n.startswith("PLM_") and n not in ("PLM_RUN_DIR", GRACE_ENV))]
    return {n: environ[n] for n in sorted(names) if not _SECRET.search(n)}


def requeue_grace(signal_lead: int) -> int:
    return signal_lead - 20 if signal_lead > 40 else max(1, signal_lead // 2)


def render_script(
    *,
    run_dir: Path,
    name: str,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int,
    time_limit: str,
    signal_lead: int,
    workdir: Path,
    python: str,
    partition: Optional[str] = None,
    account: Optional[str] = None,
    cpus_per_task: Optional[int] = None,
    mem: Optional[str] = None,
    environ: Optional[dict[str, str]] = None,
    seeds: Optional[Sequence[int]] = None,
) -> str:
    """The batch script. With ``seeds``: a job array, one task per seed (the task id is the seed), each the run in
    ``run_dir/seed-<id>`` with its own config.yaml, log ``run_dir/slurm/<array job>_<seed>.out`` and requeues."""
    log = run_dir / "slurm" / ("%A_%a.out" if seeds else "%j.out")
    what = f"the runs in {run_dir}/seed-<task id>" if seeds else f"the run in {run_dir}"
    lines = [
        "#!/bin/bash",
        f"# Written by plm-slurm for {what}. Every start of a job (the first and each requeue)",
        "# continues that run from its newest checkpoint: resume=auto, same run.dir, same W&B run id.",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        # One task per device, by --ntasks-per-node: that is what Lightning's SLURM detection checks.
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
    ]
    if gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{gpus_per_node}")
    if cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={cpus_per_task}")
    if mem:
        lines.append(f"#SBATCH --mem={mem}")
    lines.append(f"#SBATCH --time={time_limit}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    lines += [
        f"#SBATCH --signal=SIGUSR1@{signal_lead}",
        "#SBATCH --requeue",
        *([f"#SBATCH --array={','.join(str(int(x)) for x in seeds)}"] if seeds else []),
        "#SBATCH --open-mode=append",  # a requeued start appends to the same log
        f"#SBATCH --output={log}",
        f"#SBATCH --error={log}",
        f"#SBATCH --chdir={workdir}",
        "",
    ]
    for key, value in (environ or {}).items():
        lines.append(f"export {key}={shlex.quote(value)}")
    # How long the job may wait for the epoch to end after SIGUSR1 before it requeues anyway (read by
    # plm_lightning.callbacks.slurm_requeue): ahead of the time limit by a margin for the requeue itself.
    lines.append(f"export {GRACE_ENV}={requeue_grace(signal_lead)}")
    if seeds:
        # The folder is quoted for the shell and the task id expanded by it: '<run_dir>'/seed-"${SLURM_ARRAY_TASK_ID}"
        folder = f'{shlex.quote(str(run_dir))}/seed-"${{SLURM_ARRAY_TASK_ID}}"'
        job = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        config, run_dir_arg = (
            f"{folder}/config.yaml",
            f"{shlex.quote('run.dir=' + str(run_dir))}/seed-" + '"${SLURM_ARRAY_TASK_ID}"',
        )
    else:
        job = "${SLURM_JOB_ID}"
        config, run_dir_arg = shlex.quote(str(run_dir / "config.yaml")), shlex.quote("run.dir=" + str(run_dir))
    lines += [
        f'echo "plm-slurm: job {job} start ${{SLURM_RESTART_COUNT:-0}} on $(hostname) at $(date -Is)"',
        # exec: srun replaces bash, so no bash parent stands between SLURM's signals and the training processes
        f"exec srun {shlex.quote(python)} -m plm_lightning.cli.fit --config {config} resume=auto {run_dir_arg}",
        "",
    ]
    return "\n".join(lines)


def _check_plain(flag: str, value: Optional[str], pattern: re.Pattern = _PLAIN) -> None:
    if value is not None and not pattern.match(value):
        raise RequestError(f"{flag} {value!r} is not a plain SLURM value")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    cfg = config_or_none(PROG, args.config, overrides)
    if cfg is None:
        return 2
    try:
        seconds = parse_time(args.time)
        if args.signal_lead < 1:
            raise RequestError(f"--signal-lead must be at least 1 second, got {args.signal_lead}")
        if seconds <= args.signal_lead:
            raise RequestError(f"--time {args.time} is not longer than --signal-lead {args.signal_lead} s")
        _check_plain("--partition", args.partition)
        _check_plain("--account", args.account)
        _check_plain("--mem", args.mem, _MEM)
        if args.cpus_per_task is not None and args.cpus_per_task < 1:
            raise RequestError(f"--cpus-per-task must be at least 1, got {args.cpus_per_task}")
        cfg = apply_request(cfg, args)
    except RequestError as exc:
        return fail(PROG, str(exc))
    cwd = Path.cwd()
    run_dir = resolve_run_dir(cfg, cwd)
    # `resume` belongs to each start of the job (always auto), not to the run: as in plm-fit's own config.yaml.
    cfg = stored_config(OmegaConf.merge(cfg, {"run": {"dir": str(run_dir)}}))
    runs = {run_dir: cfg}  # run folder -> its config
    if args.seeds:
        from plm_lightning.config.loading import override_config

        runs = {}
        for seed in args.seeds:
            folder, values = seed_run(cfg, run_dir, seed)
            runs[folder] = stored_config(override_config(cfg, values=values, source="--seeds"))
    gpus = args.gpus_per_node or 0
    script = render_script(
        run_dir=run_dir,
        name=job_name(cfg, run_dir),
        nodes=args.nodes,
        tasks_per_node=cfg.trainer.devices,
        gpus_per_node=gpus,
        time_limit=args.time,
        signal_lead=args.signal_lead,
        workdir=cwd,
        python=sys.executable,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        environ=exported_environment(dict(os.environ)),
        seeds=args.seeds,
    )
    if args.dry_run:
        print(script, end="")
        return 0
    if shutil.which("sbatch") is None:
        return fail(PROG, "sbatch not found on PATH (is this a SLURM login node?); --dry-run prints the script")
    for folder, run_cfg in runs.items():
        if (folder / "config.yaml").exists():
            print(
                f"{PROG}: {folder} already holds a run; the job continues it from its newest checkpoint",
                file=sys.stderr,
            )
        # The merged config is in the run directory before the job exists, so every start reads the same one.
        atomic_write_text(folder / "config.yaml", to_yaml(run_cfg))
    script_path = run_dir / "slurm" / SCRIPT_NAME
    atomic_write_text(script_path, script)
    result = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        return fail(PROG, f"sbatch exited {result.returncode}: {detail[-1] if detail else 'no output'}")
    job_id = result.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        return fail(PROG, f"cannot read a job id in sbatch's output {result.stdout.strip()!r}")
    if args.seeds:
        seeds = ",".join(map(str, args.seeds))
        print(f"submitted job array {job_id} (seeds {seeds}, one task each)")
        print(f"run dirs: {run_dir}/seed-{{{seeds}}}")
        print(f"logs:     {run_dir / 'slurm' / (job_id + '_<seed>.out')}")
        print(f"then:     plm-report {run_dir}")
        return 0
    print(f"submitted job {job_id}")
    print(f"run dir: {run_dir}")
    print(f"log:     {run_dir / 'slurm' / (job_id + '.out')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
