"""What every training method's LightningModule shares: the student embedder built from the config, the optimiser
and learning-rate schedule, and exact resume (the RNG states in every checkpoint; the DataModule keeps the batch
sampler's).

Subclasses: ``PLMModule`` (the method) and ``SupervisedModule`` (the labelled reference). A subclass adds its own
parameter groups (``extra_param_groups``) and, for nearest-neighbour batches, the embeddings they are built from
(``embed_training_split``, called by ``RetrievalDataModule.start_epoch``) and what follows a rebuild
(``on_neighbours_refreshed``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import OmegaConf

from plm_lightning.data.datamodule import NeighbourRefresh
from plm_lightning.models.head import build_embedder
from plm_lightning.utils.rng import collect_rng_states, set_rng_states


class TrainingDiverged(RuntimeError):
    """NaN or inf in a training step (a learning rate far too large, an exploding loss). One line naming the step;
    plm-fit exits with 2. Raised before the step's numbers reach anything that would fail less clearly."""


class EmbeddingModule(L.LightningModule):
    def __init__(self, config: dict[str, Any], in_channels: int, **hparams: Any):
        super().__init__()
        # A plain dict of primitives, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"config": config, "in_channels": in_channels, **hparams})
        cfg = OmegaConf.create(config)
        self.cfg = cfg
        model = cfg.model
        self.student = build_embedder(
            model.backbone,
            embedding_dim=model.embedding_dim,
            pooling=model.pooling,
            pretrained=model.pretrained,
            in_channels=in_channels,
            width=model.width,
            freeze_bn=bool(model.get("freeze_bn", False)),  # absent in older checkpoints
            weights=model.get("weights"),
        )
        # Set by on_load_checkpoint, applied at the start of the first resumed epoch (see on_train_epoch_start).
        self._resume_state: Optional[dict[str, Any]] = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)

    # --- per epoch -----------------------------------------------------------------------------------------------
    def embed_training_split(self, loader) -> torch.Tensor:
        """The embeddings nearest-neighbour batches are built from (PLM: the teacher's), for the DataModule."""
        raise NotImplementedError(f"{type(self).__name__} trains on random batches and embeds no training split")

    def on_neighbours_refreshed(self, refresh: NeighbourRefresh) -> None:
        """Called after the DataModule rebuilt its neighbour table (PLM: the first time, the proxies start there)."""

    def on_train_epoch_start(self) -> None:
        if self._resume_state is not None:
            # Restored here, not in on_load_checkpoint: this is the first point of the resumed run that has a
            # counterpart in the uninterrupted one (the checkpoint is written at the end of the previous epoch and
            # nothing draws random numbers in between), while Lightning does work of its own between loading and
            # here. The training loader has its own generator (RetrievalDataModule.train_dataloader): Lightning
            # creates its first iterator before this hook, and that would otherwise draw from the global RNG.
            state, self._resume_state = self._resume_state, None
            if state.get("rng") is not None:
                set_rng_states(state["rng"])
        # The DataModule owns the batching; this module supplies the embeddings it is built from.
        refresh = self.trainer.datamodule.start_epoch(self.trainer.current_epoch, self.embed_training_split)
        if refresh is not None:
            self.on_neighbours_refreshed(refresh)

    # --- checkpoints (exact resume) --------------------------------------------------------------------------------
    # The batch sampler's state is the DataModule's (its state_dict, which Lightning checkpoints); the RNG states
    # are the process's and travel here.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["plm_resume"] = {"rng": collect_rng_states()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resume_state = checkpoint.get("plm_resume")
        resume = self._resume_state or {}
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if "sampler_epoch" in resume and datamodule is not None and type(datamodule).__qualname__ not in checkpoint:
            # Checkpoints written before the DataModule held the batching state kept it here.
            batching = {"epoch": resume["sampler_epoch"]}
            if "neighbours" in resume:
                batching["neighbours"] = resume["neighbours"]
            datamodule.load_state_dict(batching)

    def require_finite(self, **tensors: torch.Tensor) -> None:
        """TrainingDiverged if any of the named tensors holds NaN or inf (the first such, in argument order).

        Called on every training step: one device-to-host read for all the tensors together, not one each."""
        finite = torch.stack([torch.isfinite(value).all() for value in tensors.values()]).cpu()
        for name, ok in zip(tensors, finite.tolist()):
            if not ok:
                raise TrainingDiverged(
                    f"training diverged: NaN or inf in the {name} at step {self.global_step} (epoch "
                    f"{self.current_epoch}); lower optim.lr (now {self.cfg.optim.lr:g}) or set "
                    f"trainer.gradient_clip_val"
                )

    # --- optimisation --------------------------------------------------------------------------------------------
    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups beyond the backbone and the head (PLM: the proxies)."""
        return []

    def configure_optimizers(self):
        optim = self.cfg.optim
        head_lr = optim.head_lr if optim.head_lr is not None else optim.lr
        groups = [
            {
                "params": list(self.student.backbone.parameters()),
                "lr": optim.lr,
                "weight_decay": optim.weight_decay,
                "name": "backbone",
            },
            {
                "params": list(self.student.head.parameters()),
                "lr": head_lr,
                "weight_decay": optim.weight_decay,
                "name": "head",
            },
            *self.extra_param_groups(),
        ]
        if optim.name == "adamw":
            optimizer = torch.optim.AdamW(groups)
        elif optim.name == "adam":
            optimizer = torch.optim.Adam(groups)
        else:
            optimizer = torch.optim.SGD(groups, momentum=optim.momentum)
        if optim.scheduler == "none" and optim.warmup_epochs == 0:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = optim.warmup_epochs * per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if optim.scheduler == "none":
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
