"""Hard-negative mining with the current model, and teacher scores from a reranker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from bgekit.errors import InputError
from bgekit.index.chunking import encoding_text
from bgekit.index.documents import Document

if TYPE_CHECKING:
    from bgekit.models import Embedder, Reranker
    from bgekit.train.data import TrainExample


def _pool(examples: Sequence[TrainExample]) -> list[Document]:
    """Without a corpus, candidates are every positive and negative in the data."""
    texts = dict.fromkeys(t for ex in examples for t in (*ex.pos, *ex.neg))
    return [Document(str(i), t) for i, t in enumerate(texts)]


def mine_hard_negatives(
    embedder: Embedder,
    examples: Sequence[TrainExample],
    corpus: Sequence[Document] | None = None,
    *,
    rank_range: tuple[int, int] = (10, 100),
    negatives: int = 15,
    seed: int = 42,
) -> list[TrainExample]:
    """Replace each example's negatives with ``negatives`` passages drawn at random from
    ranks ``[start, end)`` (0-based) of a dense search with ``embedder`` over ``corpus``
    (or over all texts in the data). Positives and the query itself are never drawn; when
    the range holds too few, the rest come from random corpus documents. Deterministic for
    a given ``seed``. Teacher scores are dropped (they no longer match)."""
    from bgekit.index import Index, IndexConfig

    start, end = rank_range
    if not 0 <= start < end:
        raise InputError(f"rank range must satisfy 0 <= start < end, got {start}:{end}")
    if negatives < 1:
        raise InputError(f"negatives must be at least 1, got {negatives}")
    docs = list(corpus) if corpus is not None else _pool(examples)
    texts = [encoding_text(d, d.text) for d in docs]
    # One chunk per document (cut at the model's passage length, as training will see it).
    index = Index(embedder, IndexConfig(outputs=("dense",), chunk_tokens=1 << 30, chunk_overlap=0))
    index.add(docs)
    hits = index.search([ex.query for ex in examples], k=min(end, len(docs)), mode="dense")
    position = {d.id: i for i, d in enumerate(docs)}
    rng = np.random.default_rng(seed)
    out = []
    for ex, found in zip(examples, hits, strict=True):
        banned = {*ex.pos, ex.query}
        ranked = [position[h.id] for h in found[start:end]]
        pool = [i for i in ranked if texts[i] not in banned]
        if len(pool) >= negatives:
            chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=negatives, replace=False))]
        else:
            chosen = list(pool)
            taken = set(pool)
            others = [int(i) for i in rng.permutation(len(docs)) if texts[i] not in banned and i not in taken]
            chosen += others[: negatives - len(pool)]
        out.append(replace(ex, neg=tuple(texts[i] for i in chosen), pos_scores=None, neg_scores=None))
    return out


def add_teacher_scores(reranker: Reranker, examples: Sequence[TrainExample]) -> list[TrainExample]:
    """Score every (query, positive) and (query, negative) pair with ``reranker`` (logits)."""
    pairs = [(ex.query, p) for ex in examples for p in (*ex.pos, *ex.neg)]
    scores = reranker.score(pairs).tolist()
    out = []
    at = 0
    for ex in examples:
        n_pos, n_neg = len(ex.pos), len(ex.neg)
        out.append(
            replace(
                ex,
                pos_scores=tuple(scores[at : at + n_pos]),
                neg_scores=tuple(scores[at + n_pos : at + n_pos + n_neg]),
            )
        )
        at += n_pos + n_neg
    return out
