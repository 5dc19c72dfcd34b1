"""Qdrant backend (qdrant-client): local mode with a folder path (or ``":memory:"``), or a
server / cluster URL.

Named vectors per chunk: ``dense`` (dot product), ``sparse`` (sparse vectors) and
``multivector`` (MAX_SIM). Qdrant's MAX_SIM sums over query vectors; scores are divided by
the query's vector count to match bgekit's mean. Hybrid search prefetches each mode's top
``candidates`` and fuses them with Qdrant's reciprocal-rank fusion (server side);
weighted fusion is not available here. Metadata filters become Qdrant payload filters on
``metadata.FIELD`` (``id``: ``doc_id``): equality, ``in``, ranges on numbers and ISO dates
(Qdrant has no order on other text, nor a prefix match: those are refused).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from bgekit.errors import BgekitError, InputError
from bgekit.index.chunking import Chunk
from bgekit.index.documents import Document
from bgekit.retrieval.core import HybridConfig
from bgekit.retrieval.filters import Condition, Filter, as_instant, is_instant
from bgekit.types import Encoded, Hit, OutputKind

_NS = uuid.UUID("6f1d8a52-0c8e-4a4e-9f57-6b1a3c2e9d10")


class QdrantBackend:
    modes = ("dense", "sparse", "multivector", "hybrid")
    fusions = ("rrf",)

    def __init__(self, location: str, collection: str = "bgekit", *, api_key: str | None = None):
        try:
            from qdrant_client import QdrantClient
        except ImportError:
            raise BgekitError(
                "the Qdrant adapter needs qdrant-client: pip install 'bgekit[qdrant]'"
            ) from None
        if location.startswith(("http://", "https://")):
            self.client = QdrantClient(url=location, api_key=api_key)
        elif location == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(path=location)
        self.collection = collection
        self.outputs: tuple[OutputKind, ...] = ()

    def create(self, outputs: tuple[OutputKind, ...], dims: dict[str, int]) -> None:
        from qdrant_client import models

        self.outputs = outputs
        if self.client.collection_exists(self.collection):
            return
        vectors: dict[str, Any] = {}
        if "dense" in outputs:
            vectors["dense"] = models.VectorParams(size=dims["dense"], distance=models.Distance.DOT)
        if "multivector" in outputs:
            vectors["multivector"] = models.VectorParams(
                size=dims["multivector"],
                distance=models.Distance.DOT,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            )
        sparse = {"sparse": models.SparseVectorParams()} if "sparse" in outputs else None
        self.client.create_collection(self.collection, vectors_config=vectors, sparse_vectors_config=sparse)

    def _doc_filter(self, doc_ids: Sequence[str]) -> Any:
        from qdrant_client import models

        return models.Filter(
            must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))]
        )

    def existing(self, doc_ids: Sequence[str]) -> set[str]:
        if not doc_ids:
            return set()
        points, _ = self.client.scroll(self.collection, scroll_filter=self._doc_filter(doc_ids), limit=10_000)
        return {str(p.payload["doc_id"]) for p in points if p.payload}

    def upsert(self, docs: Sequence[Document], chunks: Sequence[Chunk], enc: Encoded) -> None:
        from qdrant_client import models

        points = []
        for i, c in enumerate(chunks):
            d = docs[c.doc]
            vec: dict[str, Any] = {}
            if enc.dense is not None:
                vec["dense"] = enc.dense[i].tolist()
            if enc.sparse is not None:
                s = enc.sparse[i]
                vec["sparse"] = models.SparseVector(indices=s.indices.tolist(), values=s.values.tolist())
            if enc.multivector is not None:
                vec["multivector"] = enc.multivector[i].tolist()
            payload = {
                "doc_id": d.id,
                "chunk": c.no,
                "title": d.title,
                "text": c.text,
                "metadata": d.metadata,
            }
            points.append(
                models.PointStruct(id=str(uuid.uuid5(_NS, f"{d.id}\x1f{c.no}")), vector=vec, payload=payload)
            )
        self.client.upsert(self.collection, points)

    def delete(self, doc_ids: Sequence[str]) -> None:
        from qdrant_client import models

        self.client.delete(
            self.collection, points_selector=models.FilterSelector(filter=self._doc_filter(doc_ids))
        )

    @staticmethod
    def _filter(where: Filter) -> Any:
        """``where`` as a Qdrant filter (``None`` when it is empty)."""
        if not where:
            return None
        from qdrant_client import models

        must: list[Any] = []
        must_not: list[Any] = []
        for c in where.conditions:
            key = {"id": "doc_id", "title": "title"}.get(c.field, f"metadata.{c.field}")
            present = models.IsEmptyCondition(is_empty=models.PayloadField(key=key))
            if c.op in ("eq", "ne"):
                match = _qdrant_equal(models, key, c)
                (must if c.op == "eq" else must_not).append(match)
                if c.op == "ne":
                    must_not.append(present)  # a document lacking the field never matches
            elif c.op == "in":
                assert isinstance(c.value, tuple)
                must.append(
                    models.Filter(
                        should=[_qdrant_equal(models, key, Condition(c.field, "eq", v)) for v in c.value]
                    )
                )
            elif c.op == "prefix":
                raise InputError(
                    f"the Qdrant adapter cannot filter by prefix ({c.text()}): Qdrant has no prefix match"
                )
            elif is_instant(c.value):
                when = as_instant(c.value)
                must.append(
                    models.FieldCondition(key=key, range=models.DatetimeRange(**{_RANGE[c.op]: when}))
                )
            elif isinstance(c.value, (int, float)):
                must.append(models.FieldCondition(key=key, range=models.Range(**{_RANGE[c.op]: c.value})))
            else:
                raise InputError(f"the Qdrant adapter orders numbers and dates only ({c.text()})")
        return models.Filter(must=must, must_not=must_not or None)

    def _query(self, q: Encoded, qi: int, mode: str) -> Any:
        from qdrant_client import models

        if mode == "dense":
            assert q.dense is not None
            return q.dense[qi].tolist()
        if mode == "sparse":
            assert q.sparse is not None
            s = q.sparse[qi]
            return models.SparseVector(indices=s.indices.tolist(), values=s.values.tolist())
        assert q.multivector is not None
        return q.multivector[qi].tolist()

    def search(
        self, q: Encoded, qi: int, mode: str, limit: int, hybrid: HybridConfig, where: Filter
    ) -> list[Hit]:
        from qdrant_client import models

        flt = self._filter(where)
        if mode == "hybrid":
            if hybrid.fusion != "rrf":
                raise InputError("the Qdrant adapter fuses hybrid results with RRF only (fusion='rrf')")
            each = limit if hybrid.candidates is None else max(limit, hybrid.candidates)
            fused_from = [
                models.Prefetch(query=self._query(q, qi, m), using=m, limit=each, filter=flt)
                for m in self.outputs
            ]
            query: Any = models.RrfQuery(rrf=models.Rrf(k=int(hybrid.rrf_k)))
            res = self.client.query_points(
                self.collection,
                prefetch=fused_from,
                query=query,
                limit=limit,
                with_payload=True,
                query_filter=flt,
            ).points
            return [self._hit(p, p.score, {}) for p in res]
        prefetch: Any = None
        if mode == "multivector" and hybrid.candidates is not None:
            # rescore the dense / sparse candidates by MaxSim, as bgekit's index does
            first = [m for m in ("dense", "sparse") if m in self.outputs]
            each = max(limit, hybrid.candidates)  # as the search core: at least the rows asked for
            prefetch = [
                models.Prefetch(query=self._query(q, qi, m), using=m, limit=each, filter=flt) for m in first
            ]
        res = self.client.query_points(
            self.collection,
            prefetch=prefetch,
            query=self._query(q, qi, mode),
            using=mode,
            limit=limit,
            with_payload=True,
            query_filter=flt,
        ).points
        scale = 1.0 / len(q.multivector[qi]) if mode == "multivector" and q.multivector is not None else 1.0
        return [self._hit(p, scale * p.score, {mode: scale * p.score}) for p in res]

    @staticmethod
    def _hit(p: Any, score: float, scores: dict[str, float]) -> Hit:
        pl = p.payload
        return Hit(
            str(pl["doc_id"]),
            float(score),
            pl["text"],
            pl["title"],
            int(pl["chunk"]),
            dict(pl["metadata"]),
            scores,
        )

    def close(self) -> None:
        self.client.close()


_RANGE = {"lt": "lt", "le": "lte", "gt": "gt", "ge": "gte"}


def _qdrant_equal(models: Any, key: str, c: Condition) -> Any:
    """``key == c.value`` in Qdrant's terms (a float or a date by an exact range)."""
    v = c.value
    if v is None:
        return models.IsNullCondition(is_null=models.PayloadField(key=key))
    if isinstance(v, float) and not v.is_integer():
        return models.FieldCondition(key=key, range=models.Range(gte=v, lte=v))
    if isinstance(v, float):
        v = int(v)
    when = as_instant(v)
    if when is not None:
        return models.FieldCondition(key=key, range=models.DatetimeRange(gte=when, lte=when))
    return models.FieldCondition(key=key, match=models.MatchValue(value=v))
