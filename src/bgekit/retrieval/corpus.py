"""The rows a search reads: a dense matrix, sparse rows with their inverted index, packed
multi-vectors, and BM25 over the rows' texts — built once, derived structures cached."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from bgekit.errors import InputError
from bgekit.retrieval.bm25 import Bm25
from bgekit.retrieval.dense_store import DenseStore
from bgekit.scoring.quantize import DenseDtype
from bgekit.scoring.sparse import to_csr
from bgekit.types import Encoded, OutputKind, Scorer


def available_scorers(outputs: Sequence[OutputKind], texts: bool) -> tuple[Scorer, ...]:
    """The scorers of rows holding ``outputs`` (and their texts, for BM25), in hybrid order.

    >>> available_scorers(("dense", "multivector"), texts=True)
    ('dense', 'bm25', 'multivector')
    """
    have: list[Scorer] = [o for o in ("dense", "sparse") if o in outputs]
    if texts:
        have.append("bm25")
    if "multivector" in outputs:
        have.append("multivector")
    return tuple(have)


@dataclass(frozen=True)
class Hnsw:
    """Approximate dense search (faiss HNSW) instead of the exact product."""

    m: int = 32
    ef_search: int = 128


class Corpus:
    """Searchable rows (documents, or chunks of them). Any output may be absent; BM25 is
    available when the rows' texts are (given as a list or a function that makes one,
    called the first time BM25 is needed), or built already (``bm25``). Dense rows are a
    float matrix or a :class:`DenseStore` (float16, int8 or binary storage)."""

    def __init__(
        self,
        *,
        dense: np.ndarray | DenseStore | None = None,
        sparse: sp.csr_matrix | None = None,
        multivector: np.ndarray | None = None,
        multivector_offsets: np.ndarray | None = None,
        texts: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        bm25: Bm25 | None = None,
        hnsw: Hnsw | None = None,
        n_rows: int | None = None,
    ):
        sizes = set()
        if dense is not None and not isinstance(dense, DenseStore):
            dense = DenseStore.build(dense)
        if dense is not None:
            sizes.add(dense.n_rows)
            if hnsw is not None and dense.dtype != "float32":
                raise InputError(f"HNSW search reads float32 vectors; these are stored as {dense.dtype}")
        if sparse is not None:
            sizes.add(int(sparse.shape[0]))
        if multivector is not None:
            if multivector_offsets is None:
                raise ValueError("packed multi-vectors need their offsets")
            sizes.add(len(multivector_offsets) - 1)
        if n_rows is not None:
            sizes.add(n_rows)
        if isinstance(texts, Sequence):
            sizes.add(len(texts))
        if len(sizes) > 1:
            raise ValueError(f"the corpus outputs disagree on the number of rows: {sorted(sizes)}")
        self.n_rows = sizes.pop() if sizes else 0
        self.dense = dense
        self.sparse = sparse
        self.multivector = multivector
        self.multivector_offsets = multivector_offsets
        self._texts = texts
        self.hnsw = hnsw
        self._cache: dict[str, Any] = {}
        if bm25 is not None:
            if bm25.n_docs != self.n_rows:
                raise ValueError(f"the BM25 index holds {bm25.n_docs} rows, the corpus {self.n_rows}")
            self._cache["bm25"] = bm25

    @classmethod
    def from_encoded(
        cls, enc: Encoded, texts: Sequence[str] | None = None, dense_dtype: DenseDtype = "float32"
    ) -> Corpus:
        """Rows from one encode call (multi-vectors packed back to back; dense vectors stored
        as ``dense_dtype``: float16, int8 or binary cut a large corpus's memory)."""
        sparse = mv = offsets = None
        if enc.sparse is not None:
            vocab = 1 + max((int(v.indices[-1]) for v in enc.sparse if len(v)), default=0)
            sparse = to_csr(enc.sparse, vocab)
        if enc.multivector is not None:
            counts = np.array([m.shape[0] for m in enc.multivector], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            width = enc.multivector[0].shape[1] if enc.multivector else 0
            mv = np.concatenate(enc.multivector) if enc.multivector else np.zeros((0, width), np.float32)
        dense = None if enc.dense is None else DenseStore.build(enc.dense, dense_dtype)
        return cls(
            dense=dense,
            sparse=sparse,
            multivector=mv,
            multivector_offsets=offsets,
            texts=texts,
            n_rows=len(enc) if enc.outputs else None,
        )

    @property
    def scorers(self) -> tuple[Scorer, ...]:
        """What this corpus can be scored with, in the order hybrids list them."""
        have = [
            o
            for o, v in (("dense", self.dense), ("sparse", self.sparse), ("multivector", self.multivector))
            if v is not None
        ]
        return available_scorers(have, self._texts is not None)  # type: ignore[arg-type]

    def postings(self) -> sp.csr_matrix:
        """The inverted index: token -> (rows, weights)."""
        if "postings" not in self._cache:
            assert self.sparse is not None
            self._cache["postings"] = self.sparse.T.tocsr()
        postings: sp.csr_matrix = self._cache["postings"]
        return postings

    def bm25(self) -> Bm25:
        if "bm25" not in self._cache:
            assert self._texts is not None
            texts = self._texts() if callable(self._texts) else self._texts
            self._cache["bm25"] = Bm25(texts)
        bm25: Bm25 = self._cache["bm25"]
        return bm25

    def flat(self) -> Any:
        """An exact faiss inner-product index over the dense rows: one query's scan reads
        the matrix with several threads (numpy's product reads it with one)."""
        if "flat" not in self._cache:
            import faiss

            assert self.dense is not None
            index = faiss.IndexFlatIP(self.dense.dim)
            index.add(np.ascontiguousarray(self.dense.data, dtype=np.float32))
            self._cache["flat"] = index
        return self._cache["flat"]

    def ann(self) -> Any:
        """The faiss HNSW index over the dense rows (``hnsw`` set)."""
        if "ann" not in self._cache:
            import faiss

            assert self.dense is not None and self.hnsw is not None
            index = faiss.IndexHNSWFlat(self.dense.dim, self.hnsw.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.hnsw.ef_search
            index.add(np.ascontiguousarray(self.dense.data, dtype=np.float32))
            self._cache["ann"] = index
        return self._cache["ann"]
