"""How a run's LightningModule and DataModule are built from its config: one place, used by plm-fit
(experiment.py), the analyses (features of the starting network) and plm-eval (a checkpoint's model)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.data.registry import DATASETS
from plm_lightning.models.derived import training_views
from plm_lightning.models.embedding_module import EmbeddingModule
from plm_lightning.models.head import backbone_input_channels, backbone_input_space
from plm_lightning.models.plm_module import PLMModule
from plm_lightning.models.stml_module import STMLModule
from plm_lightning.models.supervised_module import SupervisedModule


def build_model(cfg: DictConfig) -> tuple[EmbeddingModule, RetrievalDataModule]:
    """The module that ``method.name`` names (PLM, STML, or the supervised reference) and its DataModule
    (nearest-neighbour batches for PLM and STML, random batches for the supervised reference, views per image as
    models.derived.training_views resolves them). The supervised module needs the training split's classes, so the
    DataModule is set up here in that case; otherwise setup waits for the Trainer."""
    channels = backbone_input_channels(cfg.model.backbone, DATASETS[cfg.data.name].input_channels(cfg.data))
    supervised = cfg.method.name == "supervised"
    datamodule = RetrievalDataModule(
        cfg.data,
        backbone_channels=channels,
        input_space=backbone_input_space(cfg.model.backbone),
        seed=cfg.run.seed,
        sampling="random" if supervised else "neighbours",
        neighbour_backend=cfg.eval.backend,
        views=training_views(cfg),
    )
    container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    if supervised:
        datamodule.setup("fit")
        return SupervisedModule(container, in_channels=channels, class_ids=datamodule.train_set.class_ids), datamodule
    if cfg.method.name == "stml":
        return STMLModule(container, in_channels=channels), datamodule
    return PLMModule(container, in_channels=channels), datamodule
