"""Typed configuration: schema, loading with overrides, validation."""

from plm_lightning.config.loading import (
    ConfigError,
    load_config,
    override_config,
    parse_overrides,
    resolve_config_path,
    to_yaml,
)
from plm_lightning.config.schema import Config

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "override_config",
    "parse_overrides",
    "resolve_config_path",
    "to_yaml",
]
