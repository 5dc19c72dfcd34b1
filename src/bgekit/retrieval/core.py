"""The one search core: which scorers a mode uses, candidate selection, per-scorer scores
(through :mod:`bgekit.scoring`) and fusion. The embedded index, evaluation and the server
all search through :func:`search`.

- ``dense``, ``sparse``, ``bm25``: every row is scored; lexical scorers leave out rows that
  share no term with the query.
- ``multivector`` and ``hybrid``: the union of each first-stage scorer's top
  ``max(candidates, k)`` rows (dense and lexical: the sparse head, or BM25 when there is
  none) is scored by every scorer in use, then fused — by the weighted sum divided by the
  sum of the weights (BGE-M3's rule), or by reciprocal-rank fusion, the automatic choice
  when BM25 takes part because its scores are on another scale (a lexical scorer that
  matched none of a query's candidates, e.g. for an image query, sits out its RRF).
  ``candidates=None`` scores every row.

A row mask (``allowed``: a metadata filter's verdict per row) restricts every scorer's
top list and every candidate set to the allowed rows before fusion, so a filtered search
returns what filtering the exact ranking would.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from bgekit.errors import InputError
from bgekit.retrieval.corpus import Corpus
from bgekit.scoring import (
    maxsim_packed,
    reciprocal_rank_fusion,
    sparse_postings_scores,
    weighted_fusion,
)
from bgekit.types import SEARCH_MODES, Encoded, OutputKind, Ranking, Scorer, SearchMode, canonical

# Candidates per first-stage scorer, measured on SciFact (benchmarks/RESULTS.md, issue 12).
DEFAULT_CANDIDATES = 100
# Entries of one (queries x rows) dense score block: 64 MB of float32.
BLOCK = 1 << 24
# Above this many rows, a single query's dense top list comes from faiss's exact scan
# (multi-threaded), measured faster than one numpy product on SciFact's 9,316 chunks.
SCAN_ROWS = 4096
_SLOT = {"dense": 0, "sparse": 1, "bm25": 1, "multivector": 2}
Fusion = Literal["auto", "weighted", "rrf"]


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best columns and their scores, best first (ties: lower column).

    >>> idx, val = top_k(np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]]), 2)
    >>> idx.tolist(), val.tolist()
    ([[1, 2], [0, 2]], [[0.9, 0.5], [3.0, 2.0]])
    """
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(vals, order, axis=1)


@dataclass(frozen=True, kw_only=True)
class HybridConfig:
    """How scorers are mixed. ``weights`` are (dense, lexical, multi-vector) — lexical is
    the sparse head, or BM25 for models without one; a zero weight leaves a scorer out of a
    hybrid. ``candidates``: rows each first-stage scorer contributes (at least ``k``);
    ``None`` scores every row. ``fusion``: ``"weighted"``, ``"rrf"``, or ``"auto"`` (RRF
    when BM25 takes part, else weighted)."""

    weights: tuple[float, float, float] = (0.4, 0.2, 0.4)
    candidates: int | None = DEFAULT_CANDIDATES
    fusion: Fusion = "auto"
    rrf_k: float = 60.0

    def __post_init__(self) -> None:
        if len(self.weights) != 3 or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise InputError(
                f"weights must be three non-negative numbers with a positive sum, got {self.weights}"
            )
        if self.candidates is not None and self.candidates < 1:
            raise InputError(f"candidates must be at least 1 (or None for all), got {self.candidates}")
        if self.fusion not in ("auto", "weighted", "rrf"):
            raise InputError(f"fusion must be 'auto', 'weighted' or 'rrf', got {self.fusion!r}")

    def fusion_for(self, scorers: Sequence[Scorer]) -> Literal["weighted", "rrf"]:
        if self.fusion != "auto":
            return self.fusion
        return "rrf" if "bm25" in scorers and len(scorers) > 1 else "weighted"


def _lexical(available: Sequence[Scorer]) -> Scorer | None:
    return "sparse" if "sparse" in available else "bm25" if "bm25" in available else None


def check_mode(mode: object) -> SearchMode:
    """``mode`` when it is a search mode, else an error naming the modes (the one check every
    entry point's search runs)."""
    if mode not in SEARCH_MODES:
        raise InputError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    return mode


