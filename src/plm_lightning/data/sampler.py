"""Nearest-neighbour batches (docs/method.md, "Mini-batches"): B / k random seeds, each with its k nearest neighbours.

Random batches hold too few points on a common linear piece, so each batch is built from seeds and their
neighbours in the teacher's embedding space. The neighbour table is refreshed from outside (once per epoch, or
every N epochs); the batch order is a pure function of (seed, epoch), so a resumed run sees the same batches, and
under DDP rank r takes every world_size-th batch of the same global order (disjoint batches per rank).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler


class NearestNeighbourBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_items: int,
        batch_size: int,
        neighbours_per_seed: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % neighbours_per_seed != 0:
            raise ValueError(f"batch_size {batch_size} is not divisible by neighbours_per_seed {neighbours_per_seed}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.neighbours_per_seed = neighbours_per_seed
        self.seeds_per_batch = batch_size // neighbours_per_seed
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.neighbours: Optional[torch.Tensor] = None
        # An epoch shows about as many images as the split holds: N // B batches in all, split across ranks.
        self.global_batches = num_items // batch_size
        if self.global_batches < world_size:
            raise ValueError(
                f"{num_items} training images make {self.global_batches} batches of {batch_size}, "
                f"fewer than the {world_size} processes"
            )

    def set_neighbours(self, neighbours: torch.Tensor) -> None:
        """neighbours: N x (>= k) table of dataset indices, each row starting with the point itself."""
        if neighbours.shape[0] != self.num_items or neighbours.shape[1] < self.neighbours_per_seed:
            raise ValueError(
                f"neighbour table of shape {tuple(neighbours.shape)} does not fit "
                f"{self.num_items} items x {self.neighbours_per_seed} neighbours"
            )
        self.neighbours = neighbours[:, : self.neighbours_per_seed].cpu().long()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.global_batches // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        if self.neighbours is None:
            raise RuntimeError("NearestNeighbourBatchSampler has no neighbour table; call set_neighbours() first")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        # Seeds without replacement within an epoch.
        seeds = torch.randperm(self.num_items, generator=generator)
        seeds = seeds[: self.global_batches * self.seeds_per_batch].view(self.global_batches, self.seeds_per_batch)
        batches = self.neighbours[seeds].reshape(self.global_batches, self.batch_size)
        for b in range(self.rank, len(self) * self.world_size, self.world_size):
            yield batches[b].tolist()


class RandomBatchSampler(Sampler[list[int]]):
    """Plain random batches (no neighbours), for the supervised reference (method.name=supervised). Same contract as
    NearestNeighbourBatchSampler: N // B batches an epoch, the order a pure function of (seed, epoch), rank r takes
    every world_size-th batch."""

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.global_batches = num_items // batch_size
        if self.global_batches < world_size:
            raise ValueError(
                f"{num_items} training images make {self.global_batches} batches of {batch_size}, "
                f"fewer than the {world_size} processes"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.global_batches // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)
        batches = order[: self.global_batches * self.batch_size].view(self.global_batches, self.batch_size)
        for b in range(self.rank, len(self) * self.world_size, self.world_size):
            yield batches[b].tolist()


def neighbour_table(
    embeddings: torch.Tensor, k: int, *, backend: str = "auto", index: str = "exact", seed: int = 0
) -> torch.Tensor:
    """N x k table of each point's k nearest neighbours, the point itself first: exact (ties by index), or from
    an approximate faiss index (``index`` "hnsw" or "ivf", data.sampler.index; retrieval/approximate.py)."""
    from plm_lightning.retrieval import knn_search
    from plm_lightning.retrieval.approximate import approximate_neighbours

    n = embeddings.shape[0]
    own = torch.arange(n).unsqueeze(1)
    if k <= 1:
        return own
    if index != "exact":
        return torch.cat([own, approximate_neighbours(embeddings, k - 1, index=index, seed=seed)], dim=1)
    _, nearest = knn_search(embeddings, embeddings, k - 1, exclude_self=True, backend=backend)
    return torch.cat([own, nearest.cpu()], dim=1)


def training_batches(
    embeddings: torch.Tensor,
    batch_size: int,
    neighbours_per_seed: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    max_batches: Optional[int] = None,
    backend: str = "auto",
) -> list[list[int]]:
    """The batches that training builds from these embeddings at ``epoch`` (same sampler, same order): for the
    analyses and figures that measure a similarity where training would."""
    sampler = NearestNeighbourBatchSampler(embeddings.shape[0], batch_size, neighbours_per_seed, seed=seed)
    sampler.set_neighbours(neighbour_table(embeddings, neighbours_per_seed, backend=backend))
    sampler.set_epoch(epoch)
    batches = list(sampler)
    return batches[:max_batches] if max_batches is not None else batches
