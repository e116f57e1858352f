"""The LightningDataModule: datasets, transforms, the nearest-neighbour training batches, and the deterministic
loaders that the teacher's embedding pass and the evaluation iterate (sharded by rank, gathered by index)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from plm_lightning.data.base import RetrievalDataset
from plm_lightning.data.registry import DATASETS
from plm_lightning.data.sampler import NearestNeighbourBatchSampler
from plm_lightning.data.transforms import build_transform

if TYPE_CHECKING:  # the config layer sits above data; only its shape is needed here
    from plm_lightning.config.schema import DataConfig


class ShardSampler(Sampler[int]):
    """Indices rank, rank + W, rank + 2W, ...: every item exactly once across ranks, no padding (unlike
    DistributedSampler, whose repeated samples would find their own copies at distance 0 in retrieval)."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_items, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class RetrievalDataModule(L.LightningDataModule):
    def __init__(self, cfg: "DataConfig", *, backbone_channels: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.dataset_cls = DATASETS[cfg.name]
        self.backbone_channels = backbone_channels
        self.train_set: Optional[RetrievalDataset] = None
        self.train_eval_set: Optional[RetrievalDataset] = None
        self.test_set: Optional[RetrievalDataset] = None
        self.batch_sampler: Optional[NearestNeighbourBatchSampler] = None

    def _dataset(self, split: str, train_transform: bool) -> RetrievalDataset:
        cls = self.dataset_cls
        transform = build_transform(augmentation=cls.augmentation, train=train_transform, augment=self.cfg.augment,
                                    image_size=self.cfg.image_size, resize=self.cfg.resize,
                                    in_channels=cls.input_channels(self.cfg), out_channels=self.backbone_channels)
        return cls.from_config(split, transform, self.cfg)

    @property
    def rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_set is None:
            self.train_set = self._dataset("train", train_transform=True)
            self.train_eval_set = self._dataset("train", train_transform=False)
            self.test_set = self._dataset("test", train_transform=False)
        rank, world = self.rank_and_world
        if self.batch_sampler is None or (self.batch_sampler.rank, self.batch_sampler.world_size) != (rank, world):
            self.batch_sampler = NearestNeighbourBatchSampler(
                len(self.train_set), self.cfg.batch_size, self.cfg.neighbours_per_seed,
                seed=self.seed, rank=rank, world_size=world)

    def _loader_kwargs(self) -> dict:
        workers = self.cfg.num_workers
        return {"num_workers": workers, "pin_memory": torch.cuda.is_available(),
                "persistent_workers": workers > 0}

    def train_dataloader(self) -> DataLoader:
        # An own generator for the loader's base seed: creating its iterator then draws nothing from the global
        # torch RNG. Lightning creates the first iterator of a fit before on_train_epoch_start, so on a resumed
        # run that draw would otherwise fall before the restored RNG state and shift every later augmentation.
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_sampler=self.batch_sampler, generator=generator,
                          **self._loader_kwargs())

    def _sharded(self, dataset: RetrievalDataset) -> DataLoader:
        rank, world = self.rank_and_world
        kwargs = self._loader_kwargs()
        kwargs["persistent_workers"] = False  # iterated once per epoch, outside Lightning's loops
        return DataLoader(dataset, batch_size=self.cfg.eval_batch_size, shuffle=False,
                          sampler=ShardSampler(len(dataset), rank, world), **kwargs)

    def train_embedding_dataloader(self) -> DataLoader:
        """The training split with the eval transform, for the teacher's embedding pass."""
        return self._sharded(self.train_eval_set)

    def test_embedding_dataloader(self) -> DataLoader:
        return self._sharded(self.test_set)
