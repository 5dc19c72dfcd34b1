"""Evaluation: BEIR-layout retrieval (pytrec_eval metrics; text, or images for image models:
see :func:`load_beir`), reranking, STS, and an MTEB adapter."""

from bgekit.eval.data import RetrievalDataset, StsDataset, load_beir, load_sts
from bgekit.eval.metrics import METRICS, compute_metrics
from bgekit.eval.mteb_adapter import MtebEncoder
from bgekit.eval.retrieval import RetrievalEvalConfig, RetrievalReport, evaluate_retrieval, write_trec_run
from bgekit.eval.sts import StsReport, evaluate_sts

__all__ = [
    "METRICS",
    "MtebEncoder",
    "RetrievalDataset",
    "RetrievalEvalConfig",
    "RetrievalReport",
    "StsDataset",
    "StsReport",
    "compute_metrics",
    "evaluate_retrieval",
    "evaluate_sts",
    "load_beir",
    "load_sts",
    "write_trec_run",
]
