"""Semantic checks of a merged config: every value that would fail later fails here, before any work starts."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from plm_lightning.config.loading import ConfigError
from plm_lightning.config.schema import declared_choices
from plm_lightning.data.registry import DATASETS
from plm_lightning.manifold.pieces import GREEDY_TESTS
from plm_lightning.manifold.similarity import DISTANCE_SCALES, SYMMETRIZATIONS
from plm_lightning.models.backbones import BACKBONES
from plm_lightning.models.head import POOLINGS
from plm_lightning.models.similarity_estimator import SIMILARITIES

# Allowed values: the schema's one_of fields, and the keys whose values are a registry of the code.
CHOICES = {
    **declared_choices(),
    "data.name": tuple(DATASETS),
    "model.backbone": tuple(BACKBONES),
    "model.pooling": POOLINGS,
    "method.similarity": SIMILARITIES,
    "method.plm.symmetrize": SYMMETRIZATIONS,
    "method.plm.greedy_test": GREEDY_TESTS,
    "method.plm.distance_scale": DISTANCE_SCALES,
}


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _require(condition: bool, key: str, value, expectation: str) -> None:
    if not condition:
        raise ConfigError(f"invalid value for config key '{key}': {value!r} ({expectation})")


def _check_data_root(cfg: DictConfig, dataset) -> None:
    """The dataset's folder exists and looks like the dataset (its metadata files are there). Counting and
    checking every listed image needs the files read, so that waits for dataset construction (DatasetError)."""
    from plm_lightning.data.paths import RootUnsetError, resolve_root

    try:
        root = resolve_root(cfg.data.name, cfg.data.root)
    except RootUnsetError as exc:
        raise ConfigError(f"invalid value for config key 'data.root': None ({exc})") from None
    shown = str(root)
    origin = "" if cfg.data.root is not None else f" (data.root is null: $PLM_DATA/{cfg.data.name})"
    hint = dataset.prepare_hint(root) if hasattr(dataset, "prepare_hint") else "point data.root at the dataset"
    _require(root.is_dir(), "data.root", shown, f"folder does not exist{origin}; {hint}")
    missing = [m for m in getattr(dataset, "metadata_files", ()) if not (root / m).is_file()]
    _require(
        not missing,
        "data.root",
        shown,
        f"not a {getattr(dataset, 'title', cfg.data.name)} folder{origin}: {', '.join(missing)} missing; {hint}",
    )
    if cfg.data.name == "folder":
        from plm_lightning.data.folder import class_folders, split_classes

        try:
            split_classes(
                class_folders(root),
                cfg.data.train_class_fraction,
                list(cfg.data.train_classes),
                list(cfg.data.test_classes),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid data split of data.root {shown}: {exc}") from None


def _numbers(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key in node:
        value = node[key]
        if isinstance(value, DictConfig):
            out += _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            out.append((f"{prefix}{key}", value))
    return out


def _check_augmentation(cfg: DictConfig, family: str) -> None:
    """data.augmentation.crop_scale / hflip / color_jitter: valid values, and only where the dataset's augmentation
    uses them."""
    from plm_lightning.data.transforms import MAX_COLOR_JITTER, NATURAL_CROP_SCALE

    scale = [float(x) for x in cfg.data.augmentation.crop_scale]
    _require(
        len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
        "data.augmentation.crop_scale",
        scale,
        "two fractions of the image's area, 0 < low <= high <= 1 (the paper's: [0.16, 1.0])",
    )
    jitter = float(cfg.data.augmentation.color_jitter)
    _require(
        0 <= jitter <= MAX_COLOR_JITTER,
        "data.augmentation.color_jitter",
        jitter,
        f"a strength in [0, {MAX_COLOR_JITTER}]",
    )
    if family == "natural":
        return
    kind = "vectors" if family == "vector" else "upright images (affine jitter on the batch, no flip)"
    what = f"data.name={cfg.data.name} holds {kind}; these knobs apply to photographs"
    _require(cfg.data.augmentation.hflip is not True, "data.augmentation.hflip", True, what)
    _require(tuple(scale) == NATURAL_CROP_SCALE, "data.augmentation.crop_scale", scale, what)
    _require(jitter == 0, "data.augmentation.color_jitter", jitter, what)


def _check_paper(cfg: DictConfig) -> None:
    """paper.metrics names metrics a run reports (metrics.json), as percentages."""
    for name, value in cfg.paper.metrics.items():
        known = name in ("MAP@R", "R-precision", "NMI") or (name.startswith("R@") and name[2:].isdigit())
        _require(known, f"paper.metrics.{name}", value, "R@K, MAP@R, R-precision or NMI, as in metrics.json")
        _require(0 <= float(value) <= 100, f"paper.metrics.{name}", value, "a percentage")


# Numeric ranges (the schema's types are checked by OmegaConf; these are the values no knob means).
POSITIVE = (
    "data.image_size",
    "data.resize",
    "data.sampler.batch_size",
    "data.sampler.neighbours_per_seed",
    "data.sampler.refresh_every",
    "data.loader.eval_batch_size",
    "data.loader.prefetch_factor",
    "model.embedding_dim",
    "model.width",
    "method.plm.n_alpha",
    "method.plm.piece_dim",
    "method.plm.tau",
    "method.loss.delta",
    "method.gaussian.sigma",
    "method.supervised.temperature",
    "method.stml.sigma",
    "method.stml.delta",
    "method.stml.auxiliary_dim",
    "method.stml.kl_temperature",
    "optim.lr",
    "trainer.max_epochs",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.log_every_n_steps",
    "eval.every_n_epochs",
    "eval.memory_budget_mb",
)
POSITIVE_OR_NULL = (
    "optim.head_lr",
    "optim.proxy_lr",
    "method.plm.max_candidates",
    "method.proxies.neighbours",
    "method.knn.k",
    "method.kmeans.clusters",
    "trainer.stop_after_epochs",
    "data.augmentation.views",
    "method.stml.neighbours",
)
NON_NEGATIVE = (
    "method.plm.n_beta",
    "method.proxies.count",
    "method.loss.lambda_proxy",
    "method.loss.lambda_nbhd",
    "method.stml.lambda_kl",
    "optim.weight_decay",
    "optim.warmup_epochs",
    "data.loader.num_workers",
)


def validate_config(cfg: DictConfig, check_data: bool = True) -> None:
    """ConfigError (one line naming the key and the value) for the first value that would fail later; with
    ``check_data`` also the dataset's folder (not needed to print a config)."""
    for key, value in _numbers(cfg):  # inf / nan pass every "> 0" check below; no knob means them
        _require(math.isfinite(value), key, value, "must be a finite number")
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_schedule_and_run(cfg)
    _check_batches_and_metrics(cfg)
    _check_dataset(cfg, check_data)
    _check_model(cfg)


