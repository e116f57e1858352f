"""A trained model for inference: the student network of a plm-fit checkpoint with its evaluation transform,
embedding image files, in-memory images, or a dataset split, as float32 (L2-normalised when ``eval.normalize``).

The checkpoint is read as plain data (``torch.load(weights_only=True)``) by ``plm_lightning.checkpoints``; its
``hyper_parameters`` hold the run's config, from which the student is rebuilt here (without downloading pretrained
weights: the checkpoint has them). Embedding runs in float32 whatever ``trainer.precision`` the run trained with;
no Trainer is involved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from plm_lightning.data.images import UnreadableImageError, list_images, load_rgb
from plm_lightning.data.registry import DATASETS
from plm_lightning.data.transforms import build_transform
from plm_lightning.models.embedding_pass import embed_loader
from plm_lightning.models.head import backbone_input_channels, backbone_input_space, build_embedder
from plm_lightning.utils.checkpoint_io import require_finite

__all__ = ["FolderListing", "TrainedModel", "dataset_item_ids", "embed_folder", "list_folder", "trained_model"]


@dataclass
class TrainedModel:
    student: nn.Module
    cfg: DictConfig  # the run's config, from the checkpoint
    in_channels: int  # what the network takes
    ckpt: str
    device: torch.device

    # --- facts ---------------------------------------------------------------------------------------------------
    @property
    def normalize(self) -> bool:
        return bool(self.cfg.eval.normalize)

    @property
    def family(self) -> str:
        """The training data's family: "natural", "digits" (images) or "vector" (features, no images)."""
        return DATASETS[self.cfg.data.name].augmentation

    @property
    def image_mode(self) -> str:
        """The PIL mode that image files are converted to: what the training images were ("L" or "RGB")."""
        return "L" if DATASETS[self.cfg.data.name].input_channels(self.cfg.data) == 1 else "RGB"

    @property
    def embedding_dim(self) -> int:
        return int(self.cfg.model.embedding_dim)

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        """The evaluation transform of the training data, for image files."""
        data = self.cfg.data
        if self.family == "vector":
            raise ValueError(f"the checkpoint's model embeds vectors ({data.name}), not images")
        return self.eval_transform(data)

    def eval_transform(self, data_cfg: DictConfig) -> Callable[[Any], torch.Tensor]:
        """The evaluation transform for data described by ``data_cfg``, ending in the preprocessing the backbone's
        weights expect (as the DataModule builds it: same function, same arguments)."""
        cls = DATASETS[data_cfg.name]
        return build_transform(
            augmentation=cls.augmentation,
            train=False,
            augment=False,
            image_size=data_cfg.image_size,
            resize=data_cfg.resize,
            in_channels=cls.input_channels(data_cfg),
            out_channels=self.in_channels,
            input_space=backbone_input_space(self.cfg.model.backbone),
        )

    def describe(self) -> dict[str, Any]:
        """What meta.json records about the model."""
        transform = "vector (as is)" if self.family == "vector" else repr(self.image_transform())
        return {
            "checkpoint": str(Path(self.ckpt).resolve()),
            "backbone": self.cfg.model.backbone,
            "embedding_dim": self.embedding_dim,
            "normalized": self.normalize,
            "trained_on": self.cfg.data.name,
            "image_mode": None if self.family == "vector" else self.image_mode,
            "transform": " ".join(transform.split()),
        }

    # --- embedding -----------------------------------------------------------------------------------------------
    def finish(self, emb: torch.Tensor) -> np.ndarray:
        emb = emb.float().cpu()
        return (F.normalize(emb, dim=1) if self.normalize else emb).numpy().astype(np.float32)

    @torch.no_grad()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        self.student.eval()
        return self.finish(self.student(batch.to(self.device, torch.float32)))

    def embed_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Embed in-memory images (PIL images, or anything the transform takes)."""
        transform = self.image_transform()
        out = [
            self.embed_tensors(torch.stack([transform(self._mode(im)) for im in images[s : s + batch_size]]))
            for s in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 64,
    ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """(embeddings of the readable files, their positions in ``paths``, [(path, reason)] of the others).
        A file that cannot be decoded is skipped and reported, never fatal."""
        transform = self.image_transform()
        chunks: list[np.ndarray] = []
        ok: list[int] = []
        bad: list[tuple[str, str]] = []
        pending: list[torch.Tensor] = []
        for i, path in enumerate(paths):
            try:
                pending.append(transform(self._mode(load_rgb(path))))
                ok.append(i)
            except UnreadableImageError as exc:
                bad.append((str(path), exc.reason or str(exc)))
            if len(pending) == batch_size:
                chunks.append(self.embed_tensors(torch.stack(pending)))
                pending = []
        if pending:
            chunks.append(self.embed_tensors(torch.stack(pending)))
        emb = np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_dim), np.float32)
        return emb, ok, bad

    def embed_split(
        self, data_cfg: DictConfig, split: str = "test", batch_size: Optional[int] = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(embeddings, labels, ids) of a dataset split in dataset order, with the evaluation transform and loader
        that the training-time evaluation uses for this data config."""
        cls = DATASETS[data_cfg.name]
        dataset_channels = cls.input_channels(data_cfg)
        needed = backbone_input_channels(self.cfg.model.backbone, dataset_channels)
        if needed != self.in_channels:
            raise ValueError(
                f"the checkpoint's model takes {self.in_channels} input channels/features, the "
                f"{data_cfg.name} data gives {dataset_channels}"
            )
        dataset = cls.from_config(split, self.eval_transform(data_cfg), data_cfg)
        loader = DataLoader(dataset, batch_size=batch_size or data_cfg.loader.eval_batch_size, shuffle=False)
        _, emb, lab = embed_loader(self.student, loader, self.device)
        return self.finish(emb), lab.cpu().numpy().astype(np.int64), dataset_item_ids(dataset, data_cfg.name, split)

    def _mode(self, image: Any) -> Any:
        return image.convert(self.image_mode) if hasattr(image, "convert") else image


