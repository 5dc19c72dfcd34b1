"""Retrieval metrics from pytrec_eval (trec_eval's implementation), reported as fractions."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bgekit.errors import BgekitError

# name in reports -> key in pytrec_eval's per-query output
METRICS: dict[str, str] = {
    **{f"ndcg@{k}": f"ndcg_cut_{k}" for k in (1, 3, 5, 10, 100)},
    **{f"recall@{k}": f"recall_{k}" for k in (10, 100, 1000)},
    "map": "map",
}
_MEASURES = {"ndcg_cut.1,3,5,10,100", "recall.10,100,1000", "map"}
MRR_DEPTH = 10

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def _top(run: Run, depth: int) -> dict[str, dict[str, float]]:
    """Each query's ``depth`` best documents; ties go to the larger document id, the order
    trec_eval itself ranks them in."""
    out = {}
    for qid, docs in run.items():
        by_id = sorted(docs.items(), key=lambda kv: kv[0], reverse=True)
        out[qid] = dict(sorted(by_id, key=lambda kv: -kv[1])[:depth])
    return out


def require_metrics() -> None:
    """Refuse, with the install command, before any work when pytrec_eval is missing (it
    is an extra: an evaluation would otherwise stop after minutes of encoding)."""
    try:
        import pytrec_eval  # noqa: F401
    except ImportError:
        raise BgekitError(
            "retrieval metrics need pytrec_eval, which is not installed: pip install 'bgekit[eval]'"
        ) from None


def compute_metrics(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean over the judged queries of nDCG@{1,3,5,10,100}, Recall@{10,100,1000}, MAP
    (all from pytrec_eval on ``run``) and MRR@10 (pytrec_eval's ``recip_rank`` on the
    run cut to each query's 10 best). Queries missing from ``run`` count as zero.
    """
    import pytrec_eval

    judged = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    scored = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    per_query = pytrec_eval.RelevanceEvaluator(judged, _MEASURES).evaluate(scored)
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_top(scored, MRR_DEPTH))
    out = {}
    for name, key in METRICS.items():
        out[name] = float(np.mean([per_query.get(q, {}).get(key, 0.0) for q in judged]))
    out[f"mrr@{MRR_DEPTH}"] = float(np.mean([mrr.get(q, {}).get("recip_rank", 0.0) for q in judged]))
    return out