def _check_ranges(cfg: DictConfig) -> None:
    for key in POSITIVE:
        value = _get(cfg, key)
        _require(value > 0, key, value, "must be positive")
    for key in POSITIVE_OR_NULL:
        value = _get(cfg, key)
        _require(value is None or value > 0, key, value, "must be positive or null")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        _require(value >= 0, key, value, "must be non-negative")
    momentum = cfg.method.teacher.momentum
    _require(0 <= momentum < 1, "method.teacher.momentum", momentum, "must be in [0, 1)")
    threshold = cfg.method.plm.binary_threshold
    _require(
        threshold is None or 0 < threshold <= 1, "method.plm.binary_threshold", threshold, "must be in (0, 1] or null"
    )
    fraction = cfg.data.train_class_fraction
    _require(0 < fraction < 1, "data.train_class_fraction", fraction, "must be in (0, 1)")


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"invalid value for config key '{key}': {value!r} is not one of {', '.join(map(str, allowed))}{hint}"
            )


def _check_schedule_and_run(cfg: DictConfig) -> None:
    """How long the run trains, what it starts from and what it continues from."""
    limit = cfg.trainer.limit_train_batches
    _require(limit is None or limit > 0, "trainer.limit_train_batches", limit, "must be positive or null")
    _require(
        limit is None or limit <= 1 or float(limit).is_integer(),
        "trainer.limit_train_batches",
        limit,
        "a fraction of the epoch (at most 1.0) or a whole number of batches",
    )
    _require(
        cfg.trainer.max_steps == -1 or cfg.trainer.max_steps > 0,
        "trainer.max_steps",
        cfg.trainer.max_steps,
        "must be positive, or -1 for no limit",
    )
    _require(
        cfg.optim.warmup_epochs < cfg.trainer.max_epochs,
        "optim.warmup_epochs",
        cfg.optim.warmup_epochs,
        f"must be smaller than trainer.max_epochs={cfg.trainer.max_epochs}",
    )
    weights = cfg.model.weights
    if weights is not None:
        _require(Path(weights).expanduser().is_file(), "model.weights", weights, "file does not exist")
    resume = cfg.resume
    if resume == "auto":
        _require(bool(cfg.run.dir), "resume", resume, "'auto' needs run.dir set")
    elif resume is not None:
        _require(Path(resume).expanduser().is_file(), "resume", resume, "checkpoint file does not exist")


