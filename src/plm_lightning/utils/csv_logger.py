"""Lightning's CSV logger with files that are never half-written.

Lightning's writer truncates ``metrics.csv`` and writes it again whenever a new metric name appears, and appends
rows in place otherwise: a full disk leaves the file empty or cut in the middle of a row, and it deletes an existing
file when it starts. Here every save rewrites the whole file atomically (a temporary sibling, then one rename), and
an existing ``metrics.csv`` is kept and continued (a resumed run appends to its own history).
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from plm_lightning.utils.io import atomic_write


class AtomicCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> _AtomicWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AtomicWriter(log_dir=self.log_dir)
        return self._experiment


class _AtomicWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        rows: list[dict[str, Any]] = []
        header: list[str] = []
        if os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, header = list(reader), list(reader.fieldnames or [])
        super().__init__(log_dir)  # Lightning's writer deletes an existing metrics.csv here ...
        self.rows = rows
        self.metrics_keys = header
        if rows:  # ... so it is written back at once: the history survives even if this run logs nothing
            self._write()

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self.rows.extend(self.metrics)
        self.metrics = []
        self._write()

    def _write(self) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.metrics_file_path, write)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        atomic_write(path, lambda tmp: save_hparams_to_yaml(tmp, self.hparams))
