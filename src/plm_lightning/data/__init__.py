"""Datasets (one module each), transforms, the nearest-neighbour batch sampler and the DataModule
(``plm_lightning.data.datamodule``, imported explicitly: it pulls in Lightning)."""

from plm_lightning.data.registry import DATASETS
from plm_lightning.data.sampler import NearestNeighbourBatchSampler

__all__ = ["DATASETS", "NearestNeighbourBatchSampler"]
