"""The run directory: which checkpoint a run continues from, and the checks made before anything is written there.

A run never clobbers another: a folder that already holds a run is refused unless the run continues it
(``resume``) or replaces it (``run.overwrite=true``, which removes the old run's files first). A resume is checked
against the checkpoint's own config before anything changes. Stale temporaries of an interrupted write are removed.
Every refusal is a ``RunDirError``: one line naming the folder or file, and plm-fit exits with 2.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

# What a run writes into its folder (everything else in it is left alone, also by run.overwrite).
RUN_FILES = ("config.yaml", "metrics.json", "wandb_id.txt")
RUN_FOLDERS = ("checkpoints", "logs", "plots", "wandb", "slurm")
# Keys a resumed run may change: where and how it runs and logs, not what it computes.
RESUME_MAY_CHANGE = (
    "resume",
    "run.dir",
    "run.name",
    "run.overwrite",
    "trainer.stop_after_epochs",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "data.root",
    "data.loader",  # worker processes, prefetching, the evaluation batch size: speed, not results
    "model.pretrained",
    "model.weights",
    "eval.plots",
    "eval.memory_budget_mb",
    "eval.on_device",
    "eval.backend",
    "logger",
    "paper",  # the published numbers a config carries for plm-report: data, not part of the computation
)


def stored_config(cfg: DictConfig) -> DictConfig:
    """The config as a run's config.yaml records it: without how this invocation starts and stops (resume,
    run.overwrite, trainer.stop_after_epochs), so that it stays usable as --config (a rerun, plm-eval) and is the
    same file across the invocations of one run."""
    return OmegaConf.merge(cfg, {"resume": None, "run": {"overwrite": False}, "trainer": {"stop_after_epochs": None}})


def same_run_config(saved: Path, cfg: DictConfig) -> bool:
    """Whether the config.yaml at ``saved`` describes the run that ``cfg`` describes. Compared as values, with keys
    that a newer version added (absent from an older file) at their defaults, and knobs whose null means "the
    method's default" (data.augmentation.views) as what they resolve to."""
    import yaml

    from plm_lightning.config.loading import written_config
    from plm_lightning.models.derived import training_views

    def comparable(c: DictConfig) -> Any:
        values = OmegaConf.to_container(stored_config(c), resolve=True)
        values["data"]["augmentation"]["views"] = training_views(c)
        return values

    try:
        then = written_config(yaml.safe_load(saved.read_text(encoding="utf-8")) or {})
    except Exception:  # unreadable, or not a config of this version: not the same run
        return False
    return comparable(then) == comparable(cfg)


class RunDirError(ValueError):
    """A run that cannot start as asked. One line; plm-fit exits with 2."""


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Optional[str]:
    """The checkpoint that ``resume`` names: None (start fresh), a path, or for 'auto' the newest (by modification
    time) of run_dir/checkpoints/last.ckpt and the SLURM requeue checkpoints run_dir/hpc_ckpt_*.ckpt."""
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        return str(Path(cfg.resume).expanduser().resolve())
    candidates = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime))


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a run: a config, metrics, checkpoints or logs of one."""
    if not run_dir.is_dir():
        return False
    return (
        any((run_dir / f).exists() for f in RUN_FILES)
        or any(run_dir.glob("hpc_ckpt_*.ckpt"))
        or any((run_dir / d).is_dir() and any((run_dir / d).iterdir()) for d in ("checkpoints", "logs"))
    )


def remove_run(run_dir: Path) -> None:
    """Remove what a run writes into ``run_dir`` (RUN_FILES, RUN_FOLDERS, requeue checkpoints); nothing else."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob("hpc_ckpt_*.ckpt"):
        path.unlink()
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():
            shutil.rmtree(run_dir / name)


def clean_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` files that an interrupted atomic write (a kill during a checkpoint save) left in
    the run's folders; returns them. Only at the start of a run, when no write of this run is in flight."""
    removed = []
    for folder in (run_dir, *(run_dir / d for d in RUN_FOLDERS)):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                if path.is_file():
                    path.unlink()
                    removed.append(path)
    return removed


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def check_resume(cfg: DictConfig, ckpt_path: str) -> None:
    """The checkpoint loads as plain data and was written by a run of this config (RESUME_MAY_CHANGE aside)."""
    from plm_lightning.checkpoints import checkpoint_config  # torch: only here
    from plm_lightning.utils.checkpoint_io import CheckpointFileError, load_checkpoint_file

    try:
        state = load_checkpoint_file(ckpt_path)
    except CheckpointFileError as exc:
        raise RunDirError(f"resume={cfg.resume}: {exc}") from None
    try:
        saved = OmegaConf.to_container(checkpoint_config(state, ckpt_path), resolve=True)
    except ValueError as exc:
        raise RunDirError(f"resume={cfg.resume}: {exc}") from None
    now, then = _flat(OmegaConf.to_container(cfg, resolve=True)), _flat(saved)
    differ = sorted(k for k in set(now) | set(then) if not _may_change(k) and now.get(k) != then.get(k))
    if differ:
        shown = ", ".join(f"{k} ({then.get(k)!r} in the checkpoint, {now.get(k)!r} now)" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise RunDirError(
            f"resume={cfg.resume}: {ckpt_path} was written by another config: {shown}{more}; resume "
            f"with the run's own config.yaml, or start a new run.dir"
        )


def check_writable(run_dir: Path) -> None:
    """``run_dir`` can be created and written: no file in its place or above it, and a file can be made in it (a
    read-only or full filesystem fails here). Leaves nothing behind: folders made for the probe are removed."""
    missing: list[Path] = []
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is a file" if parent == run_dir else f"is below {parent}, which is a file"
                raise RunDirError(f"invalid value for config key 'run.dir': {str(run_dir)!r} {where}")
            break
        missing.append(parent)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test.", suffix=".tmp") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as exc:
        raise RunDirError(
            f"invalid value for config key 'run.dir': {str(run_dir)!r} cannot be written ({exc.strerror or exc})"
        ) from None
    finally:
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass


def check_start(cfg: DictConfig, run_dir: Path, *, is_global_zero: bool = True) -> Optional[str]:
    """Every check of a run's start, made before anything is written or removed; returns the checkpoint to resume
    from (or None). The folder checks are the global-zero process's (other ranks of a DDP run start after it has
    written the run's config)."""
    ckpt = resume_checkpoint(cfg, run_dir)
    if ckpt is not None:
        if not Path(ckpt).is_file():
            raise RunDirError(f"resume={cfg.resume}: checkpoint file {ckpt} does not exist")
        check_resume(cfg, ckpt)
    if is_global_zero:
        if cfg.resume is None and holds_run(run_dir) and not cfg.run.overwrite:
            raise RunDirError(
                f"run.dir {run_dir} already holds a run; continue it with resume=auto, choose another "
                f"run.dir, or replace it with run.overwrite=true"
            )
        check_writable(run_dir)
    return ckpt


def begin(cfg: DictConfig, run_dir: Path) -> None:
    """Once the run can start (global zero only): remove the run being replaced (run.overwrite) and the stale
    temporaries of interrupted writes."""
    if cfg.resume is None and cfg.run.overwrite and holds_run(run_dir):
        remove_run(run_dir)
    clean_stale_temporaries(run_dir)