def _check_batches_and_metrics(cfg: DictConfig) -> None:
    b, k = cfg.data.sampler.batch_size, cfg.data.sampler.neighbours_per_seed
    if cfg.method.name != "supervised":  # nearest-neighbour batches: B / k seeds (the supervised reference: random)
        _require(b % k == 0, "data.sampler.batch_size", b, f"must be divisible by data.sampler.neighbours_per_seed={k}")
    _require(b >= 2, "data.sampler.batch_size", b, "a batch needs at least 2 images to form pairs")
    ks = list(cfg.eval.ks)
    _require(len(ks) > 0 and all(int(x) > 0 for x in ks), "eval.ks", ks, "a non-empty list of positive integers")
    _require(ks == sorted(set(ks)), "eval.ks", ks, "must be increasing without repeats")


def _check_dataset(cfg: DictConfig, check_data: bool) -> None:
    dataset = DATASETS[cfg.data.name]
    if cfg.data.name == "synthetic":
        from plm_lightning.data.synthetic import validate_synthetic_config

        try:
            validate_synthetic_config(cfg.data.synthetic)
        except ValueError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
    if cfg.data.name == "glyphs":
        from plm_lightning.data.glyphs import validate_glyphs_config

        try:
            validate_glyphs_config(cfg.data.glyphs)
        except ValueError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
    if dataset.needs_root and check_data:  # not for printing a config: that needs no data on disk
        _check_data_root(cfg, dataset)
    for key in ("data.train_classes", "data.test_classes"):
        value = list(_get(cfg, key))
        _require(not value or cfg.data.name == "folder", key, value, "applies to data.name=folder only")
    _check_augmentation(cfg, dataset.augmentation)
    _check_paper(cfg)


def _check_model(cfg: DictConfig) -> None:
    if cfg.model.backbone == "bn_inception" and DATASETS[cfg.data.name].augmentation != "vector":
        from plm_lightning.models.bn_inception import bn_inception_map_size

        size = cfg.data.image_size
        _require(
            bn_inception_map_size(size) is not None,
            "data.image_size",
            size,
            "does not fit bn_inception's stride-2 blocks; use e.g. 224 or 227",
        )
    spec = BACKBONES[cfg.model.backbone]
    if cfg.model.pretrained and not spec.pretrainable:
        raise ConfigError(
            f"invalid value for config key 'model.pretrained': true ('{cfg.model.backbone}' has no "
            f"pretrained weights; set model.pretrained=false)"
        )
