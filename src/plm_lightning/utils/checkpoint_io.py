"""Checkpoint I/O: atomic saves, and loads that never unpickle code (torch.load(weights_only=True))."""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from plm_lightning.utils.io import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        # Serialised in memory first, then written by Python: a full disk is an OSError naming its errno (torch's
        # own file writer reports it as a RuntimeError without one), and the temporary file is removed.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())

        atomic_write(path, write)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_checkpoint_file(path, map_location)


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read as plain data. One line naming the file and the reason; it never
    suggests loading the file with code execution allowed."""


def load_checkpoint_file(path, map_location: Optional[Any] = "cpu") -> dict[str, Any]:
    """A checkpoint as plain data (torch.load(weights_only=True)). A file that needs arbitrary unpickling is
    refused, not executed; an empty, truncated or foreign file is a CheckpointFileError."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise CheckpointFileError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise CheckpointFileError(f"cannot load checkpoint {path}: the file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch's own message advises weights_only=False, i.e. running the file's code: never repeat that. It
        # names a blocked GLOBAL when the file calls code; other failures are bytes that are no pickle it reads.
        if "GLOBAL" in str(exc) or "global" in str(exc):
            raise CheckpointFileError(
                f"refusing checkpoint {path}: it holds Python objects that need code to load; "
                f"checkpoints are read as plain data only"
            ) from None
        raise CheckpointFileError(
            f"cannot load checkpoint {path}: truncated, corrupt or not a torch checkpoint "
            f"(not a pickle that plain-data loading reads)"
        ) from None
    except Exception as exc:  # truncated zip, a text file, another pickle protocol ...
        raise CheckpointFileError(
            f"cannot load checkpoint {path}: truncated, corrupt or not a torch checkpoint ({type(exc).__name__})"
        ) from None


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold NaN or inf (a diverged run's weights)."""
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def require_finite(state_dict: dict[str, Any], source: str) -> None:
    """CheckpointFileError (one line) when weights hold NaN or inf: such a model embeds everything as NaN."""
    bad = non_finite_tensors(state_dict)
    if bad:
        raise CheckpointFileError(
            f"{source}: {len(bad)} weight tensor{'s' if len(bad) > 1 else ''} hold NaN or inf "
            f"(e.g. {bad[0]}): the run diverged; use an earlier checkpoint"
        )
