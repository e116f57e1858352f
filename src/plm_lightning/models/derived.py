"""Knobs whose default (null) depends on other knobs, resolved where the code reads them (not in the config), so
that an override of the knob they follow (``method.name=stml``) moves them too. The stored config keeps the null."""

from __future__ import annotations

from omegaconf import DictConfig

# augmented views per training image when data.augmentation.views is null
DEFAULT_VIEWS = {"plm": 1, "stml": 2, "supervised": 1}


def training_views(cfg: DictConfig) -> int:
    """data.augmentation.views, or the method's default (STML trains on two views of each image)."""
    views = cfg.data.augmentation.views
    return int(views) if views is not None else DEFAULT_VIEWS[cfg.method.name]


def stml_neighbours(cfg: DictConfig) -> int:
    """k of STML's contextual similarity: method.stml.neighbours, or neighbours per seed x views (STML's code)."""
    k = cfg.method.stml.neighbours
    return int(k) if k is not None else cfg.data.sampler.neighbours_per_seed * training_views(cfg)
