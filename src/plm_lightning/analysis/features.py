"""Features of the training split for analyses: raw inputs, the untrained network, or a checkpoint's teacher."""

from __future__ import annotations

from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.manifold.similarity import teacher_space
from plm_lightning.models.build import build_model
from plm_lightning.models.embedding_module import EmbeddingModule
from plm_lightning.models.embedding_pass import embed_loader
from plm_lightning.utils.checkpoint_io import load_checkpoint_file

FEATURES = ("raw", "initial", "checkpoint")


def build_module(cfg: DictConfig) -> tuple[EmbeddingModule, RetrievalDataModule]:
    """The module and DataModule (set up) of ``cfg``, with the initial network that plm-fit would start from."""
    torch.manual_seed(cfg.run.seed)
    module, datamodule = build_model(cfg)
    datamodule.setup("fit")
    return module, datamodule


def raw_features(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(the inputs as flat float vectors N x D, labels N) of everything the loader yields, in its order."""
    feats, labels = [], []
    for images, y, _ in loader:
        feats.append(images.reshape(images.shape[0], -1).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def training_features(
    cfg: DictConfig, features: str, ckpt: Optional[str] = None, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings N x d, labels N) of the training split, in dataset order, normalised as the teacher's are."""
    if features not in FEATURES:
        raise ValueError(f"--features must be one of {', '.join(FEATURES)}, got {features!r}")
    module, datamodule = build_module(cfg)
    dataset = datamodule.train_eval_set
    if features == "raw":
        emb, lab = raw_features(DataLoader(dataset, batch_size=cfg.data.loader.eval_batch_size, shuffle=False))
    else:
        if features == "checkpoint":
            if ckpt is None:
                raise ValueError("--features checkpoint needs --ckpt PATH")
            state: dict[str, Any] = load_checkpoint_file(ckpt)
            module.load_state_dict(state["state_dict"])
        module.to(device)
        network = getattr(module, "teacher", module.student)  # the supervised reference has no teacher
        _, emb, lab = embed_loader(network, datamodule.train_embedding_dataloader(), torch.device(device))
    return teacher_space(emb, cfg.method.teacher.normalize).cpu(), lab.cpu()