def chunk_depth(k: int, n_rows: int | None = None) -> int:
    """Chunks to rank for ``k`` documents: a document may own several of the best chunks.

    >>> chunk_depth(10), chunk_depth(100), chunk_depth(10, n_rows=20)
    (60, 400, 20)
    """
    depth = max(4 * k, k + 50)
    return depth if n_rows is None else max(1, min(n_rows, depth))


def scorers_for(mode: SearchMode, available: Sequence[Scorer], config: HybridConfig) -> list[Scorer]:
    """The scorers ``mode`` uses on a corpus that offers ``available``."""
    check_mode(mode)
    if mode == "hybrid":
        w = config.weights
        picks = [(s, wt) for s, wt in (("dense", w[0]), (_lexical(available), w[1]), ("multivector", w[2]))]
        scorers: list[Scorer] = [s for s, wt in picks if s is not None and s in available and wt > 0]
        if not scorers:
            raise InputError(
                f"the hybrid weights {w} give every scorer this corpus has ({', '.join(available)}) zero weight"
            )
        return scorers
    if mode not in available:
        if mode == "bm25":
            raise InputError("bm25 needs the texts of the rows (none were given)")
        held = ", ".join(s for s in available if s != "bm25") or "no vectors"
        raise InputError(f"this index holds no {mode} vectors (it holds: {held})")
    return [mode]


def _first_stage(scorers: Sequence[Scorer], available: Sequence[Scorer]) -> list[Scorer]:
    """Scorers whose top lists make the candidates: the dense and lexical ones in use or,
    when only MaxSim is, the dense and lexical ones the corpus has."""
    first: list[Scorer] = [s for s in scorers if s != "multivector"]
    if first:
        return first
    lexical = _lexical(available)
    return [s for s in available if s == "dense" or s == lexical]


def query_outputs(
    mode: SearchMode, available: Sequence[Scorer], config: HybridConfig | None = None
) -> tuple[OutputKind, ...]:
    """The query encodings a search in ``mode`` needs (none for BM25 alone)."""
    return SearchPlan.make(mode, available, config).outputs


def _outputs_for(
    scorers: list[Scorer], available: Sequence[Scorer], cfg: HybridConfig
) -> tuple[OutputKind, ...]:
    need = set(scorers)
    if "multivector" in need and cfg.candidates is not None:
        need |= set(_first_stage(scorers, available))
    return canonical(need)


def _single(scorers: Sequence[Scorer]) -> bool:
    return len(scorers) == 1 and scorers[0] != "multivector"


@dataclass(frozen=True)
class SearchPlan:
    """One search's decisions, made once from the mode, the corpus's scorers and the hybrid
    config: the scorers, the first-stage ones, the query encodings needed, the fusion.
    The index, evaluation and the server build it once per search and pass it down."""

    mode: SearchMode
    scorers: tuple[Scorer, ...]
    first: tuple[Scorer, ...]  # candidate lists (empty: a single exhaustive scorer)
    outputs: tuple[OutputKind, ...]  # what the queries must be encoded with
    config: HybridConfig
    fusion: Literal["weighted", "rrf"]

    @classmethod
    def make(
        cls, mode: SearchMode, available: Sequence[Scorer], config: HybridConfig | None = None
    ) -> SearchPlan:
        cfg = config or HybridConfig()
        scorers = scorers_for(mode, available, cfg)
        return cls(
            mode=mode,
            scorers=tuple(scorers),
            first=() if _single(scorers) else tuple(_first_stage(scorers, available)),
            outputs=_outputs_for(scorers, available, cfg),
            config=cfg,
            fusion=cfg.fusion_for(scorers),
        )

    @property
    def single(self) -> bool:
        """One scorer that ranks every row on its own (no candidates, no fusion)."""
        return _single(self.scorers)


