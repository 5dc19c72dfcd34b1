"""Evaluation: BEIR-layout retrieval (pytrec_eval metrics; text, or images for image models:
see :func:`load_beir`), reranking, STS, an MTEB adapter, and the reference's benchmark suites
(MIRACL, MKQA, MLDR, MS MARCO, BRIGHT: :func:`evaluate_suite`) with their reports."""

from bgekit.eval.data import RetrievalDataset, StsDataset, load_beir, load_sts
from bgekit.eval.metrics import METRICS, compute_metrics
from bgekit.eval.mteb_adapter import MtebEncoder
from bgekit.eval.mteb_run import evaluate_mteb, mteb_tasks
from bgekit.eval.report import SuiteScores, write_report
from bgekit.eval.retrieval import RetrievalEvalConfig, RetrievalReport, evaluate_retrieval, write_trec_run
from bgekit.eval.sts import StsReport, evaluate_sts
from bgekit.eval.suite_run import SuiteRunConfig, evaluate_suite
from bgekit.eval.suites import SUITES, Suite, answer_recall, has_answer, load_subset, reference_metrics

__all__ = [
    "METRICS",
    "SUITES",
    "MtebEncoder",
    "RetrievalDataset",
    "RetrievalEvalConfig",
    "RetrievalReport",
    "StsDataset",
    "StsReport",
    "Suite",
    "SuiteRunConfig",
    "SuiteScores",
    "answer_recall",
    "compute_metrics",
    "evaluate_mteb",
    "evaluate_retrieval",
    "evaluate_sts",
    "evaluate_suite",
    "has_answer",
    "load_beir",
    "load_sts",
    "load_subset",
    "mteb_tasks",
    "reference_metrics",
    "write_report",
    "write_trec_run",
]
