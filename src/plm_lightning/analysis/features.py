"""Features of the training split for analyses: raw inputs, the untrained network, or a checkpoint's teacher."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.data.registry import DATASETS
from plm_lightning.models.embedding_pass import embed_loader
from plm_lightning.models.head import backbone_input_channels, backbone_input_space
from plm_lightning.models.plm_module import PLMModule
from plm_lightning.utils.checkpoint_io import load_checkpoint_file

FEATURES = ("raw", "initial", "checkpoint")


def build_module(cfg: DictConfig) -> tuple[PLMModule, RetrievalDataModule]:
    channels = backbone_input_channels(cfg.model.backbone, DATASETS[cfg.data.name].input_channels(cfg.data))
    torch.manual_seed(cfg.run.seed)  # the "initial" network is the one plm-fit would start from
    module = PLMModule(OmegaConf.to_container(cfg, resolve=True), in_channels=channels)
    datamodule = RetrievalDataModule(cfg.data, backbone_channels=channels,
                                     input_space=backbone_input_space(cfg.model.backbone), seed=cfg.run.seed)
    datamodule.setup("fit")
    return module, datamodule


@torch.no_grad()
def training_features(cfg: DictConfig, features: str, ckpt: Optional[str] = None,
                      device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings N x d, labels N) of the training split, in dataset order, normalised as the teacher's are."""
    if features not in FEATURES:
        raise ValueError(f"--features must be one of {', '.join(FEATURES)}, got {features!r}")
    module, datamodule = build_module(cfg)
    dataset = datamodule.train_eval_set
    if features == "raw":
        loader = DataLoader(dataset, batch_size=cfg.data.eval_batch_size, shuffle=False)
        feats, labels = [], []
        for images, y, _ in loader:
            feats.append(images.reshape(images.shape[0], -1).float())
            labels.append(y)
        emb, lab = torch.cat(feats), torch.cat(labels)
    else:
        if features == "checkpoint":
            if ckpt is None:
                raise ValueError("--features checkpoint needs --ckpt PATH")
            state: dict[str, Any] = load_checkpoint_file(ckpt)
            module.load_state_dict(state["state_dict"])
        module.to(device)
        _, emb, lab = embed_loader(module.teacher, datamodule.train_embedding_dataloader(), torch.device(device))
    if cfg.method.normalize_teacher:
        emb = F.normalize(emb, dim=1)
    return emb.cpu(), lab.cpu()