class _OneQuery:
    """One query's scores against the corpus; a scorer's full vector is computed once."""

    def __init__(
        self,
        corpus: Corpus,
        q: Encoded,
        qi: int,
        text: str | None,
        dense: np.ndarray | None,
        rows: np.ndarray | None = None,
    ):
        self.corpus, self.q, self.qi, self.text = corpus, q, qi, text
        self.rows = rows  # the rows a filter allows (None: every row)
        self._full: dict[str, np.ndarray] = {}
        if dense is not None:
            self._full["dense"] = np.asarray(dense, dtype=np.float32)

    def full(self, scorer: Scorer) -> np.ndarray:
        if scorer not in self._full:
            c, q, qi = self.corpus, self.q, self.qi
            if scorer == "dense":
                assert q.dense is not None and c.dense is not None
                out = c.dense.scores(q.dense[qi : qi + 1])[0]
            elif scorer == "sparse":
                assert q.sparse is not None
                out = sparse_postings_scores(c.postings(), q.sparse[qi])
            elif scorer == "bm25":
                assert self.text is not None
                out = c.bm25().scores(self.text)
            else:
                out = self.at("multivector", np.arange(c.n_rows))
            self._full[scorer] = np.asarray(out, dtype=np.float32)
        return self._full[scorer]

    def top(self, scorer: Scorer, n: int) -> np.ndarray:
        """The ``n`` best rows (of those allowed); lexical scorers leave out rows sharing no term."""
        if self.rows is not None:  # only the allowed rows are scored
            idx, val = top_k(self.at(scorer, self.rows)[None, :], n)
            keep = idx[0][val[0] > 0] if scorer in ("sparse", "bm25") else idx[0]
            return self.rows[keep]
        c, q = self.corpus, self.q
        fresh = scorer == "dense" and "dense" not in self._full
        if fresh and c.dense is not None and c.dense.dtype == "binary":
            assert q.dense is not None
            cand = c.dense.candidates(q.dense[self.qi], n)
            pick, _ = top_k(c.dense.scores_at(q.dense[self.qi], cand)[None, :], n)
            return cand[pick[0]]
        scan = c.dense is not None and c.dense.dtype == "float32" and c.n_rows > SCAN_ROWS
        if fresh and (c.hnsw is not None or scan):
            assert q.dense is not None
            index = c.ann() if c.hnsw is not None else c.flat()
            _, idx = index.search(np.ascontiguousarray(q.dense[self.qi : self.qi + 1], dtype=np.float32), n)
            return np.asarray(idx[0][idx[0] >= 0], dtype=np.int64)
        idx, val = top_k(self.full(scorer)[None, :], n)
        if scorer in ("sparse", "bm25"):
            return idx[0][val[0] > 0]
        return idx[0]

    def at(self, scorer: Scorer, rows: np.ndarray) -> np.ndarray:
        """Scores of ``rows``."""
        every = scorer == "dense" and len(rows) == self.corpus.n_rows  # one product, no gather
        if scorer in self._full or scorer in ("sparse", "bm25") or every:
            return self.full(scorer)[rows]
        c, q = self.corpus, self.q
        if scorer == "dense":
            assert q.dense is not None and c.dense is not None
            return c.dense.scores_at(q.dense[self.qi], rows)
        assert q.multivector is not None and c.multivector is not None and c.multivector_offsets is not None
        return maxsim_packed(q.multivector[self.qi], c.multivector, c.multivector_offsets, rows)


@dataclass(frozen=True)
class _Plan:
    """What one search call does for every query."""

    scorers: list[Scorer]
    first: list[Scorer]  # candidate lists (empty: a single exhaustive scorer)
    exhaustive: bool  # a fused search over every row
    depth: int
    k: int
    weights: list[float]
    fusion: Literal["weighted", "rrf"]
    rrf_k: float

    def rank(self, one: _OneQuery) -> Ranking:
        if not self.first and not self.exhaustive:
            s = self.scorers[0]
            rows = one.top(s, self.k)
            scores = one.at(s, rows)
            return Ranking(rows.astype(np.int64), scores, {s: scores})
        if self.exhaustive:
            cand = one.rows if one.rows is not None else np.arange(one.corpus.n_rows, dtype=np.int64)
        else:
            cand = np.unique(np.concatenate([one.top(s, self.depth) for s in self.first]))
        per = [one.at(s, cand) for s in self.scorers]
        # A lexical scorer that matched none of the candidates (an image query has no words)
        # only ranks ties: under RRF that order would be noise, so it sits this query out.
        voting = [
            p for s, p in zip(self.scorers, per, strict=True) if s == "dense" or s == "multivector" or p.any()
        ]
        if len(per) == 1:
            fused = per[0]
        elif self.fusion == "weighted":
            fused = weighted_fusion(per, self.weights)
        else:
            fused = reciprocal_rank_fusion(voting or per, k=self.rrf_k)
        pick, vals = top_k(np.asarray(fused, dtype=np.float32)[None, :], self.k)
        chosen = pick[0]
        modes: dict[str, np.ndarray] = {
            s: p[chosen].astype(np.float32) for s, p in zip(self.scorers, per, strict=True)
        }
        return Ranking(cand[chosen].astype(np.int64), vals[0].astype(np.float32), modes)


