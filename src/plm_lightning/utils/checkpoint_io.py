"""Checkpoint I/O: atomic saves, and loads that never unpickle code (torch.load(weights_only=True))."""
from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from plm_lightning.utils.io import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_checkpoint_file(path, map_location)


def load_checkpoint_file(path, map_location: Optional[Any] = "cpu") -> dict[str, Any]:
    """A checkpoint as plain data. A file that needs arbitrary unpickling is refused, not executed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError and friends
        raise ValueError(f"cannot load checkpoint {path} as plain data (weights_only=True): "
                         f"{str(exc).splitlines()[0]}") from None
