"""BM25 (Lucene scoring), the classic baseline: bm25s tokenises and builds the score
matrix; scoring reads the matrix, so a saved one answers queries without a rebuild."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bgekit.errors import BgekitError
from bgekit.types import Ranking

# The arrays that hold a built BM25: the (documents x terms) score matrix in CSC form.
ARRAYS = ("bm25_data", "bm25_indices", "bm25_indptr")


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError:
        raise BgekitError("BM25 needs the bm25s package: pip install bm25s") from None
    return bm25s


def _stemmer() -> Any:
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords


class Bm25:
    """BM25 over ``docs``: lowercased word tokens, English stopwords removed, Snowball
    English stemming (when PyStemmer is installed), Lucene BM25 with k1=1.5, b=0.75."""

    def __init__(self, docs: Sequence[str], *, k1: float = 1.5, b: float = 0.75, progress: bool = False):
        bm25s = _bm25s()
        stem = _stemmer()
        index = bm25s.BM25(k1=k1, b=b, method="lucene")
        tokens = bm25s.tokenize(list(docs), stopwords="en", stemmer=stem, show_progress=progress)
        index.index(tokens, show_progress=progress)
        vocab = [""] * len(index.vocab_dict)
        for term, i in index.vocab_dict.items():
            vocab[int(i)] = str(term)
        m = index.scores
        self._set(m["data"], m["indices"], m["indptr"], vocab, len(docs), stem)
        self.k1, self.b = k1, b

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        vocab: Sequence[str],
        *,
        n_docs: int,
        stemmed: bool,
        k1: float,
        b: float,
    ) -> Bm25:
        """A BM25 saved with :meth:`arrays` and :attr:`vocab` (no rebuild)."""
        stem = _stemmer() if stemmed else None
        if stemmed and stem is None:
            raise BgekitError("this BM25 was built with English stemming; install PyStemmer")
        self = cls.__new__(cls)
        self._set(arrays["bm25_data"], arrays["bm25_indices"], arrays["bm25_indptr"], vocab, n_docs, stem)
        self.k1, self.b = k1, b
        return self

    def _set(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        indptr: np.ndarray,
        vocab: Sequence[str],
        n_docs: int,
        stem: Any,
    ) -> None:
        self._data, self._indices, self._indptr = data, indices, indptr
        self.vocab = list(vocab)
        # terms past the matrix's columns (bm25s adds an empty term) score nothing
        self._term_ids = {t: i for i, t in enumerate(self.vocab) if i < len(indptr) - 1}
        self.n_docs = n_docs
        self._stem = stem  # the stemming function, or None
        self.stemmed = stem is not None

    def arrays(self) -> dict[str, np.ndarray]:
        """The score matrix, to save beside :attr:`vocab` (the terms, by column)."""
        return {
            "bm25_data": np.asarray(self._data, dtype=np.float32),
            "bm25_indices": np.asarray(self._indices, dtype=np.int32),
            "bm25_indptr": np.asarray(self._indptr, dtype=np.int64),
        }

    def terms(self, query: str) -> list[str]:
        """The query's terms as the documents were tokenised."""
        return list(
            _bm25s().tokenize(
                [query], stopwords="en", stemmer=self._stem, return_ids=False, show_progress=False
            )[0]
        )

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every document (zeros when no term matches);
        a term given twice counts twice."""
        out = np.zeros(self.n_docs, dtype=np.float32)
        for term in self.terms(query):
            col = self._term_ids.get(term)
            if col is not None:
                start, end = int(self._indptr[col]), int(self._indptr[col + 1])
                out[self._indices[start:end]] += self._data[start:end]  # rows are unique per column
        return out

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        """The ``k`` best documents per query, best first (ties: lower index); documents
        sharing no term with the query are not hits."""
        out = []
        for query in queries:
            s = self.scores(query)
            hits = np.flatnonzero(s > 0)
            order = np.lexsort((hits, -s[hits]))[:k]
            out.append(Ranking(hits[order].astype(np.int64), s[hits[order]]))
        return out
