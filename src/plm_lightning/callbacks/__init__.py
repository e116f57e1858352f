"""Lightning callbacks: retrieval evaluation (and later diagnostics and plots)."""
from plm_lightning.callbacks.retrieval_evaluation import RetrievalEvaluation

__all__ = ["RetrievalEvaluation"]
