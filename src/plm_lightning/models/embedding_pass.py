"""Embed a whole split across processes and gather it by dataset index (DINO-style distributed kNN evaluation).

Each rank embeds its shard; (index, embedding, label) are padded to equal length for all_gather, then padding and
duplicate indices are dropped and the rows are sorted by dataset index, so every rank holds the same tensors as a
single process would.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader


@torch.no_grad()
def embed_loader(
    model: nn.Module, loader: DataLoader, device: torch.device, autocast: Optional[Callable[[], ContextManager]] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, float32 embeddings, labels) of this process's shard, on ``device``."""
    was_training = model.training
    model.eval()
    # "bf16-true" / "16-true" / "64-true" precision converts the weights, and these loops run outside Lightning's,
    # which would convert the batch: cast floating-point inputs to the weights' dtype (a no-op for float32 weights).
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    input_dtype = weight.dtype if weight is not None else None
    idx, emb, lab = [], [], []
    try:
        for images, labels, indices in loader:
            images = images.to(device, non_blocking=True)
            if input_dtype is not None and images.is_floating_point() and images.dtype != input_dtype:
                images = images.to(input_dtype)
            with autocast() if autocast is not None else nullcontext():
                out = model(images)
            emb.append(out.float())  # mixed precision: cast before anything normalises or searches
            lab.append(labels.to(device))
            idx.append(indices.to(device))
    finally:
        model.train(was_training)
    if not emb:
        dim = getattr(getattr(model, "head", None), "linear", None)
        d = dim.out_features if dim is not None else 0
        return (
            torch.empty(0, dtype=torch.long, device=device),
            torch.empty(0, d, device=device),
            torch.empty(0, dtype=torch.long, device=device),
        )
    return torch.cat(idx), torch.cat(emb), torch.cat(lab)


def gather_by_index(
    all_gather: Callable[[torch.Tensor], torch.Tensor],
    world_size: int,
    indices: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather shards from all ranks; drop padding and duplicate indices; sort by index."""
    if world_size > 1:
        count = torch.tensor([indices.numel()], device=indices.device)
        n_max = int(all_gather(count).max())
        pad = n_max - indices.numel()
        indices = torch.cat([indices, indices.new_full((pad,), -1)])
        embeddings = torch.cat([embeddings, embeddings.new_zeros(pad, embeddings.shape[1])])
        labels = torch.cat([labels, labels.new_full((pad,), -1)])
        indices = all_gather(indices).reshape(-1)
        embeddings = all_gather(embeddings).reshape(-1, embeddings.shape[1])
        labels = all_gather(labels).reshape(-1)
    valid = indices >= 0
    indices, embeddings, labels = indices[valid], embeddings[valid], labels[valid]
    order = torch.argsort(indices, stable=True)
    indices, embeddings, labels = indices[order], embeddings[order], labels[order]
    first = torch.ones_like(indices, dtype=torch.bool)
    first[1:] = indices[1:] != indices[:-1]
    return indices[first], embeddings[first], labels[first]
