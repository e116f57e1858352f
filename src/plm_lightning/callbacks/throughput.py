"""Training throughput, to show whether loading images limits training.

Per epoch: ``train/images_per_sec`` (images over the wall time from the first batch's start to the last batch's end,
measured on this process and multiplied by the world size) and ``train/data_wait_fraction`` (the share of that time
spent between one batch's end and the next batch's start: waiting for the loader, plus any per-batch hooks after
ours). A fraction near 1 means the GPU waits for data: raise data.loader.num_workers / prefetch_factor. Work
before the first batch (the teacher's embedding pass, starting the workers) is excluded.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


def _batch_size(batch: Any) -> int:
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(images.shape[0]) if isinstance(images, torch.Tensor) else 0


class Throughput(L.Callback):
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.images = 0
        self.wait = 0.0
        self.first_start: Optional[float] = None
        self.last_end: Optional[float] = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self.first_start is None:
            self.first_start = now
        elif self.last_end is not None:
            self.wait += now - self.last_end
        self.images += _batch_size(batch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Asynchronous GPU work would otherwise count as waiting for the next batch; one sync per step is cheap.
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.first_start is None or self.last_end is None:
            return  # no batch this epoch
        elapsed = self.last_end - self.first_start
        if not elapsed > 0 or not math.isfinite(elapsed):
            return
        images_per_sec = self.images * trainer.world_size / elapsed
        wait_fraction = min(1.0, max(0.0, self.wait / elapsed))
        # sync_dist: the mean over ranks (every rank reaches this hook); a no-op on one process.
        pl_module.log("train/images_per_sec", images_per_sec, on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("train/data_wait_fraction", wait_fraction, on_step=False, on_epoch=True, sync_dist=True)
        rank_zero_info(
            f"epoch {trainer.current_epoch}: {images_per_sec:.1f} images/s (all processes), "
            f"{100 * wait_fraction:.0f}% of step time waiting for data"
        )
