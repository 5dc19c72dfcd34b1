"""BM25 through the bm25s library (Lucene scoring), the classic baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bgekit.errors import BgekitError
from bgekit.types import Ranking


def _stemmer() -> Any:
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords


class Bm25:
    """A bm25s index over ``docs``: lowercased word tokens, English stopwords removed,
    Snowball English stemming (when PyStemmer is installed), Lucene BM25 with k1=1.5, b=0.75."""

    def __init__(self, docs: Sequence[str], *, k1: float = 1.5, b: float = 0.75, progress: bool = False):
        try:
            import bm25s
        except ImportError:
            raise BgekitError("BM25 needs the bm25s package: pip install 'bgekit[eval]'") from None
        self._bm25s = bm25s
        self._stem = _stemmer()
        self._progress = progress
        self.n_docs = len(docs)
        self._index = bm25s.BM25(k1=k1, b=b, method="lucene")
        tokens = bm25s.tokenize(list(docs), stopwords="en", stemmer=self._stem, show_progress=progress)
        self._index.index(tokens, show_progress=progress)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every document (zeros when no term matches)."""
        tokens = self._bm25s.tokenize(
            [query], stopwords="en", stemmer=self._stem, return_ids=False, show_progress=False
        )[0]
        known = [t for t in tokens if t in self._index.vocab_dict]
        if not known:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self._index.get_scores(known), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        k = min(k, self.n_docs)
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", stemmer=self._stem, show_progress=False)
        idx, scores = self._index.retrieve(tokens, k=k, show_progress=self._progress, n_threads=0)
        out = []
        for i, s in zip(idx, scores, strict=True):
            keep = s > 0  # documents sharing no term with the query are not hits
            out.append(Ranking(np.asarray(i[keep], dtype=np.int64), np.asarray(s[keep], dtype=np.float32)))
        return out
