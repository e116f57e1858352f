"""One evaluation of a test split as an object: its metrics and the embeddings they were computed from.

What shows an evaluation (the run's retrieval grid, a search over the split) reads the result instead of embedding
the split again, and ranks with the search that plm-search runs over an exported index
(:func:`.index.search_index`), under the split's protocol: same-set (every other item; the query excluded by id) or
query -> gallery where the split has a query mask (In-Shop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .index import build_index, metric_for, search_index


@dataclass(frozen=True)
class RetrievalResult:
    metrics: dict[str, float]  # percentages, as evaluate_embeddings returns them
    embeddings: torch.Tensor  # N x d, dataset order, CPU
    labels: torch.Tensor  # N
    query_mask: Optional[torch.Tensor] = None  # N booleans: the query items (the rest is the gallery), or None
    normalize: bool = True  # the metrics ranked L2-normalised embeddings

    @property
    def metric(self) -> str:
        """How scores read: "inner_product" (cosine similarity, higher first) or "l2" (distance, lower first)."""
        return metric_for(self.normalize)

    def gallery_ids(self) -> np.ndarray:
        if self.query_mask is None:
            return np.arange(self.embeddings.shape[0])
        return np.flatnonzero(~self.query_mask.numpy())

    def search(self, queries: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best results of each query item (dataset indices), best first, ties by id; rows
        with fewer than k candidates are padded with id -1 and score nan (see search_index)."""
        rows = self.embeddings.float()
        if self.normalize:
            rows = F.normalize(rows, dim=1)
        x = rows.numpy()
        gallery = self.gallery_ids()
        query_ids = np.asarray(list(queries), dtype=np.int64)
        index = build_index(x[gallery], self.metric)
        # Same-set: the query is a gallery item itself (position == id) and never its own result.
        exclude = query_ids.tolist() if self.query_mask is None else None
        scores, positions = search_index(index, x[query_ids], k, metric=self.metric, exclude=exclude)
        ids = np.where(positions >= 0, gallery[np.maximum(positions, 0)], -1)
        return scores, ids
