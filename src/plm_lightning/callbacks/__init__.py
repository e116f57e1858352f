"""Lightning callbacks: retrieval evaluation, similarity-quality diagnostics, plots, throughput, stopping and SLURM
requeueing."""

from plm_lightning.callbacks.retrieval_evaluation import RetrievalEvaluation
from plm_lightning.callbacks.run_plots import RunPlots
from plm_lightning.callbacks.similarity_quality import SimilarityQualityMonitor
from plm_lightning.callbacks.slurm_requeue import SlurmRequeue
from plm_lightning.callbacks.stop_after_epochs import StopAfterEpochs
from plm_lightning.callbacks.throughput import Throughput

__all__ = [
    "RetrievalEvaluation",
    "RunPlots",
    "SimilarityQualityMonitor",
    "SlurmRequeue",
    "StopAfterEpochs",
    "Throughput",
]
