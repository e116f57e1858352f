"""Where a dataset's files live: ``data.root``, or ``$PLM_DATA/<dataset name>`` when that is null."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from plm_lightning.data.base import DatasetError

DATA_ENV = "PLM_DATA"


class RootUnsetError(DatasetError):
    """data.root is null and $PLM_DATA is not set."""


def resolve_root(name: str, root: Optional[str | os.PathLike]) -> Path:
    """``root`` (user-expanded) if given, else ``$PLM_DATA/<name>`` (cub -> $PLM_DATA/cub); RootUnsetError if
    neither."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    base = os.environ.get(DATA_ENV)
    if not base:
        raise RootUnsetError(
            f"data.root is null and ${DATA_ENV} is not set; set data.root=DIR, or export "
            f"{DATA_ENV}=DIR to keep datasets in DIR/<name> (here {DATA_ENV}/{name})"
        )
    return Path(base).expanduser() / name
