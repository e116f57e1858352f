"""The run's figures, as PNGs in ``RUN_DIR/plots/`` and as images in W&B when that logger is active.

- ``recall.png``: Recall@K (and MAP@R) against epoch, redrawn after every evaluation;
- ``retrieval_grid.png``: fixed test queries with their top-K results (green / red: same / different class), raw
  images (not the normalised tensors); skipped for vector datasets;
- ``similarity_hist.png``: the method's similarity (``build_similarity``) on nearest-neighbour batches of test
  embeddings, same-class vs different-class pairs;
- ``embeddings_pca.png``: the test embeddings projected on their first two principal components, by class.

Everything is drawn from what the evaluation already computed: its history, and the ``RetrievalResult`` of its last
evaluation, which it hands over (``RetrievalEvaluation.subscribe``) with the ranking the grid shows; only rank 0
draws. Labels are read here for display only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig

from plm_lightning.callbacks.retrieval_evaluation import RetrievalEvaluation
from plm_lightning.figures.run_figures import (
    embedding_projection,
    pair_similarities,
    query_choice,
    raw_image,
    recall_curve,
    retrieval_grid,
    same_class_histogram,
    save_figure,
)
from plm_lightning.models.similarity_estimator import build_similarity
from plm_lightning.retrieval import RetrievalResult

PLOTS_DIR = "plots"


class RunPlots(Callback):
    def __init__(
        self,
        cfg: DictConfig,
        evaluation: RetrievalEvaluation,
        run_dir: str,
        *,
        num_queries: int = 6,
        top_k: int = 8,
        max_similarity_batches: int = 20,
    ):
        self.cfg = cfg
        self.evaluation = evaluation
        self.out = Path(run_dir) / PLOTS_DIR
        self.num_queries = num_queries
        self.top_k = top_k
        self.max_similarity_batches = max_similarity_batches
        self.written: dict[str, Path] = {}
        self.last_result: Optional[RetrievalResult] = None
        evaluation.subscribe(self.on_evaluation)

    def on_evaluation(self, result: RetrievalResult) -> None:
        """After each evaluation (rank 0): keep its result for the test-split figures; redraw the Recall@K curve."""
        self.last_result = result
        if self.evaluation.history:
            try:
                self._recall()
            except Exception as exc:  # a figure is never worth losing a run
                rank_zero_warn(f"plots: could not draw recall.png: {type(exc).__name__}: {exc}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        try:
            if self.evaluation.history:
                self._recall()
            result = self.last_result or self._evaluate_here(trainer, pl_module)
            if result is not None and result.embeddings.shape[0] > 2:
                self._test_split_plots(trainer, result)
        except Exception as exc:  # a figure is never worth losing a finished run
            rank_zero_warn(f"plots: could not draw the run's figures: {type(exc).__name__}: {exc}")
            return
        self._log_wandb(trainer)

    # --- figures -------------------------------------------------------------------------------------------------
    def _save(self, name: str, fig) -> None:
        path = self.out / f"{name}.png"
        save_figure(fig, path)
        self.written[name] = path

    def _recall(self) -> None:
        self._save("recall", recall_curve(self.evaluation.history, self.evaluation.ks, self.evaluation.initial))

    def _evaluate_here(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Optional[RetrievalResult]:
        """Nothing evaluated in this invocation (e.g. resumed after the last epoch): embed the test split here."""
        from torch.utils.data import DataLoader

        from plm_lightning.models.embedding_pass import embed_loader

        test_set = trainer.datamodule.test_set
        if test_set is None:
            return None
        loader = DataLoader(test_set, batch_size=self.cfg.data.loader.eval_batch_size, shuffle=False)
        _, emb, lab = embed_loader(
            pl_module.student, loader, pl_module.device, trainer.precision_plugin.forward_context
        )
        query = getattr(test_set, "query_mask", None)
        return RetrievalResult(
            metrics={},
            embeddings=emb.cpu(),
            labels=lab.cpu(),
            query_mask=None if query is None else torch.as_tensor(query, dtype=torch.bool),
            normalize=bool(self.cfg.eval.normalize),
        )

    def _test_split_plots(self, trainer: L.Trainer, result: RetrievalResult) -> None:
        cfg = self.cfg
        emb, lab = result.embeddings.numpy(), result.labels.numpy()
        test_set = trainer.datamodule.test_set
        if test_set is not None and getattr(test_set, "augmentation", "") != "vector":
            candidates = np.arange(len(lab))
            if result.query_mask is not None:  # In-Shop: the grid shows queries searching the gallery
                candidates = np.flatnonzero(result.query_mask.numpy())
            queries = [int(candidates[i]) for i in query_choice(lab[candidates], self.num_queries)]
            _, found = result.search(queries, self.top_k)
            neighbours = [[int(j) for j in row if j >= 0] for row in found]
            grid = retrieval_grid(
                [raw_image(test_set.load(q)) for q in queries],
                [[raw_image(test_set.load(j)) for j in row] for row in neighbours],
                matches=[[bool(lab[j] == lab[q]) for j in row] for q, row in zip(queries, neighbours)],
                captions=[[f"{r + 1}: {lab[j]}" for r, j in enumerate(row)] for row in neighbours],
                query_captions=[f"query: {lab[q]}" for q in queries],
                title=f"{cfg.data.name} test split: top-{max(len(row) for row in neighbours)} (green = same class)",
            )
            self._save("retrieval_grid", grid)
        if cfg.method.name != "supervised":  # the supervised reference has no similarity estimator
            self._similarity_histogram(emb, lab)
        self._save("embeddings_pca", embedding_projection(emb, lab, title=f"{cfg.data.name} test embeddings (PCA)"))

    def _similarity_histogram(self, emb: np.ndarray, lab: np.ndarray) -> None:
        cfg = self.cfg
        name = "stml" if cfg.method.name == "stml" else cfg.method.similarity
        same, different, quality = pair_similarities(
            emb,
            lab,
            build_similarity(cfg),
            batch_size=cfg.data.sampler.batch_size,
            neighbours_per_seed=cfg.data.sampler.neighbours_per_seed,
            seed=cfg.run.seed,
            max_batches=self.max_similarity_batches,
            normalize=bool(cfg.method.teacher.normalize),
            backend=cfg.eval.backend,
        )
        self._save(
            "similarity_hist",
            same_class_histogram(
                same,
                different,
                quality=quality,
                title=f"{name} similarity on nearest-neighbour batches of test embeddings",
            ),
        )

    def _log_wandb(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger" or not self.written:
                continue
            try:
                import wandb

                images = {f"plots/{name}": wandb.Image(str(path)) for name, path in self.written.items()}
                logger.experiment.log({**images, "trainer/global_step": trainer.global_step})
            except Exception as exc:  # W&B trouble must not fail a finished run either
                rank_zero_warn(f"plots: could not log the figures to W&B: {type(exc).__name__}: {exc}")