def dataset_item_ids(dataset: Any, name: str, split: str) -> list[str]:
    """The file of each item (absolute) where the dataset has files, else ``<name>:<split>:<index>`` (digits,
    synthetic)."""
    paths = getattr(dataset, "paths", None)
    if paths is not None and len(paths) == len(dataset):
        # Benchmark datasets list paths relative to their root; folder datasets hold full paths.
        root = Path(getattr(dataset, "root", None) or ".")
        return [str((root / p).resolve()) for p in paths]
    return [f"{name}:{split}:{i}" for i in range(len(dataset))]


def trained_model(state: dict[str, Any], cfg: DictConfig, ckpt: str, device: Optional[str] = None) -> TrainedModel:
    """The student of a loaded plm-fit checkpoint, rebuilt from ``cfg`` (the config it holds, merged onto the
    schema: checkpoints.checkpoint_config); ValueError (one line) when its weights do not fit.
    ``checkpoints.load_trained_model`` reads the file."""
    hp = state.get("hyper_parameters") or {}
    model = cfg.model
    in_channels = int(
        hp.get("in_channels")
        or backbone_input_channels(model.backbone, DATASETS[cfg.data.name].input_channels(cfg.data))
    )
    # pretrained=False: the checkpoint holds the trained weights; nothing is downloaded.
    student = build_embedder(
        model.backbone,
        embedding_dim=model.embedding_dim,
        pooling=model.pooling,
        pretrained=False,
        in_channels=in_channels,
        width=model.width,
    )
    weights = {k[len("student.") :]: v for k, v in state["state_dict"].items() if k.startswith("student.")}
    require_finite({f"student.{k}": v for k, v in weights.items()}, str(ckpt))
    try:
        student.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(
            f"{ckpt}: the student's weights do not fit the model its config describes: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from None
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    student = student.float().to(dev).eval()
    return TrainedModel(student, cfg, in_channels, str(ckpt), dev)


# --- folders of arbitrary images ----------------------------------------------------------------------------------
@dataclass
class FolderListing:
    paths: list[Path]
    labels: np.ndarray  # index into ``classes``, or -1 (files directly in the root, or no class folders)
    classes: list[str]
    ignored: list[Path]  # macOS ``._*`` resource forks next to images: never decoded


def list_folder(root: str | os.PathLike) -> FolderListing:
    """The image files below ``root`` (any depth, sorted); a file's label is its first-level folder when the
    root has class folders."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    paths = list_images(root)
    parts = [p.relative_to(root).parts for p in paths]
    classes = sorted({pp[0] for pp in parts if len(pp) > 1})
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[pp[0]] if len(pp) > 1 else -1 for pp in parts], dtype=np.int64)
    return FolderListing(paths, labels, classes, _resource_forks(root))


def _resource_forks(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.startswith("._")]
    return found


def embed_folder(
    model: TrainedModel, root: str | os.PathLike, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, list[str], FolderListing, list[tuple[str, str]]]:
    """(embeddings, labels, paths) of the readable images below ``root``, the listing, and the unreadable files."""
    listing = list_folder(root)
    emb, ok, bad = model.embed_files(listing.paths, batch_size=batch_size)
    return emb, listing.labels[ok], [str(listing.paths[i].resolve()) for i in ok], listing, bad
