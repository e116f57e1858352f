"""Loading a run's configuration: bundled or user YAML + command-line overrides, checked against the schema.

Every problem becomes a ``ConfigError`` with a one-line message that names the file or key and, for unknown keys
and choices, suggests close matches. Nothing runs before the whole config has been validated.
"""

from __future__ import annotations

import difflib
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from plm_lightning.config.migration import moved_key, upgrade
from plm_lightning.config.schema import Config


class ConfigError(ValueError):
    """A configuration problem, reported as one line."""


def bundled_configs() -> list[str]:
    """Names of the YAML configs that ship inside the package."""
    root = resources.files("plm_lightning") / "configs"
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name: str) -> Path:
    """A path to an existing file, or the name of a bundled config (with or without .yaml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    candidates = [name] if name.endswith((".yaml", ".yml")) else [name, name + ".yaml"]
    root = resources.files("plm_lightning") / "configs"
    for candidate in candidates:
        bundled = root / candidate
        if "/" not in candidate and bundled.is_file():
            return Path(str(bundled))
    available = bundled_configs()
    close = difflib.get_close_matches(Path(name).name, available, n=3, cutoff=0.5)
    hint = f"; did you mean {_quote_list(close)}?" if close else f"; bundled configs: {', '.join(available)}"
    raise ConfigError(f"config file '{name}' not found (neither a file nor a bundled config){hint}")


def parse_overrides(args: Sequence[str]) -> list[str]:
    """Turn command-line overrides into an OmegaConf dotlist.

    Accepted forms (the last two are what a W&B sweep agent produces): ``a.b=v``, ``--a.b=v``, ``--a.b v``.
    The value ``None`` (Python's str(None), as the agent writes it) means null.
    """
    dotlist: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--"):
            body = token[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, value = body, args[i + 1]
                i += 1
            else:
                raise ConfigError(f"override '{token}' has no value; write '{body}=VALUE'")
        elif "=" in token:
            key, value = token.split("=", 1)
        else:
            raise ConfigError(f"cannot parse override '{token}'; write 'key=value', '--key=value' or '--key value'")
        if not key:
            raise ConfigError(f"override '{token}' has an empty key")
        dotlist.append(f"{key}={'null' if value.strip() == 'None' else value}")
        i += 1
    return dotlist


def _quote_list(items: Iterable[str]) -> str:
    return " or ".join(f"'{x}'" for x in items)


def _schema_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        value = node[key] if not OmegaConf.is_missing(node, key) else None
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(_schema_keys(value, full + "."))
    return keys


def _check_keys(data: Any, schema: DictConfig, source: str, prefix: str = "") -> None:
    """Reject keys that the schema does not have, naming the full key and the closest valid ones."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(key, str) and key not in schema and moved_key(full) is not None:
            raise ConfigError(f"config key '{full}' is now '{moved_key(full)}' ({source}); docs/configuration.md")
        if not isinstance(key, str) or key not in schema:
            candidates = _schema_keys(schema, prefix)
            close = difflib.get_close_matches(full, candidates, n=3, cutoff=0.6)
            hint = f"; did you mean {_quote_list(close)}?" if close else ""
            raise ConfigError(f"unknown config key '{full}' ({source}){hint}")
        child = schema[key]
        if isinstance(child, DictConfig):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a group, not a value ({source})")
            if OmegaConf.get_type(child) is not dict:  # a free-form mapping (paper.metrics) takes any key
                _check_keys(value, child, source, full + ".")


def _merge(base: DictConfig, data: dict, source: str) -> DictConfig:
    _check_keys(data, base, source)
    try:
        return OmegaConf.merge(base, data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"invalid value for config key '{key}' ({source}): {reason}") from None


def _merge_dotlist(cfg: DictConfig, dotlist: list[str], source: str) -> DictConfig:
    try:
        data = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides: {str(exc).splitlines()[0]}") from None
    return _merge(cfg, data, source)


def override_config(
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    source: str = "in an override",
) -> DictConfig:
    """A validated, read-only copy of ``cfg`` with command-line style ``overrides`` ("a.b=v") and then ``values``
    ({"a.b": v}, Python values) applied. Raises ConfigError as load_config does."""
    merged = OmegaConf.merge(cfg)  # a writable copy that keeps the schema
    dotlist = parse_overrides(list(overrides))
    if dotlist:
        merged = _merge_dotlist(merged, dotlist, source)
    if values:
        nested: dict = {}
        for key, value in values.items():
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        merged = _merge(merged, nested, source)
    from plm_lightning.config.validation import validate_config  # late: it imports the registries

    validate_config(merged)
    OmegaConf.set_readonly(merged, True)
    return merged


def load_config(config: str | None = None, overrides: Sequence[str] = (), check_data: bool = True) -> DictConfig:
    """Schema defaults <- YAML file <- overrides, then validated. Raises ConfigError.

    ``check_data=False`` skips the checks of the dataset folder on disk (for printing a config before the data are
    there); everything else is validated."""
    cfg = OmegaConf.structured(Config)
    if config is not None:
        path = resolve_config_path(config)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); a config is YAML text"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config groups at the top level")
        data, moved = upgrade(data)  # e.g. the config.yaml of a run made before keys moved
        if moved:
            names = ", ".join(f"{old} -> {new}" for old, new in moved)
            print(f"note: {path}: read old config keys under their new names: {names}", file=sys.stderr)
        cfg = _merge(cfg, data, f"in {path}")
    dotlist = parse_overrides(list(overrides))
    if dotlist:
        cfg = _merge_dotlist(cfg, dotlist, "on the command line")
    from plm_lightning.config.validation import validate_config  # late: it imports the registries

    validate_config(cfg, check_data=check_data)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def written_config(data: dict[str, Any]) -> DictConfig:
    """A config this project wrote (a run's config.yaml, a checkpoint's hyper-parameters) as a DictConfig: keys that
    moved since are read under their new names, then merged onto the schema (keys a newer version added take their
    defaults). Not validated: it was when it was written. OmegaConf's errors pass through to the caller."""
    return OmegaConf.merge(OmegaConf.structured(Config), upgrade(data)[0])


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
