"""Config keys that moved, and the upgrade of configs written before they moved.

Configs this project wrote (a run's config.yaml, a checkpoint's hyper-parameters) are upgraded on reading, so old
runs still resume, evaluate and report. A key typed now (a command-line override, a sweep's parameter) under its
old name is a ConfigError naming the new one: teaching the new name once is cheaper than two names for one knob.
"""

from __future__ import annotations

import copy
from typing import Any

# old dotted key -> new dotted key
MOVED: dict[str, str] = {
    **{
        f"method.{key}": f"method.plm.{key}"
        for key in (
            "n_alpha",
            "n_beta",
            "piece_dim",
            "max_candidates",
            "tau",
            "subset_selection",
            "greedy_test",
            "symmetrize",
            "distance_scale",
            "binary_threshold",
        )
    },
    "method.gaussian_sigma": "method.gaussian.sigma",
    "method.knn_k": "method.knn.k",
    "method.kmeans_clusters": "method.kmeans.clusters",
    "method.num_proxies": "method.proxies.count",
    "method.proxy_init": "method.proxies.init",
    "method.proxy_neighbours": "method.proxies.neighbours",
    "method.proxy_pairs": "method.proxies.pairs",
    "method.lambda_proxy": "method.loss.lambda_proxy",
    "method.lambda_nbhd": "method.loss.lambda_nbhd",
    "method.delta": "method.loss.delta",
    "method.normalize_student": "method.loss.normalize_student",
    "method.normalize_teacher": "method.teacher.normalize",
    "method.ema_momentum": "method.teacher.momentum",
    "data.augment": "data.augmentation.enabled",
    "data.crop_scale": "data.augmentation.crop_scale",
    "data.hflip": "data.augmentation.hflip",
    "data.color_jitter": "data.augmentation.color_jitter",
    "data.views": "data.augmentation.views",
    "data.batch_size": "data.sampler.batch_size",
    "data.neighbours_per_seed": "data.sampler.neighbours_per_seed",
    "data.refresh_every": "data.sampler.refresh_every",
    "data.eval_batch_size": "data.loader.eval_batch_size",
    "data.num_workers": "data.loader.num_workers",
    "data.prefetch_factor": "data.loader.prefetch_factor",
}


def moved_key(key: str) -> str | None:
    """The new name of an old dotted key (or of a key below it), None if it did not move."""
    for old, new in MOVED.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def upgrade(config: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A nested plain-dict config with every old key moved to its new place (a copy), and the (old, new) pairs
    moved. A value already at the new place wins over an old one (the config was written by this version)."""
    out = copy.deepcopy(config)
    moved: list[tuple[str, str]] = []
    for old, new in MOVED.items():
        *old_parents, old_leaf = old.split(".")
        parent = _node(out, old_parents)
        if not isinstance(parent, dict) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = _node(out, new_parents, create=True)
        if not isinstance(target, dict):  # e.g. method.plm was written as a scalar: leave it to the schema check
            parent[old_leaf] = value
            continue
        target.setdefault(new_leaf, value)
        moved.append((old, new))
    return out, moved


def _node(config: Any, path: list[str], create: bool = False) -> Any:
    node = config
    for part in path:
        if not isinstance(node, dict):
            return None
        if part not in node:
            if not create:
                return None
            node[part] = {}
        node = node[part]
    return node
