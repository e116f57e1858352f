"""Lightning callbacks: retrieval evaluation (and later diagnostics and plots)."""
from plm_lightning.callbacks.retrieval_evaluation import RetrievalEvaluation
from plm_lightning.callbacks.similarity_quality import SimilarityQualityMonitor
from plm_lightning.callbacks.stop_after_epochs import StopAfterEpochs

__all__ = ["RetrievalEvaluation", "SimilarityQualityMonitor", "StopAfterEpochs"]
