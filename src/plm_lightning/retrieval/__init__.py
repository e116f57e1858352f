"""Exact nearest-neighbour retrieval and the metric-learning evaluation protocol.

Independent of Lightning: plain torch (faiss optional).
"""

from .evaluate import evaluate_embeddings, evaluate_query_gallery, evaluate_split, format_recall_table
from .metrics import map_at_r, nmi, r_precision, recall_at_k
from .ranks import PositiveRanks, positive_ranks
from .result import RetrievalResult
from .search import faiss_available, knn_search

__all__ = [
    "evaluate_embeddings",
    "evaluate_query_gallery",
    "evaluate_split",
    "faiss_available",
    "format_recall_table",
    "knn_search",
    "map_at_r",
    "nmi",
    "PositiveRanks",
    "positive_ranks",
    "r_precision",
    "RetrievalResult",
    "recall_at_k",
]
