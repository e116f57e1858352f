"""What every entry point shares: loading the config, or one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from typing import Sequence

from omegaconf import DictConfig

from plm_lightning.config import ConfigError, load_config


def fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def config_or_none(prog: str, config: str, overrides: Sequence[str], check_data: bool = True) -> DictConfig | None:
    """The validated config, or None after printing the one-line error (callers return 2)."""
    try:
        return load_config(config, overrides, check_data=check_data)
    except ConfigError as exc:
        fail(prog, str(exc))
        return None
