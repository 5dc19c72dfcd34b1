"""Milvus Lite and Qdrant local mode return what the embedded index returns, on the same vectors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Document, Embedder, Index, IndexConfig, InputError
from bgekit.index.adapters import MilvusBackend, QdrantBackend, VectorDBIndex
from bgekit.retrieval import HybridConfig
from bgekit.types import OutputKind
from tests.test_eval import DOCS
from tests.test_index import documents

QUERIES = ["cats and dogs at home", "stock market news", "fast brown fox", "search scores"]


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3))


@contextmanager
def opened(m3: Embedder, kind: str, tmp_path: Path, docs: list[Document]) -> Iterator[VectorDBIndex]:
    """A local Qdrant (dense, sparse, multi-vector) or Milvus Lite (dense, sparse) index of ``docs``."""
    if kind == "qdrant":
        pytest.importorskip("qdrant_client")
        backend: Any = QdrantBackend(str(tmp_path / "qdrant"))
        outputs: tuple[OutputKind, ...] = ("dense", "sparse", "multivector")
    else:
        pytest.importorskip("pymilvus")
        backend, outputs = MilvusBackend(str(tmp_path / "milvus.db")), ("dense", "sparse")
    with VectorDBIndex(m3, backend, IndexConfig(outputs=outputs)) as ix:
        ix.add(docs)
        yield ix


@pytest.fixture
def qdrant(m3: Embedder, tmp_path: Path) -> Iterator[VectorDBIndex]:
    with opened(m3, "qdrant", tmp_path, documents()) as ix:
        yield ix


@pytest.fixture
def milvus(m3: Embedder, tmp_path: Path) -> Iterator[VectorDBIndex]:
    with opened(m3, "milvus", tmp_path, documents()) as ix:
        yield ix


def same(a: list[list], b: list[list]) -> None:
    assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose([h.score for h in ra], [h.score for h in rb], rtol=1e-4, atol=1e-5)
        assert [h.text for h in ra] == [h.text for h in rb]


def test_qdrant_matches_embedded_index(qdrant: VectorDBIndex, m3: Embedder) -> None:
    local = Index(m3, IndexConfig(outputs=("dense", "sparse", "multivector")))
    local.add(documents())
    for mode in ("dense", "sparse", "multivector"):
        same(
            qdrant.search(QUERIES, 4, mode=mode),
            local.search(QUERIES, 4, mode=mode, hybrid=HybridConfig(candidates=None)),
        )  # type: ignore[arg-type]
    rerank = HybridConfig(candidates=2)  # MaxSim over the dense and sparse top max(2, rows asked for)
    same(
        qdrant.search(QUERIES, 4, mode="multivector", hybrid=rerank),
        local.search(QUERIES, 4, mode="multivector", hybrid=rerank),
    )
    hit = qdrant.search(["cats"], 1, mode="dense")[0][0]
    assert hit.metadata == {"n": list(DOCS).index(hit.id)} and hit.chunk == 0


def test_milvus_matches_embedded_index(milvus: VectorDBIndex, m3: Embedder) -> None:
    local = Index(m3, IndexConfig(outputs=("dense", "sparse")))
    local.add(documents())
    for mode in ("dense", "sparse"):
        same(milvus.search(QUERIES, 4, mode=mode), local.search(QUERIES, 4, mode=mode))  # type: ignore[arg-type]
    weighted = HybridConfig(weights=(0.4, 0.2, 0.0), candidates=None)
    same(milvus.search(QUERIES, 4, hybrid=weighted), local.search(QUERIES, 4, hybrid=weighted))
    with pytest.raises(InputError, match="does not search in multivector mode"):
        milvus.search(["cats"], 3, mode="multivector")


@pytest.mark.parametrize("which", ["qdrant", "milvus"])
def test_rrf_hybrid_ranks_exact_text_first_and_deletes_work(
    which: str, request: pytest.FixtureRequest
) -> None:
    ix: VectorDBIndex = request.getfixturevalue(which)
    for did, (title, text) in DOCS.items():
        top = ix.search([f"{title} {text}".strip()], 3, mode="hybrid", hybrid=HybridConfig(fusion="rrf"))[0]
        assert top[0].id == did
    ix.delete(["d1", "d2"])
    assert {h.id for h in ix.search(["cats"], 10, mode="dense")[0]} == set(DOCS) - {"d1", "d2"}
    with pytest.raises(InputError, match="not in the index: 'd1'"):
        ix.delete(["d1"])
    with pytest.raises(InputError, match="'d3' is already in the index"):
        ix.add([Document("d3", "again")])
    ix.add([Document("d1", "cats and dogs are popular pets in many homes", "Pets")])
    assert ix.search(["Pets cats and dogs are popular pets in many homes"], 1, mode="dense")[0][0].id == "d1"


def test_qdrant_refuses_weighted_fusion(qdrant: VectorDBIndex) -> None:
    with pytest.raises(InputError, match="RRF only"):
        qdrant.search(["cats"], 2, hybrid=HybridConfig(fusion="weighted"))


def test_milvus_stores_texts_whose_sparse_vector_is_empty(bert_m3: Path, tmp_path: Path) -> None:
    """Milvus refuses a sparse vector with no nonzero weight; such texts (every token weighted
    0) must still be indexed, and their dense search is unchanged."""
    import shutil

    import torch

    pytest.importorskip("pymilvus")
    folder = tmp_path / "no-lexical-weights"
    shutil.copytree(bert_m3, folder)
    head = torch.load(folder / "sparse_linear.pt", weights_only=True)
    torch.save(
        {"weight": torch.zeros_like(head["weight"]), "bias": torch.full_like(head["bias"], -1.0)},
        folder / "sparse_linear.pt",
    )
    model = Embedder.from_pretrained(str(folder))
    assert all(
        len(v) == 0 for v in model.encode([d.text for d in documents()], outputs=("sparse",)).sparse or []
    )
    local = Index(model, IndexConfig(outputs=("dense", "sparse")))
    local.add(documents())
    with VectorDBIndex(
        model, MilvusBackend(str(tmp_path / "m.db")), IndexConfig(outputs=("dense", "sparse"))
    ) as ix:
        ix.add(documents())
        same(ix.search(QUERIES, 3, mode="dense"), local.search(QUERIES, 3, mode="dense"))
        assert all(h.score < 1e-20 for r in ix.search(QUERIES, 3, mode="sparse") for h in r)
