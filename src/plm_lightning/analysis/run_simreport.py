"""The similarity-quality report as a whole: features -> NN batches -> each estimator -> JSON + histogram PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig

from plm_lightning.analysis.features import training_features
from plm_lightning.data.sampler import training_batches
from plm_lightning.figures.common import similarity_histograms
from plm_lightning.manifold.quality import similarity_report
from plm_lightning.models.similarity_estimator import build_similarity
from plm_lightning.utils.io import atomic_write_text


def config_batches(cfg: DictConfig, emb: torch.Tensor, max_batches: Optional[int] = None) -> list[list[int]]:
    """The nearest-neighbour batches of epoch 0 that a run of ``cfg`` would train on, from these embeddings."""
    return training_batches(
        emb,
        cfg.data.sampler.batch_size,
        cfg.data.sampler.neighbours_per_seed,
        seed=cfg.run.seed,
        max_batches=max_batches,
        backend=cfg.eval.backend,
    )


def estimators_from_config(cfg: DictConfig, names: Sequence[str]) -> dict[str, object]:
    """Each named estimator with the config's knobs (the binary ablation applies to all when set)."""
    return {name: build_similarity(cfg, name) for name in names}


def run_simreport(
    cfg: DictConfig,
    names: Sequence[str],
    *,
    features: str,
    ckpt: Optional[str],
    output: Path,
    max_batches: Optional[int] = None,
) -> dict[str, dict[str, float]]:
    emb, labels = training_features(cfg, features, ckpt)
    batches = config_batches(cfg, emb, max_batches)
    report, values = similarity_report(
        emb,
        labels,
        estimators_from_config(cfg, names),
        batches,
        purity_k=cfg.data.sampler.neighbours_per_seed,
        keep_values=True,
    )
    clean = {
        name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in q.items()}
        for name, q in report.items()
    }
    atomic_write_text(output, json.dumps(clean, indent=2) + "\n")
    similarity_histograms(
        values,
        report,
        output.with_suffix(".png"),
        title=f"{cfg.data.name}, {features} features, {len(batches)} NN batches",
    )
    return clean
