"""Milvus backend (pymilvus): Milvus Lite with a local file path, or a server / cluster URI.

Dense vectors go in a FLOAT_VECTOR field (FLAT or HNSW index, inner product), sparse vectors
in a SPARSE_FLOAT_VECTOR field (inverted index, inner product); hybrid search is Milvus'
``hybrid_search`` with its RRF ranker or a weighted ranker (scores divided by the sum of the
weights, as bgekit's fusion does). Multi-vector and BM25 modes are not offered here.
Metadata is a JSON field, so filters become Milvus expressions on ``metadata["FIELD"]``
(``id``: ``doc_id``): equality, ``in``, ranges (ISO dates compare as text there: write
them in one format), and prefixes (``like "prefix%"``). Collections made before metadata
was a JSON field cannot be filtered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bgekit.errors import BgekitError, InputError
from bgekit.index.chunking import Chunk
from bgekit.index.documents import Document
from bgekit.retrieval.core import HybridConfig
from bgekit.retrieval.filters import Condition, Filter
from bgekit.types import Encoded, Hit, OutputKind, SparseVec

_FIELDS = ["doc_id", "chunk", "title", "text", "metadata"]


# Milvus refuses a sparse vector without a nonzero weight. An empty one (a text whose tokens
# all got weight 0) is stored as a negligible weight on token 0, a special token that real
# sparse vectors never hold, so it matches nothing that matters.
_EMPTY_SPARSE = {0: 1e-30}


def _milvus_sparse(vec: SparseVec) -> dict[int, float]:
    return vec.to_dict() or dict(_EMPTY_SPARSE)


def _in_filter(doc_ids: Sequence[str]) -> str:
    """A Milvus boolean expression; JSON string literals escape quotes and backslashes."""
    return f"doc_id in {json.dumps([str(i) for i in doc_ids])}"


_OPS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _literal(c: Condition, v: Any) -> str:
    if v is None:
        raise InputError(f"the Milvus adapter cannot compare with null ({c.text()})")
    return json.dumps(v)


def _condition(c: Condition) -> str:
    key = {"id": "doc_id", "title": "title"}.get(c.field, f"metadata[{json.dumps(c.field)}]")
    if c.op == "in":
        assert isinstance(c.value, tuple)
        # Milvus takes 'in' on plain fields only, not on a JSON key
        return " or ".join(f"{key} == {_literal(c, v)}" for v in c.value)
    if c.op == "prefix":
        assert isinstance(c.value, str)
        if any(ch in c.value for ch in '%_\\"'):
            raise InputError(f"the Milvus adapter's prefix match cannot hold %, _, \\ or quotes ({c.text()})")
        return f'{key} like "{c.value}%"'
    return f"{key} {_OPS[c.op]} {_literal(c, c.value)}"


def milvus_filter(where: Filter) -> str:
    """``where`` as a Milvus boolean expression ("" when it is empty)."""
    return " and ".join(f"({_condition(c)})" for c in where.conditions)


class MilvusBackend:
    modes = ("dense", "sparse", "hybrid")
    fusions = ("weighted", "rrf")

    def __init__(self, uri: str, collection: str = "bgekit", *, token: str = "", dense_index: str = "FLAT"):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise BgekitError("the Milvus adapter needs pymilvus: pip install 'bgekit[milvus]'") from None
        self.client = MilvusClient(uri=uri, token=token)
        self.collection = collection
        self.dense_index = dense_index
        self.outputs: tuple[OutputKind, ...] = ()

    def create(self, outputs: tuple[OutputKind, ...], dims: dict[str, int]) -> None:
        from pymilvus import DataType

        if "multivector" in outputs:
            raise InputError("the Milvus adapter stores dense and sparse vectors, not multi-vectors")
        self.outputs = outputs
        if self.client.has_collection(self.collection):
            return
        schema = self.client.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("chunk", DataType.INT64)
        schema.add_field("title", DataType.VARCHAR, max_length=4096)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("metadata", DataType.JSON)
        index = self.client.prepare_index_params()
        if "dense" in outputs:
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dims["dense"])
            index.add_index("dense", index_type=self.dense_index, metric_type="IP")
        if "sparse" in outputs:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=index)

    def existing(self, doc_ids: Sequence[str]) -> set[str]:
        if not doc_ids:
            return set()
        rows = self.client.query(self.collection, filter=_in_filter(doc_ids), output_fields=["doc_id"])
        return {r["doc_id"] for r in rows}

    def upsert(self, docs: Sequence[Document], chunks: Sequence[Chunk], enc: Encoded) -> None:
        rows = []
        for i, c in enumerate(chunks):
            d = docs[c.doc]
            row: dict[str, Any] = {
                "doc_id": d.id,
                "chunk": c.no,
                "title": d.title,
                "text": c.text,
                "metadata": d.metadata,
            }
            if enc.dense is not None:
                row["dense"] = enc.dense[i].tolist()
            if enc.sparse is not None:
                row["sparse"] = _milvus_sparse(enc.sparse[i])
            rows.append(row)
        self.client.insert(self.collection, rows)
        self.client.flush(self.collection)

    def delete(self, doc_ids: Sequence[str]) -> None:
        self.client.delete(self.collection, filter=_in_filter(doc_ids))

    def _hit(self, r: dict[str, Any], score: float, scores: dict[str, float]) -> Hit:
        e = r["entity"]
        meta = e["metadata"]  # a string in collections made before it was a JSON field
        meta = json.loads(meta) if isinstance(meta, str) else dict(meta or {})
        return Hit(e["doc_id"], score, e["text"], e["title"], int(e["chunk"]), meta, scores)

    def search(
        self, q: Encoded, qi: int, mode: str, limit: int, hybrid: HybridConfig, where: Filter
    ) -> list[Hit]:
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        expr = milvus_filter(where)
        data = {}
        if q.dense is not None and "dense" in self.outputs:
            data["dense"] = [q.dense[qi].tolist()]
        if q.sparse is not None and "sparse" in self.outputs:
            data["sparse"] = [_milvus_sparse(q.sparse[qi])]
        params = {"metric_type": "IP"}
        if mode in ("dense", "sparse"):
            res = self.client.search(
                self.collection,
                data=data[mode],
                anns_field=mode,
                limit=limit,
                output_fields=_FIELDS,
                search_params=params,
                filter=expr,
            )[0]
            return [self._hit(r, float(r["distance"]), {mode: float(r["distance"])}) for r in res]
        fields = [f for f in ("dense", "sparse") if f in data]
        limit_each = limit if hybrid.candidates is None else max(limit, hybrid.candidates)
        reqs = [AnnSearchRequest(data[f], f, params, limit=limit_each, expr=expr or None) for f in fields]
        if hybrid.fusion == "rrf":
            ranker: Any = RRFRanker(int(hybrid.rrf_k))
            scale = 1.0
        else:
            weights = [hybrid.weights[0 if f == "dense" else 1] for f in fields]
            ranker = WeightedRanker(*weights, norm_score=False)
            scale = 1.0 / sum(weights)
        res = self.client.hybrid_search(self.collection, reqs, ranker, limit=limit, output_fields=_FIELDS)[0]
        return [self._hit(r, scale * float(r["distance"]), {}) for r in res]

    def close(self) -> None:
        self.client.close()
