"""STML (Kim et al., CVPR 2022) as a LightningModule on the same training path as PLM (docs/stml.md): the same
DataModule and nearest-neighbour batches, evaluation, checkpoints, resume, DDP and SLURM.

The student is the backbone with two linear heads on its pooled features: the target embedding f
(``model.embedding_dim``, the one evaluated and exported: ``self.student``) and the larger auxiliary embedding g
(``method.stml.auxiliary_dim``). The EMA teacher is the backbone with the g head; its embeddings give the
contextualised similarity W that the relaxed contrastive loss regresses both heads onto, and f distils g's
distance distribution. Each image comes as ``views`` augmented views (STML: 2), all in one similarity.
"""

from __future__ import annotations

from typing import Any

import torch

from plm_lightning.data.transforms import flatten_views
from plm_lightning.manifold import ema_update_, make_teacher
from plm_lightning.manifold.similarity import teacher_space
from plm_lightning.models.derived import stml_neighbours, training_views
from plm_lightning.models.embedding_module import EmbeddingModule
from plm_lightning.models.embedding_pass import embed_loader, gather_by_index
from plm_lightning.models.head import Embedder, EmbeddingHead
from plm_lightning.stml import STMLLoss


class STMLModule(EmbeddingModule):
    def __init__(self, config: dict[str, Any], in_channels: int):
        super().__init__(config, in_channels)
        cfg = self.cfg
        stml = cfg.method.stml
        self.auxiliary_head = EmbeddingHead(self.student.head.linear.in_features, stml.auxiliary_dim, cfg.model.pooling)
        # [ours] The teacher starts as a copy of the student's backbone and g head (STML's code gives the teacher a g
        # head of its own random orthogonal initialisation; both are isometries of the pooled features, so the
        # teacher's distances start the same either way, and the copy keeps the EMA an average of one network).
        self.teacher = make_teacher(self._auxiliary_network())
        self.views = training_views(cfg)
        self.criterion = STMLLoss(
            sigma=stml.sigma,
            delta=stml.delta,
            k=stml_neighbours(cfg),
            kl_temperature=stml.kl_temperature,
            lambda_kl=stml.lambda_kl,
            normalize_student=stml.normalize_student,
        )

    def _auxiliary_network(self) -> Embedder:
        """The student's backbone with the g head (shares their parameters; not registered as a submodule)."""
        net = Embedder(self.student.backbone, self.auxiliary_head, freeze_bn=self.student.freeze_bn)
        return net.train(self.student.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher always uses its averaged batch-norm statistics (STML: teacher.eval())
        return self

    # --- nearest-neighbour batches ----------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_training_split(self, loader) -> torch.Tensor:
        """The embeddings the epoch's nearest-neighbour batches are built from: the student's g (STML's code: its
        auxiliary embedding, unnormalised, in eval mode) or the teacher's (method.stml.batches_from=teacher)."""
        from_teacher = self.cfg.method.stml.batches_from == "teacher"
        network = self.teacher if from_teacher else self._auxiliary_network()
        autocast = self.trainer.precision_plugin.forward_context
        idx, emb, lab = embed_loader(network, loader, self.device, autocast)
        idx, emb, _ = gather_by_index(self.all_gather, self.trainer.world_size, idx, emb, lab)
        if from_teacher:
            emb = teacher_space(emb, self.cfg.method.teacher.normalize)
        self.require_finite(**{"embeddings of the training split": emb})
        return emb

    # --- training ----------------------------------------------------------------------------------------------------
    def loss_terms(self, images: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """STML's loss on one batch (B images, or B x V views) with their dataset indices: items with one index are
        views of one image (and copies of an image that two seeds brought into the batch), as in STML's code."""
        if self.views > 1:  # B x V x ... -> V * B items, view-major
            images = flatten_views(images)
            indices = indices.repeat(self.views)
        features = self.student.backbone(images)
        f, g = self.student.head(features), self.auxiliary_head(features)
        with torch.no_grad():
            t = teacher_space(self.teacher(images), self.cfg.method.teacher.normalize)
        self.require_finite(**{"student's embeddings": f, "student's auxiliary embeddings": g, "teacher's": t})
        return self.criterion(f, g, t, indices[:, None] == indices[None, :])

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images, indices = batch[0], batch[2]  # labels (batch[1]) are deliberately unused: unsupervised
        out = self.loss_terms(images, indices)
        self.require_finite(loss=out["loss"])
        n = out["s"].shape[0]
        logs = {f"train/{k}": v for k, v in out.items() if v.dim() == 0}
        logs["train/s_mean"] = out["s"].mean()
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=n)
        self.log("loss", out["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=n, logger=False)
        return {"loss": out["loss"], "s": out["s"]}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        m = self.cfg.method.teacher.momentum
        ema_update_(self.teacher.backbone, self.student.backbone, m)
        ema_update_(self.teacher.head, self.auxiliary_head, m)

    def extra_param_groups(self) -> list[dict[str, Any]]:
        optim = self.cfg.optim
        return [
            {
                "params": list(self.auxiliary_head.parameters()),
                "lr": optim.head_lr if optim.head_lr is not None else optim.lr,
                "weight_decay": optim.weight_decay,
                "name": "auxiliary_head",
            }
        ]
