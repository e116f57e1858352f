"""Stop a run cleanly after N epochs of this invocation, without changing ``trainer.max_epochs`` (and hence the
learning-rate schedule): the run can later continue with ``resume=auto`` exactly as if it had never stopped.
Useful for chunking a long run into jobs shorter than a cluster's time limit."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopAfterEpochs(Callback):
    def __init__(self, epochs: int):
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        self.epochs = epochs
        self._done = 0  # epochs completed by this invocation (deliberately not checkpointed)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done += 1
        if self._done >= self.epochs:
            trainer.should_stop = True
