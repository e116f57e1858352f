"""SLURM auto-requeue at an epoch boundary, so that a requeued job resumes exactly.

Lightning's own handler (SLURMEnvironment(auto_requeue=True)) saves ``hpc_ckpt_N.ckpt`` from inside the SIGUSR1
handler, wherever the signal lands: possibly between the optimiser step and the EMA teacher update of a batch, and
always in the middle of an epoch, which Lightning resumes by restarting the epoch's data iterator (the batches
already seen are seen again). Neither is an exact resume. Here the signal only sets a flag; at the end of the
training epoch (after the evaluation and last.ckpt) every rank agrees, ``hpc_ckpt_N.ckpt`` is saved in
``default_root_dir`` (the run dir, where resume=auto and Lightning's own hpc lookup find it), rank 0 runs
``scontrol requeue``, and training stops. Should the epoch not end in time (``grace_s`` after the signal), rank 0
requeues anyway: the restart then continues from last.ckpt, exactly, losing only the unfinished epoch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

GRACE_ENV = "PLM_SLURM_REQUEUE_GRACE"


def slurm_job_id() -> Optional[str]:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


# A Checkpoint subclass because Lightning runs checkpoint callbacks after all others, in the order given: placed
# after the ModelCheckpoints, this one sees the epoch's evaluation and last.ckpt already done.
class SlurmRequeue(Checkpoint):
    def __init__(self, grace_s: Optional[float] = None, signum: int = signal.SIGUSR1):
        self.grace_s = grace_s if grace_s is not None else float(os.environ.get(GRACE_ENV, 60))
        self.signum = signum
        self.signalled_at: Optional[float] = None
        self._requeued = False

    # A callback's setup runs before Lightning registers its own signal handlers; with auto_requeue=False (see
    # experiment.build) Lightning registers none for SIGUSR1 and keeps this one.
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            signal.signal(self.signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
            # print, not logging: a signal handler must not take the logging lock the interrupted code may hold
            print(f"plm: received signal {signum}: checkpointing at the end of this epoch, then requeueing", flush=True)

    def _requeue(self) -> bool:
        job_id = slurm_job_id()
        if job_id is None or not re.fullmatch(r"[0-9_]+", job_id):
            rank_zero_warn(f"cannot requeue: no valid SLURM job id ({job_id!r})")
            return False
        # Said before, not after: SLURM stops this job as soon as it accepts the requeue, and may terminate
        # scontrol with it (SIGTERM) before scontrol reports success; a busy node made that race visible.
        print(f"plm: requeueing SLURM job {job_id}", flush=True)
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode not in (0, -signal.SIGTERM):
            rank_zero_warn(f"scontrol requeue {job_id} failed ({result.returncode}): {result.stderr.strip()}")
            return False
        self._requeued = True
        return True

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        # Rank 0 alone decides on the fallback (no collective per batch): SLURM then stops every rank.
        if (
            self.signalled_at is not None
            and not self._requeued
            and trainer.is_global_zero
            and time.monotonic() - self.signalled_at > self.grace_s
        ):
            print(
                f"plm: the epoch did not end within {self.grace_s:.0f} s of the signal; requeueing now, "
                "the restart continues from the last epoch's checkpoint",
                flush=True,
            )
            self._requeue()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank must take the same branch (saving a checkpoint is collective): any rank signalled counts.
        signalled = trainer.strategy.reduce_boolean_decision(self.signalled_at is not None, all=False)
        if not signalled or self._requeued:
            return
        if trainer.current_epoch + 1 >= trainer.max_epochs:
            rank_zero_info("plm: requeue signal in the last epoch: finishing instead of requeueing")
            return
        connector = trainer._checkpoint_connector
        path = connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        rank_zero_info(f"plm: saved {path}")
        ok = False
        if trainer.is_global_zero:
            for old in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                if str(old) != str(path):
                    old.unlink(missing_ok=True)  # the newest one is all a restart needs
            ok = self._requeue()
        if trainer.strategy.broadcast(ok, src=0):
            trainer.should_stop = True  # SLURM is about to stop the job; end cleanly if it is not first
        else:
            self.signalled_at = None  # not requeued: keep training until the time limit
