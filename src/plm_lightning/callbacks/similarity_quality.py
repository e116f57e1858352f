"""Logs, each epoch, how well the training similarity agrees with the true classes (purity@k, Pearson r).

A diagnostic: it reads the labels of the training batches, which the LightningModule itself never looks at, and it
sees only the (detached) similarity matrix that the loss already used. Under DDP the raw sums are added across
ranks before the numbers are formed, so they equal a single process's numbers over the same batches.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from plm_lightning.manifold.quality import SimilarityQuality


class SimilarityQualityMonitor(Callback):
    def __init__(self, purity_k: int = 5):
        self.quality = SimilarityQuality(k=purity_k)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.quality.reset()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if isinstance(outputs, dict) and "s" in outputs:
            labels = batch[1]
            views = outputs["s"].shape[0] // max(1, labels.shape[0])
            # data.augmentation.views > 1: the similarity covers every view, view-major (flatten_views)
            self.quality.update(outputs["s"], labels.repeat(views) if views > 1 else labels)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sums = self.quality.sums.to(pl_module.device)
        if trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        self.quality.sums = sums.cpu()
        if self.quality.sums[1] == 0:
            return
        numbers = self.quality.compute()
        pl_module.log_dict({f"simquality/{k}": float(v) for k, v in numbers.items()}, on_epoch=True, sync_dist=False)
