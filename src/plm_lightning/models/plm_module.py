"""The LightningModule: composes the student embedder, its EMA teacher, the proxy manifold and the PLM loss.

One training step (docs/architecture.md): images -> student embeddings z and teacher embeddings x -> pieces of x ->
similarities (point-point, point-proxy) -> loss -> optimiser step -> EMA update of the teacher. Once per epoch (or
every ``data.refresh_every`` epochs) the teacher embeds the whole training split and the nearest-neighbour batch
sampler is rebuilt from it. Labels never reach this module's loss. It holds no evaluation logic (callbacks do).
"""

from __future__ import annotations

from typing import Any

import torch

from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.data.sampler import neighbour_table
from plm_lightning.data.transforms import flatten_views
from plm_lightning.manifold import PLMLoss, ProxyManifold, ema_update_, make_teacher
from plm_lightning.manifold.similarity import teacher_space
from plm_lightning.models.embedding_module import EmbeddingModule
from plm_lightning.models.embedding_pass import embed_loader, gather_by_index
from plm_lightning.models.similarity_estimator import build_similarity, derived_method_values


class PLMModule(EmbeddingModule):
    def __init__(self, config: dict[str, Any], in_channels: int):
        super().__init__(config, in_channels)
        cfg = self.cfg
        self.teacher = make_teacher(self.student)
        me = cfg.method
        derived = derived_method_values(cfg)
        self.proxies = (
            ProxyManifold(me.num_proxies, cfg.model.embedding_dim, me.piece_dim) if me.num_proxies > 0 else None
        )
        self.criterion = PLMLoss(
            build_similarity(cfg),
            delta=me.delta,
            lambda_proxy=me.lambda_proxy,
            lambda_nbhd=me.lambda_nbhd,
            proxy_neighbours=derived["proxy_neighbours"],
            proxy_pairs=me.proxy_pairs,
            normalize_student=me.normalize_student,
            normalize_teacher=me.normalize_teacher,
        )

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher always uses its averaged batch-norm statistics
        return self

    # --- nearest-neighbour batches -------------------------------------------------------------------------------
    def _autocast(self):
        return self.trainer.precision_plugin.forward_context()

    @torch.no_grad()
    def teacher_embeddings(self, datamodule: RetrievalDataModule) -> torch.Tensor:
        """Teacher embeddings of the whole training split (eval transform), in dataset order, on every rank."""
        loader = datamodule.train_embedding_dataloader()
        idx, emb, lab = embed_loader(self.teacher, loader, self.device, self._autocast)
        idx, emb, _ = gather_by_index(self.all_gather, self.trainer.world_size, idx, emb, lab)
        if idx.numel() != len(datamodule.train_eval_set):
            raise RuntimeError(f"teacher pass gathered {idx.numel()} of {len(datamodule.train_eval_set)} images")
        return teacher_space(emb, self.cfg.method.normalize_teacher)

    @torch.no_grad()
    def refresh_neighbours(self, datamodule: RetrievalDataModule) -> None:
        emb = self.teacher_embeddings(datamodule)
        self.require_finite(**{"teacher's embeddings of the training split": emb})
        table = neighbour_table(emb, self.cfg.data.neighbours_per_seed, backend=self.cfg.eval.backend)
        datamodule.batch_sampler.set_neighbours(table)
        if self.proxies is not None and not bool(self.proxies.initialized):
            # Same seed on every rank and identical gathered embeddings: identical proxies everywhere.
            generator = torch.Generator().manual_seed(self.cfg.run.seed)
            if self.cfg.method.proxy_init == "random":
                self.proxies.initialise_random_(generator)
            else:
                self.proxies.initialise_(emb.to(self.device), table.to(self.device), generator)

    def prepare_epoch(self, datamodule: RetrievalDataModule, epoch: int) -> None:
        if datamodule.batch_sampler.neighbours is None or epoch % self.cfg.data.refresh_every == 0:
            self.refresh_neighbours(datamodule)

    # --- checkpoints (exact resume) --------------------------------------------------------------------------------
    # The teacher and the proxies (with their ``initialized`` buffer) are submodules and travel in the state_dict.
    def extra_resume_state(self, sampler) -> dict[str, Any]:
        # The table is rebuilt from the teacher at the start of an epoch only every refresh_every epochs; in
        # between, a resumed run needs the table that the uninterrupted run still uses.
        if self.cfg.data.refresh_every > 1 and sampler.neighbours is not None:
            return {"neighbours": sampler.neighbours.clone()}
        return {}

    def restore_resume_state(self, state: dict[str, Any], sampler) -> None:
        if state.get("neighbours") is not None and sampler.neighbours is None:
            sampler.set_neighbours(state["neighbours"])

    # --- training ------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0]  # labels (batch[1]) are deliberately unused: the method is unsupervised
        if self.cfg.data.get("views", 1) > 1:  # B x V x ... -> V * B items, one similarity over all of them
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
        ema_update_(self.teacher, self.student, self.cfg.method.ema_momentum)

    def extra_param_groups(self) -> list[dict[str, Any]]:
        if self.proxies is None:
            return []
        o = self.cfg.optim
        return [
            {
                "params": list(self.proxies.parameters()),
                "lr": o.proxy_lr if o.proxy_lr is not None else o.lr,
                "weight_decay": 0.0,
                "name": "proxies",
            }
        ]
