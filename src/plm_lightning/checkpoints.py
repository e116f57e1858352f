"""Reading a plm-fit checkpoint as data: the config it was trained with, and its trained student for inference.

A checkpoint is read with ``torch.load(weights_only=True)`` (utils.checkpoint_io); its ``hyper_parameters`` hold the
run's config as a plain dict, which is upgraded (keys that moved since, config.migration) and merged onto the
schema. Here, above both the config and the models layer, because it needs both.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from omegaconf import DictConfig

from plm_lightning.config.loading import written_config
from plm_lightning.models.inference import TrainedModel, trained_model
from plm_lightning.utils.checkpoint_io import load_checkpoint_file


def checkpoint_config(state: Any, where: str) -> DictConfig:
    """The config a plm-fit checkpoint (loaded state) was trained with; ValueError (one line) naming ``where``
    for a file that is not a plm-fit checkpoint, or whose config does not fit this version."""
    hp = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("config"), dict) or "state_dict" not in state:
        raise ValueError(f"{where}: not a plm-fit checkpoint (no config in its hyper_parameters, or no state_dict)")
    try:
        return written_config(hp["config"])
    except Exception as exc:  # a config from an incompatible version
        raise ValueError(f"{where}: its config does not fit this version: {str(exc).splitlines()[0]}") from None


def load_trained_model(ckpt: str | os.PathLike, device: Optional[str] = None) -> TrainedModel:
    """The student of a plm-fit checkpoint with its evaluation transform; ValueError (one line) for a file that is
    not one."""
    state: dict[str, Any] = load_checkpoint_file(ckpt)
    return trained_model(state, checkpoint_config(state, str(ckpt)), str(ckpt), device)
