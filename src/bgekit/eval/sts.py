"""Semantic textual similarity: Spearman and Pearson of cosine similarity against gold."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from bgekit.eval.data import StsDataset
from bgekit.models import Embedder


@dataclass(frozen=True)
class StsReport:
    metrics: dict[str, float]  # spearman, pearson (fractions)
    model: str
    dataset: str
    num_pairs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_sts(dataset: StsDataset, embedder: Embedder) -> StsReport:
    """Both sides encoded as documents (no instruction), each distinct sentence once."""
    start = time.perf_counter()
    unique = list(dict.fromkeys([*dataset.first, *dataset.second]))
    where = {t: i for i, t in enumerate(unique)}
    dense = embedder.encode(unique).dense
    assert dense is not None
    unit = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    a = unit[[where[t] for t in dataset.first]]
    b = unit[[where[t] for t in dataset.second]]
    cosine = np.einsum("ij,ij->i", a, b)
    gold = np.asarray(dataset.gold)
    return StsReport(
        metrics={
            "spearman": float(spearmanr(cosine, gold).statistic),
            "pearson": float(pearsonr(cosine, gold).statistic),
        },
        model=embedder.info.name,
        dataset=dataset.name,
        num_pairs=len(gold),
        seconds=time.perf_counter() - start,
    )
