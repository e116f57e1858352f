"""The LightningModule: composes the student embedder, its EMA teacher, the proxy manifold and the PLM loss.

One training step (docs/architecture.md): images -> student embeddings z and teacher embeddings x -> pieces of x ->
similarities (point-point, point-proxy) -> loss -> optimiser step -> EMA update of the teacher. Once per epoch (or
every ``data.sampler.refresh_every`` epochs) the DataModule rebuilds its nearest-neighbour batches from the teacher's
embeddings of the whole training split (``embed_training_split``). Labels never reach this module's loss. It holds
no evaluation logic (callbacks do).
"""

from __future__ import annotations

from typing import Any

import torch

from plm_lightning.data.datamodule import NeighbourRefresh
from plm_lightning.data.transforms import flatten_views
from plm_lightning.manifold import PLMLoss, ProxyManifold, ema_update_, make_teacher
from plm_lightning.manifold.similarity import teacher_space
from plm_lightning.models.derived import training_views
from plm_lightning.models.embedding_module import EmbeddingModule
from plm_lightning.models.embedding_pass import embed_loader, gather_by_index
from plm_lightning.models.similarity_estimator import build_similarity, derived_method_values


class PLMModule(EmbeddingModule):
    def __init__(self, config: dict[str, Any], in_channels: int):
        super().__init__(config, in_channels)
        cfg = self.cfg
        self.teacher = make_teacher(self.student)
        method = cfg.method
        derived = derived_method_values(cfg)
        self.proxies = (
            ProxyManifold(method.proxies.count, cfg.model.embedding_dim, method.plm.piece_dim)
            if method.proxies.count > 0
            else None
        )
        self.criterion = PLMLoss(
            build_similarity(cfg),
            delta=method.loss.delta,
            lambda_proxy=method.loss.lambda_proxy,
            lambda_nbhd=method.loss.lambda_nbhd,
            proxy_neighbours=derived["proxy_neighbours"],
            proxy_pairs=method.proxies.pairs,
            normalize_student=method.loss.normalize_student,
            normalize_teacher=method.teacher.normalize,
        )

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher always uses its averaged batch-norm statistics
        return self

    # --- nearest-neighbour batches (built by the DataModule from these embeddings) -------------------------------
    def _autocast(self):
        return self.trainer.precision_plugin.forward_context()

    @torch.no_grad()
    def embed_training_split(self, loader) -> torch.Tensor:
        """Teacher embeddings of the training split (``loader``: this rank's shard, eval transform), gathered from
        every rank in dataset order, in the teacher's space (normalised as the loss sees them)."""
        idx, emb, lab = embed_loader(self.teacher, loader, self.device, self._autocast)
        idx, emb, _ = gather_by_index(self.all_gather, self.trainer.world_size, idx, emb, lab)
        emb = teacher_space(emb, self.cfg.method.teacher.normalize)
        self.require_finite(**{"teacher's embeddings of the training split": emb})
        return emb

    @torch.no_grad()
    def on_neighbours_refreshed(self, refresh: NeighbourRefresh) -> None:
        if self.proxies is not None and not bool(self.proxies.initialized):
            # Same seed on every rank and identical gathered embeddings: identical proxies everywhere.
            generator = torch.Generator().manual_seed(self.cfg.run.seed)
            if self.cfg.method.proxies.init == "random":
                self.proxies.initialise_random_(generator)
            else:
                self.proxies.initialise_(refresh.embeddings.to(self.device), refresh.table.to(self.device), generator)

    # --- training ------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0]  # labels (batch[1]) are deliberately unused: the method is unsupervised
        if training_views(self.cfg) > 1:  # B x V x ... -> V * B items, one similarity over all of them
            images = flatten_views(images)
        z = self.student(images)
        with torch.no_grad():
            x = self.teacher(images)
        # Checked here: NaN in the teacher's embeddings would otherwise fail deep inside the pieces' eigh.
        self.require_finite(**{"student's embeddings": z, "teacher's embeddings": x})
        out = self.criterion(z, x, self.proxies)
        self.require_finite(loss=out["loss"])
        b = images.shape[0]
        logs = {f"train/{k}": v for k, v in out.items() if k != "s" and v.dim() == 0}
        logs["train/s_mean"] = out["s"].mean()
        if "s_proxy" in out:
            logs["train/s_proxy_mean"] = out["s_proxy"].mean()
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=b)
        self.log("loss", out["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=b, logger=False)
        # s goes out (detached) for diagnostics callbacks; the loss is what Lightning optimises.
        return {"loss": out["loss"], "s": out["s"].detach()}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        ema_update_(self.teacher, self.student, self.cfg.method.teacher.momentum)

    def extra_param_groups(self) -> list[dict[str, Any]]:
        if self.proxies is None:
            return []
        optim = self.cfg.optim
        return [
            {
                "params": list(self.proxies.parameters()),
                "lr": optim.proxy_lr if optim.proxy_lr is not None else optim.lr,
                "weight_decay": 0.0,
                "name": "proxies",
            }
        ]
