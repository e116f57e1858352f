"""The throughput callback: images/s and the share of step time spent waiting for data, logged once per epoch."""

import logging
import math
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from plm_lightning.callbacks.throughput import Throughput
from plm_lightning.config import load_config


class SlowImages(Dataset):
    """Loading takes time, so that the wait fraction is clearly above 0."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        time.sleep(0.005)
        return torch.randn(3, 4, 4), i % 3, i


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(48, 4)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0].flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_logs_positive_finite_rate_and_wait_fraction(tmp_path, caplog):
    throughput = Throughput()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
        default_root_dir=str(tmp_path),
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(Tiny(), DataLoader(SlowImages(), batch_size=4))
    metrics = trainer.logged_metrics
    rate = float(metrics["train/images_per_sec"])
    wait = float(metrics["train/data_wait_fraction"])
    assert math.isfinite(rate) and rate > 0
    assert 0 < wait <= 1  # 4 x 5 ms of loading per batch against a tiny linear step
    assert throughput.images == 12  # the last epoch's count
    lines = [r.getMessage() for r in caplog.records if "images/s" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("epoch 0:") and "waiting for data" in lines[0]


def test_registered_in_every_run(tmp_path):
    from plm_lightning.experiment import build

    cfg = load_config("digits.yaml", [f"run.dir={tmp_path / 'run'}", "logger.csv=false"])
    trainer = build(cfg)[0]
    assert sum(isinstance(c, Throughput) for c in trainer.callbacks) == 1
