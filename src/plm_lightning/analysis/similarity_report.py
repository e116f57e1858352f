"""Similarity quality of several estimators on the same nearest-neighbour batches (the paper's Slide 14).

embeddings of the training split -> nearest-neighbour table -> the batches training would build (epoch 0) ->
each estimator's s on each batch -> purity@k and Pearson r against the same-class indicator.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from plm_lightning.data.sampler import NearestNeighbourBatchSampler, neighbour_table
from plm_lightning.manifold.quality import SimilarityQuality


def nn_batches(
    embeddings: torch.Tensor,
    batch_size: int,
    neighbours_per_seed: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    max_batches: Optional[int] = None,
    backend: str = "auto",
) -> list[list[int]]:
    """The batches that training builds from these embeddings at ``epoch`` (same sampler, same order)."""
    sampler = NearestNeighbourBatchSampler(embeddings.shape[0], batch_size, neighbours_per_seed, seed=seed)
    sampler.set_neighbours(neighbour_table(embeddings, neighbours_per_seed, backend=backend))
    sampler.set_epoch(epoch)
    batches = list(sampler)
    return batches[:max_batches] if max_batches is not None else batches


@torch.no_grad()
def similarity_report(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    estimators: Mapping[str, object],
    batches: list[list[int]],
    *,
    purity_k: int,
    keep_values: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, torch.Tensor]]]:
    """{estimator: {"purity", "pearson"}} over the given batches; with keep_values, also the off-diagonal s values
    split into same-class and different-class pairs (for histograms)."""
    report: dict[str, dict[str, float]] = {}
    values: dict[str, dict[str, torch.Tensor]] = {}
    for name, estimator in estimators.items():
        quality = SimilarityQuality(k=purity_k)
        same_vals, diff_vals = [], []
        for batch in batches:
            idx = torch.as_tensor(batch)
            x, y = embeddings[idx], labels[idx]
            s = estimator(x).s
            quality.update(s, y)
            if keep_values:
                off = ~torch.eye(len(batch), dtype=torch.bool)
                same = (y[:, None] == y[None, :]) & off
                same_vals.append(s[same].float().cpu())
                diff_vals.append(s[~same & off].float().cpu())
        report[name] = quality.compute()
        if keep_values:
            values[name] = {"same": torch.cat(same_vals), "different": torch.cat(diff_vals)}
    return report, values
