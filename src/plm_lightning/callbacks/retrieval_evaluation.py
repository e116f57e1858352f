"""Zero-shot retrieval evaluation on the test split: before training and after every N epochs.

test loader (sharded by rank) -> student embeddings with dataset indices -> gather across ranks -> drop duplicate
indices -> retrieval core on rank 0, on the training device (same-set; or query -> gallery where the dataset has a
``query_mask``: In-Shop) -> the same numbers broadcast to every rank -> logger (``val/R@1`` ..., ``val/R@1_best``),
metrics.json in the run directory, and a Recall@K table at the end. On rank 0 each evaluation's
``RetrievalResult`` (the metrics and the embeddings they came from) goes to the subscribers (the run's figures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from plm_lightning.models.embedding_pass import embed_loader, gather_by_index
from plm_lightning.retrieval import RetrievalResult, evaluate_split, format_recall_table
from plm_lightning.utils.io import atomic_write_text, json_safe


class RetrievalEvaluation(Callback):
    def __init__(
        self,
        ks: Sequence[int],
        *,
        every_n_epochs: int = 1,
        before_training: bool = True,
        backend: str = "auto",
        normalize: bool = True,
        map_r: bool = True,
        nmi: bool = True,
        kmeans: str = "auto",
        memory_budget_mb: float = 512.0,
        seed: int = 0,
        run_dir: Optional[str] = None,
        monitor: str = "R@1",
        on_device: bool = True,
    ):
        self.ks = list(ks)
        self.every_n_epochs = every_n_epochs
        self.before_training = before_training
        self.options = {
            "backend": backend,
            "normalize": normalize,
            "map_r": map_r,
            "compute_nmi": nmi,
            "kmeans": kmeans,
            "memory_budget_mb": memory_budget_mb,
            "seed": seed,
        }
        self.run_dir = Path(run_dir) if run_dir else None
        self.monitor = monitor
        self.on_device = on_device
        self.initial: Optional[dict[str, float]] = None
        self.history: list[dict[str, Any]] = []
        self.best: Optional[dict[str, float]] = None
        self.best_epoch: Optional[int] = None
        # Called on rank 0 with every evaluation's result, after the history holds it (subscribe()).
        self._subscribers: list[Callable[[RetrievalResult], None]] = []

    def subscribe(self, receive: Callable[[RetrievalResult], None]) -> None:
        """``receive(result)`` after every evaluation, on rank 0 (where the result is computed); the history and
        the best metric already include it."""
        self._subscribers.append(receive)

    def check_split(self, dataset, name: str) -> None:
        """DatasetError (one line) when the test split cannot give the configured Recall@K: every query needs
        max(eval.ks) other items to rank (the gallery, where the split has separate queries)."""
        from plm_lightning.data.base import DatasetError

        query = getattr(dataset, "query_mask", None)
        n = len(dataset) - 1 if query is None else int((~torch.as_tensor(query, dtype=torch.bool)).sum())
        need = max(self.ks)
        if n < need or len(dataset) < 2:
            what = "items (each query ranks all the others)" if query is None else "gallery items"
            raise DatasetError(
                f"the {name} test split has {len(dataset)} items, so {max(n, 0)} {what}: Recall@{need} "
                f"needs at least {need}; lower eval.ks (now {self.ks}) or use more test data"
            )

    # --- computing -----------------------------------------------------------------------------------------------
    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[dict[str, float], Optional[RetrievalResult]]:
        """The metrics (the same on every rank) and, on rank 0, the result they came from (None elsewhere)."""
        loader = trainer.datamodule.test_embedding_dataloader()
        autocast = trainer.precision_plugin.forward_context
        idx, emb, lab = embed_loader(pl_module.student, loader, pl_module.device, autocast)
        idx, emb, lab = gather_by_index(pl_module.all_gather, trainer.world_size, idx, emb, lab)
        if hasattr(pl_module, "require_finite"):  # a diverged network: one clear line, not the metric's ValueError
            pl_module.require_finite(**{"embeddings of the test split": emb})
        metrics, result = None, None
        if trainer.is_global_zero:
            # On a GPU the exact rank engine is several times faster than on the CPU (docs/benchmarks.md), and its
            # tiles are bounded by eval.memory_budget_mb.
            device = pl_module.device if self.on_device else torch.device("cpu")
            emb, lab = emb.to(device), lab.cpu()
            query = getattr(trainer.datamodule.test_set, "query_mask", None)  # In-Shop: query -> gallery
            result = evaluate_split(emb, lab, self.ks, query_mask=query, **self.options)
            metrics = result.metrics
        # One computation, the same numbers on every rank.
        return trainer.strategy.broadcast(metrics, src=0), result

    def _publish(self, result: Optional[RetrievalResult]) -> None:
        if result is not None:
            for receive in self._subscribers:
                receive(result)

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or epoch >= (trainer.max_epochs or 0)

    # --- hooks ---------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.before_training and self.initial is None and trainer.current_epoch == 0:
            self.initial, result = self.evaluate(trainer, pl_module)
            # Logged at step 0, before any update, so curves start at the untrained network.
            for logger in trainer.loggers:
                logger.log_metrics({f"val/{k}": v for k, v in self.initial.items()} | {"epoch": -1}, step=0)
            rank_zero_info(f"initial (before training): {_one_line(self.initial)}")
            self._publish(result)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        metrics, result = self.evaluate(trainer, pl_module)
        epoch = trainer.current_epoch
        self.history.append({"epoch": epoch, **metrics})
        if self.best is None or metrics[self.monitor] > self.best[self.monitor]:
            self.best, self.best_epoch = dict(metrics), epoch
        logs = {f"val/{k}": v for k, v in metrics.items()}
        logs[f"val/{self.monitor}_best"] = self.best[self.monitor]
        # Identical on every rank already, so no reduction.
        pl_module.log_dict(logs, on_step=False, on_epoch=True, sync_dist=False)
        rank_zero_info(f"epoch {epoch}: {_one_line(metrics)}")
        self._write(trainer)
        self._publish(result)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)
        if trainer.is_global_zero and (self.initial or self.history):
            rows = {}
            if self.initial:
                rows["initial"] = self.initial
            if self.history:
                rows["final"] = {k: v for k, v in self.history[-1].items() if k != "epoch"}
                rows[f"best (epoch {self.best_epoch})"] = self.best
            print("\n" + format_recall_table_rows(rows), flush=True)

    # --- results -------------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        final = {k: v for k, v in self.history[-1].items() if k != "epoch"} if self.history else None
        return {
            "initial": self.initial,
            "final": final,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
        }

    def _write(self, trainer: L.Trainer) -> None:
        if self.run_dir is None or not trainer.is_global_zero:
            return
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(json_safe(self.summary()), indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial, "history": self.history, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial = state_dict.get("initial")
        self.history = list(state_dict.get("history", []))
        self.best = state_dict.get("best")
        self.best_epoch = state_dict.get("best_epoch")


def _one_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def format_recall_table_rows(rows: dict[str, dict[str, float]]) -> str:
    """One row per named result (initial / final / best), one column per metric."""
    lines = []
    width = max(len(name) for name in rows)
    for i, (name, metrics) in enumerate(rows.items()):
        table = format_recall_table(metrics).splitlines()
        if i == 0:
            lines.append(" " * (width + 2) + table[0])
        lines.append(name.ljust(width + 2) + table[-1])
    return "\n".join(lines)
