"""An exported search index: a FAISS flat index over a set of embeddings, with their labels, paths and a metadata
record beside it in one folder (written by plm-embed, read by plm-search and the notebooks).

    OUT/embeddings.npy   float32 N x d (L2-normalised when the model's eval.normalize is on)
    OUT/labels.npy       int64 N (class index, or -1 when unknown)
    OUT/paths.txt        one path (or dataset id such as ``digits:test:12``) per line
    OUT/meta.json        checkpoint, model, transform, metric, ...
    OUT/index.faiss      IndexFlatIP (inner product = cosine on normalised rows) or IndexFlatL2

Exact search: a flat index compares every item. Plain numpy + faiss, no torch or Lightning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from plm_lightning.utils.io import atomic_write, atomic_write_text

EMBEDDINGS = "embeddings.npy"
LABELS = "labels.npy"
PATHS = "paths.txt"
META = "meta.json"
INDEX = "index.faiss"
METRICS = ("inner_product", "l2")


def _faiss() -> Any:  # faiss has no type hints
    try:
        import faiss
    except ImportError:
        raise ImportError("the search index needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def metric_for(normalized: bool) -> str:
    """Inner product on unit vectors ranks exactly as Euclidean distance does, and reads as a cosine similarity."""
    return "inner_product" if normalized else "l2"


def build_index(embeddings: np.ndarray, metric: str) -> Any:
    """A faiss flat index (exact) holding ``embeddings`` (N x d) in row order: id i is row i."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be N x d with d > 0, got shape {x.shape}")
    faiss = _faiss()
    index = faiss.IndexFlatIP(x.shape[1]) if metric == "inner_product" else faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


def search_index(
    index: Any, queries: np.ndarray, k: int, *, metric: str, exclude: Optional[Sequence[int]] = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k best items of each query: (scores, ids), each len(queries) x k, best first.

    Scores are similarities (inner product, higher is better) or Euclidean distances (l2, lower is better).
    ``exclude[i]`` is an id removed from query i's results by id, not by rank (an indexed item querying the rest).
    Ties are ordered by id among the candidates faiss returns. Rows with fewer than k results are padded with id
    -1 and score nan.
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n = index.ntotal
    extra = 0 if exclude is None else 1
    depth = min(n, k + extra)
    if depth <= 0 or q.shape[0] == 0:
        return np.full((q.shape[0], k), np.nan, np.float32), np.full((q.shape[0], k), -1, np.int64)
    scores, ids = index.search(q, depth)
    higher_better = metric == "inner_product"
    out_s = np.full((q.shape[0], k), np.nan, np.float32)
    out_i = np.full((q.shape[0], k), -1, np.int64)
    for row in range(q.shape[0]):
        keep = ids[row] >= 0
        if exclude is not None:
            keep &= ids[row] != int(exclude[row])
        s, i = scores[row][keep], ids[row][keep]
        order = np.lexsort((i, -s if higher_better else s))[:k]
        out_s[row, : order.size], out_i[row, : order.size] = s[order], i[order]
    if not higher_better:  # faiss's L2 index gives squared distances
        out_s = np.sqrt(np.maximum(out_s, 0), where=~np.isnan(out_s), out=out_s)
    return out_s, out_i


@dataclass
class ExportedIndex:
    """An export folder in memory."""

    directory: Path
    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    index: Any = None

    @property
    def metric(self) -> str:
        return str(self.meta.get("metric", "inner_product"))

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def search(
        self, queries: np.ndarray, k: int, exclude: Optional[Sequence[int]] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best items per query; see :func:`search_index`."""
        return search_index(self.index, queries, k, metric=self.metric, exclude=exclude)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ExportedIndex:
        """Read an export folder; ValueError (one line) naming what is missing or inconsistent."""
        d = Path(directory)
        if not d.is_dir():
            raise ValueError(f"{directory}: not a folder (plm-embed --output writes one)")
        missing = [name for name in (EMBEDDINGS, LABELS, PATHS, META, INDEX) if not (d / name).is_file()]
        if missing:
            raise ValueError(f"{directory}: not an export folder of plm-embed (missing {', '.join(missing)})")
        try:
            meta = json.loads((d / META).read_text())
            emb = np.load(d / EMBEDDINGS, allow_pickle=False)
            labels = np.load(d / LABELS, allow_pickle=False)
            paths = (d / PATHS).read_text().splitlines()
            index = _faiss().read_index(str(d / INDEX))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{directory}: cannot read the export: {str(exc).splitlines()[0]}") from None
        _require_finite_rows(emb, f"{directory}: the exported embeddings")
        if not (emb.shape[0] == labels.shape[0] == len(paths) == index.ntotal):
            raise ValueError(
                f"{directory}: inconsistent export ({emb.shape[0]} embeddings, {labels.shape[0]} labels, "
                f"{len(paths)} paths, {index.ntotal} indexed)"
            )
        return cls(d, emb, labels, paths, meta, index)


def _require_finite_rows(emb: np.ndarray, what: str) -> None:
    if emb.size and not np.isfinite(emb).all():
        rows = int((~np.isfinite(emb).all(axis=1)).sum()) if emb.ndim == 2 else -1
        raise ValueError(f"{what}: {rows} of {emb.shape[0]} rows hold NaN or inf (a diverged model)")


def write_export(
    directory: str | os.PathLike[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    meta: dict[str, Any],
) -> ExportedIndex:
    """Write the five files (each atomically) and return the export. ``meta['metric']`` picks the index type."""
    d = Path(directory)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=np.int64)
    if not (emb.shape[0] == lab.shape[0] == len(paths)):
        raise ValueError(f"{emb.shape[0]} embeddings, {lab.shape[0]} labels and {len(paths)} paths")
    _require_finite_rows(emb, "embeddings to export")
    bad = [p for p in paths if "\n" in p or "\r" in p]
    if bad:
        raise ValueError(f"a path contains a line break and cannot be listed in {PATHS}: {bad[0]!r}")
    meta = {**meta, "count": int(emb.shape[0]), "embedding_dim": int(emb.shape[1]) if emb.ndim == 2 else 0}
    index = build_index(emb, meta["metric"])
    faiss = _faiss()
    (d / META).unlink(missing_ok=True)  # re-exporting into a folder: no stale meta.json beside half-new files

    def save_npy(array: np.ndarray) -> Callable[[str], None]:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a bare name
                np.save(f, array, allow_pickle=False)

        return write

    atomic_write(d / EMBEDDINGS, save_npy(emb))
    atomic_write(d / LABELS, save_npy(lab))
    atomic_write_text(d / PATHS, "".join(f"{p}\n" for p in paths))
    atomic_write(d / INDEX, lambda tmp: faiss.write_index(index, tmp))
    # meta.json last: its presence says the rest is complete.
    atomic_write_text(d / META, json.dumps(meta, indent=2) + "\n")
    return ExportedIndex(d, emb, lab, list(paths), meta, index)