def search(
    corpus: Corpus,
    queries: Encoded,
    k: int,
    *,
    mode: SearchMode = "hybrid",
    config: HybridConfig | None = None,
    texts: Sequence[str] | None = None,
    progress: bool = False,
    plan: SearchPlan | None = None,
    allowed: np.ndarray | None = None,
) -> list[Ranking]:
    """The ``k`` best rows of ``corpus`` per query (see the module docstring).

    ``queries`` holds the encodings the plan names (:attr:`SearchPlan.outputs`; without a
    ``plan`` one is made from ``mode`` and ``config``); ``texts`` (the query texts) is
    needed when BM25 takes part; ``allowed`` (one bool per row) keeps the search to those
    rows. Rankings carry every scorer's score in ``modes``.
    """
    if plan is None:
        plan = SearchPlan.make(mode, corpus.scorers, config)
    cfg = plan.config
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    scorers = list(plan.scorers)
    if "bm25" in scorers and texts is None:
        raise InputError("bm25 needs the query texts")
    n_queries = len(texts) if texts is not None else len(queries)
    missing = [o for o in plan.outputs if o not in queries.outputs]
    if missing and n_queries:
        raise InputError(
            f"the query encodings hold no {', '.join(missing)} (the {plan.mode} search needs it)"
        )
    n = corpus.n_rows
    rows = None
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (n,):
            raise InputError(f"allowed must hold one flag per row ({n}), got shape {allowed.shape}")
        rows = None if allowed.all() else np.flatnonzero(allowed).astype(np.int64)
    if n == 0 or n_queries == 0 or (rows is not None and len(rows) == 0):
        return [Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(n_queries)]
    first = list(plan.first)
    rank = _Plan(
        scorers=scorers,
        first=first,
        exhaustive=not plan.single and (cfg.candidates is None or not first),
        depth=n if cfg.candidates is None else min(n, max(cfg.candidates, k)),
        k=k,
        weights=[cfg.weights[_SLOT[s]] for s in scorers],
        fusion=plan.fusion,
        rrf_k=cfg.rrf_k,
    )
    # Dense scores of every row, for a block of queries at a time (one matrix product).
    ranked_by = rank.first if rank.first and not rank.exhaustive else rank.scorers
    # one query over many rows: faiss's scan (see SCAN_ROWS); several: one product per block
    scan = n_queries == 1 and n > SCAN_ROWS and not rank.exhaustive and rows is None
    binary = corpus.dense is not None and corpus.dense.dtype == "binary"
    dense_full = (
        "dense" in ranked_by and (corpus.hnsw is None or rows is not None) and not scan and not binary
    )
    step = max(1, BLOCK // n) if dense_full else n_queries
    out: list[Ranking] = []
    # a bar on a terminal only: piped or logged stderr gets no carriage-return frames
    bar = tqdm(total=n_queries, desc="search", unit="query") if progress and sys.stderr.isatty() else None
    try:
        for start in range(0, n_queries, step):
            block = range(start, min(n_queries, start + step))
            dense = None
            if dense_full:
                assert queries.dense is not None and corpus.dense is not None
                dense = corpus.dense.scores(queries.dense[block.start : block.stop])
            for j, qi in enumerate(block):
                text = texts[qi] if texts is not None else None
                row = dense[j] if dense is not None else None
                out.append(rank.rank(_OneQuery(corpus, queries, qi, text, row, rows)))
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    return out
