"""The LightningDataModule: datasets, transforms, the nearest-neighbour training batches (and their state, which
Lightning checkpoints through this module's ``state_dict``), and the deterministic loaders that the teacher's
embedding pass and the evaluation iterate (sharded by rank, gathered by index).

Images stream from disk through ``data.loader.num_workers`` worker processes (persistent for the training loader, each
loading ``data.loader.prefetch_factor`` batches ahead), into pinned memory when training on CUDA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from plm_lightning.data.base import DatasetError, RetrievalDataset
from plm_lightning.data.registry import DATASETS
from plm_lightning.data.sampler import NearestNeighbourBatchSampler, RandomBatchSampler, neighbour_table
from plm_lightning.data.transforms import (
    BatchRandomAffine,
    MultiView,
    batch_augmentation,
    build_transform,
)

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


class _StartOnFirstBatch:
    """An iterator that creates the loader's real iterator at the first next()."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self.iterator is None:
            self.iterator = DataLoader.__iter__(self.loader)
        return next(self.iterator)


class LazyStartDataLoader(DataLoader):
    """A DataLoader whose worker processes start drawing batches at the first batch, not at iter(). Lightning calls
    iter() on the training loader before on_train_epoch_start (first epoch, resumed epoch), and worker processes
    prefetch indices from the batch sampler at once; the epoch's batches are fixed only in that hook
    (RetrievalDataModule.start_epoch), from the teacher as it is then."""

    def __iter__(self):
        return _StartOnFirstBatch(self)


def augmentation_knobs(cfg: DataConfig) -> dict[str, Any]:
    """data.augmentation.crop_scale / hflip / color_jitter as build_transform's arguments; hflip None is the family's
    default (photographs flip; upright images, digits and glyphs, do not: a mirrored character is another one)."""
    augmentation = cfg.augmentation
    hflip = augmentation.hflip
    return {
        "crop_scale": tuple(augmentation.crop_scale),
        "hflip": DATASETS[cfg.name].augmentation == "natural" if hflip is None else bool(hflip),
        "color_jitter": float(augmentation.color_jitter),
    }


# What a training method supplies for nearest-neighbour batches: a loader over the training split (eval transform,
# this rank's shard) in, the embeddings of the whole split (all ranks gathered, dataset order) out.
SplitEmbedder = Callable[[DataLoader], torch.Tensor]


@dataclass(frozen=True)
class NeighbourRefresh:
    """What one rebuild of the nearest-neighbour table used and produced (PLM initialises its proxies from it)."""

    embeddings: torch.Tensor  # N x d, dataset order
    table: torch.Tensor  # N x k dataset indices, each row starting with the point itself


class RetrievalDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: DataConfig,
        *,
        backbone_channels: int,
        input_space: str = "any",
        seed: int = 0,
        sampling: str = "neighbours",
        neighbour_backend: str = "auto",
        views: Optional[int] = None,
    ):
        """backbone_channels / input_space: what the backbone takes (BackboneSpec; head.backbone_input_channels
        and head.backbone_input_space), so the transforms end in the preprocessing its weights expect.
        sampling: "neighbours" (the method's nearest-neighbour batches) or "random" (the supervised reference).
        neighbour_backend: the k-NN engine that builds the neighbour table (eval.backend).
        views: augmented views per training image (models/derived.py); None = data.augmentation.views,
        or 1 when that is null too."""
        super().__init__()
        if sampling not in ("neighbours", "random"):
            raise ValueError(f"sampling must be 'neighbours' or 'random', got {sampling!r}")
        self.sampling = sampling
        self.neighbour_backend = neighbour_backend
        self.views = int(views if views is not None else (cfg.augmentation.views or 1))
        self.cfg = cfg
        self.seed = seed
        self.dataset_cls = DATASETS[cfg.name]
        self.backbone_channels = backbone_channels
        self.input_space = input_space
        self.train_set: Optional[RetrievalDataset] = None
        self.train_eval_set: Optional[RetrievalDataset] = None
        self.test_set: Optional[RetrievalDataset] = None
        self.batch_sampler: Optional[NearestNeighbourBatchSampler | RandomBatchSampler] = None
        # The training augmentation done on whole batches (upright images: digits, glyphs), or None.
        self.batch_augmentation: Optional[BatchRandomAffine] = None
        # A checkpoint's batching state that arrived before setup() built the sampler (see load_state_dict).
        self._pending_state: Optional[dict[str, Any]] = None

    def _transform(self, train: bool):
        cls = self.dataset_cls
        return build_transform(
            augmentation=cls.augmentation,
            train=train,
            augment=self.cfg.augmentation.enabled,
            image_size=self.cfg.image_size,
            resize=self.cfg.resize,
            in_channels=cls.input_channels(self.cfg),
            out_channels=self.backbone_channels,
            input_space=self.input_space,
            **augmentation_knobs(self.cfg),
        )

    def describe_transforms(self) -> str:
        """The resolved per-image train and eval transforms and the batch augmentation, as a run records them."""
        if self.train_set is None or self.test_set is None:
            self.setup("fit")
        assert self.train_set is not None and self.test_set is not None
        lines = [
            f"train (per image): {self.train_set.transform!r}",
            f"train (per batch, on the device): {self.batch_augmentation!r}",
            f"eval: {self.test_set.transform!r}",
        ]
        return "\n".join(lines) + "\n"

    def _dataset(self, split: str, train_transform: bool) -> RetrievalDataset:
        cls = self.dataset_cls
        transform = self._transform(train_transform)
        if train_transform and self.views > 1:
            transform = MultiView(transform, self.views)
        dataset = cls.from_config(split, transform, self.cfg)
        if cls.augmentation == "digits" and not cls.needs_root:
            # In memory, and the per-image pipeline of upright images is deterministic (their augmentation is the
            # batch's, batch_augmentation): transform each image once, not once per epoch.
            dataset.cache_transformed()
        return dataset

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
            cls = self.dataset_cls
            self.batch_augmentation = batch_augmentation(
                augmentation=cls.augmentation,
                augment=self.cfg.augmentation.enabled,
                eval_transform=self._transform(False),
                in_channels=cls.input_channels(self.cfg),
            )
        rank, world = self.rank_and_world
        if self.batch_sampler is None or (self.batch_sampler.rank, self.batch_sampler.world_size) != (rank, world):
            n, b = len(self.train_set), self.cfg.sampler.batch_size
            if n // b < world:  # a config / dataset mismatch: one line from plm-fit, not a traceback
                raise DatasetError(
                    f"the {self.cfg.name} training split has {n} images: not enough for one batch of "
                    f"data.sampler.batch_size={b} per process ({world} process(es)); lower data.sampler.batch_size"
                )
            if self.sampling == "random":
                self.batch_sampler = RandomBatchSampler(n, b, seed=self.seed, rank=rank, world_size=world)
            else:
                self.batch_sampler = NearestNeighbourBatchSampler(
                    n, b, self.cfg.sampler.neighbours_per_seed, seed=self.seed, rank=rank, world_size=world
                )
            if self._pending_state is not None:
                state, self._pending_state = self._pending_state, None
                self.load_state_dict(state)

    # --- the epoch's batches and their state (exact resume) -----------------------------------------------------
    def start_epoch(self, epoch: int, embed_split: Optional[SplitEmbedder] = None) -> Optional[NeighbourRefresh]:
        """Fix the epoch's training batches before the first is drawn (called from the training module's
        on_train_epoch_start). Nearest-neighbour batching rebuilds its table from ``embed_split`` (the training
        method's teacher) on the first epoch and then every ``data.sampler.refresh_every`` epochs; returns what that
        rebuild used and produced, or None when the table was kept (or the batches are random)."""
        sampler = self.batch_sampler
        if sampler is None or self.train_eval_set is None:
            raise RuntimeError("RetrievalDataModule.start_epoch before setup('fit')")
        refresh = None
        if isinstance(sampler, NearestNeighbourBatchSampler) and (
            sampler.neighbours is None or epoch % self.cfg.sampler.refresh_every == 0
        ):
            if embed_split is None:
                raise RuntimeError("nearest-neighbour batches need the training split's embeddings (embed_split)")
            embeddings = embed_split(self.train_embedding_dataloader())
            if embeddings.shape[0] != len(self.train_eval_set):
                raise RuntimeError(
                    f"the embedding pass gave {embeddings.shape[0]} of {len(self.train_eval_set)} images"
                )
            table = neighbour_table(
                embeddings,
                self.cfg.sampler.neighbours_per_seed,
                backend=self.neighbour_backend,
                index=self.cfg.sampler.index,
                seed=epoch,
            )
            sampler.set_neighbours(table)
            refresh = NeighbourRefresh(embeddings, table)
        # Lightning sets the epoch of samplers, not of a custom batch sampler: the order depends on it.
        sampler.set_epoch(epoch)
        return refresh

    def state_dict(self) -> dict[str, Any]:
        """The batching state a resumed run needs (Lightning stores it in every checkpoint): the sampler's epoch,
        and the neighbour table when it outlives an epoch (data.sampler.refresh_every > 1: a resumed run must keep using
        the table the uninterrupted run still uses, not rebuild it from a later teacher)."""
        sampler = self.batch_sampler
        if sampler is None:
            return {}
        state: dict[str, Any] = {"epoch": int(sampler.epoch)}
        neighbours = getattr(sampler, "neighbours", None)
        if self.cfg.sampler.refresh_every > 1 and neighbours is not None:
            state["neighbours"] = neighbours.clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.batch_sampler is None:  # restored before setup() built the sampler (Lightning sets up first)
            self._pending_state = dict(state_dict)
            return
        if "epoch" in state_dict:
            self.batch_sampler.set_epoch(int(state_dict["epoch"]))
        neighbours = state_dict.get("neighbours")
        if neighbours is not None and isinstance(self.batch_sampler, NearestNeighbourBatchSampler):
            self.batch_sampler.set_neighbours(neighbours)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches of the upright-image family get their random affine here, on the training device (the
        evaluation and teacher passes run their own loops and never come through this hook)."""
        trainer = getattr(self, "trainer", None)
        if self.batch_augmentation is not None and trainer is not None and trainer.training:
            images, *rest = batch
            batch = [self.batch_augmentation(images), *rest]
        return batch

    def _loader_kwargs(self) -> dict:
        workers = self.cfg.loader.num_workers
        kwargs = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": self._on_cuda()}
        if workers > 0:  # DataLoader rejects prefetch_factor without workers
            kwargs["prefetch_factor"] = self.cfg.loader.prefetch_factor
        return kwargs

    def _on_cuda(self) -> bool:
        """Page-locked host memory speeds up (and overlaps) the copy to a GPU; on a CPU run it only costs memory."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def train_dataloader(self) -> DataLoader:
        # An own generator for the loader's base seed: creating its iterator then draws nothing from the global
        # torch RNG. Lightning creates the first iterator of a fit before on_train_epoch_start, so on a resumed
        # run that draw would otherwise fall before the restored RNG state and shift every later augmentation.
        generator = torch.Generator().manual_seed(self.seed)
        return LazyStartDataLoader(
            self.train_set, batch_sampler=self.batch_sampler, generator=generator, **self._loader_kwargs()
        )

    def _sharded(self, dataset: RetrievalDataset) -> DataLoader:
        rank, world = self.rank_and_world
        kwargs = self._loader_kwargs()
        kwargs["persistent_workers"] = False  # iterated once per epoch, outside Lightning's loops
        return DataLoader(
            dataset,
            batch_size=self.cfg.loader.eval_batch_size,
            shuffle=False,
            sampler=ShardSampler(len(dataset), rank, world),
            **kwargs,
        )

    def train_embedding_dataloader(self) -> DataLoader:
        """The training split with the eval transform, for the teacher's embedding pass."""
        return self._sharded(self.train_eval_set)

    def test_embedding_dataloader(self) -> DataLoader:
        return self._sharded(self.test_set)
