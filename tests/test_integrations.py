"""LangChain, LlamaIndex and Haystack components, run through each framework's own entry
points and checked against the library's results on the same model and index: the
packaged all-MiniLM-L6-v2, and a cross-encoder on its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, Pipeline, Reranker
from tests.real_models import minilm_cross_encoder

FP32 = EngineConfig(device="cpu", dtype="float32")
DOCS = {
    "d1": ("Cats", "cats purr and sleep on the sofa"),
    "d2": ("Markets", "the stock market fell on monday"),
    "d3": ("Dogs", "dogs chase cats in the park"),
    "d4": ("News", "market news today and tomorrow"),
}
QUERY = "cats and dogs"


@pytest.fixture(scope="module")
def m3(minilm: Path) -> Embedder:
    return Embedder.from_pretrained(str(minilm), engine=FP32)


@pytest.fixture(scope="module")
def reranker(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    folder = minilm_cross_encoder(minilm, tmp_path_factory.mktemp("ce") / "minilm-ce")
    return Reranker.from_pretrained(str(folder), engine=FP32)


@pytest.fixture(scope="module")
def index(m3: Embedder) -> Index:
    idx = Index(m3, IndexConfig(outputs=("dense",)))
    idx.add(
        [Document(i, t, title=title, metadata={"n": k}) for k, (i, (title, t)) in enumerate(DOCS.items())]
    )
    return idx


def test_langchain(m3: Embedder, index: Index, reranker: Reranker) -> None:
    from langchain_core.documents import Document as LcDocument

    from bgekit.integrations.langchain import BgeEmbeddings, BgeReranker, BgeRetriever

    emb = BgeEmbeddings(m3)
    texts = [t for _, t in DOCS.values()]
    np.testing.assert_allclose(emb.embed_documents(texts), m3.encode_corpus(texts).dense, atol=1e-6)
    np.testing.assert_allclose(emb.embed_query(QUERY), m3.encode_queries([QUERY]).dense[0], atol=1e-6)  # type: ignore[index]

    for mode in ("dense", "bm25", "hybrid"):
        got = BgeRetriever(index=index, k=3, mode=mode).invoke(QUERY)
        want = index.search([QUERY], 3, mode=mode)[0]
        assert [d.id for d in got] == [h.id for h in want]
        assert [d.metadata["score"] for d in got] == [h.score for h in want]
        assert got[0].metadata["title"] == DOCS[want[0].id][0] and "n" in got[0].metadata
    reranked = BgeRetriever(index=index, k=2, reranker=reranker, rerank_top=4).invoke(QUERY)
    want = Pipeline(None, index, reranker, retrieve=4).search([QUERY], 2)[0]
    assert [d.id for d in reranked] == [h.id for h in want]
    assert reranked[0].metadata["scores"]["rerank"] == want[0].scores["rerank"]

    docs = [LcDocument(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)]
    kept = BgeReranker(reranker=reranker, top_n=2).compress_documents(docs, QUERY)
    ref = reranker.rerank(QUERY, texts, top_k=2)
    assert [d.metadata["i"] for d in kept] == [r.index for r in ref]
    assert [d.metadata["relevance_score"] for d in kept] == [r.score for r in ref]


def test_llama_index(m3: Embedder, index: Index, reranker: Reranker) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from bgekit.integrations.llama_index import BgeEmbedding, BgeRerank, BgeRetriever

    emb = BgeEmbedding(m3)
    texts = [t for _, t in DOCS.values()]
    np.testing.assert_allclose(emb.get_text_embedding_batch(texts), m3.encode_corpus(texts).dense, atol=1e-6)
    np.testing.assert_allclose(emb.get_query_embedding(QUERY), m3.encode_queries([QUERY]).dense[0], atol=1e-6)  # type: ignore[index]

    got = BgeRetriever(index, k=3, mode="dense").retrieve(QUERY)
    want = index.search([QUERY], 3, mode="dense")[0]
    assert [n.node.node_id for n in got] == [h.id for h in want]
    assert [n.score for n in got] == [h.score for h in want]
    assert got[0].node.get_content() == want[0].text and got[0].node.metadata["id"] == want[0].id

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(texts)]
    kept = BgeRerank(reranker, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    ref = reranker.rerank(QUERY, texts, top_k=2)
    assert [n.node.node_id for n in kept] == [f"n{r.index}" for r in ref]
    assert [n.score for n in kept] == [r.score for r in ref]

    # a query engine over a VectorStoreIndex with bgekit's embed_model, reranked by bgekit
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.llms.mock import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    saved = Settings._llm
    Settings.llm = MockLLM()  # no LLM is called: the engine only retrieves ("no_text")
    try:
        li_index = VectorStoreIndex(
            [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(texts)], embed_model=emb
        )
        engine = RetrieverQueryEngine.from_args(
            li_index.as_retriever(similarity_top_k=4),
            node_postprocessors=[BgeRerank(reranker, top_n=2)],
            response_mode="no_text",
        )
        sources = engine.query(QUERY).source_nodes
    finally:
        Settings._llm = saved
    assert [n.node.node_id for n in sources] == [f"n{r.index}" for r in ref]
    np.testing.assert_allclose([n.score for n in sources], [r.score for r in ref], rtol=1e-6)


def test_import_bgekit_imports_no_framework() -> None:
    import subprocess
    import sys

    code = "import bgekit, sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'langchain_core', 'llama_index', 'haystack'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_haystack(m3: Embedder, reranker: Reranker) -> None:
    from haystack import Document as HsDocument
    from haystack import Pipeline as HsPipeline

    from bgekit.integrations.haystack import BgeDocumentEmbedder, BgeRanker, BgeTextEmbedder

    texts = [t for _, t in DOCS.values()]
    docs = [HsDocument(content=t, id=f"h{i}") for i, t in enumerate(texts)]
    embedded = BgeDocumentEmbedder(m3).run(docs)["documents"]
    np.testing.assert_allclose([d.embedding for d in embedded], m3.encode_corpus(texts).dense, atol=1e-6)
    query = BgeTextEmbedder(m3).run(QUERY)["embedding"]
    np.testing.assert_allclose(query, m3.encode_queries([QUERY]).dense[0], atol=1e-6)  # type: ignore[index]

    pipe = HsPipeline()
    pipe.add_component("ranker", BgeRanker(reranker, top_k=2))
    out = pipe.run({"ranker": {"query": QUERY, "documents": docs}})["ranker"]["documents"]
    ref = reranker.rerank(QUERY, texts, top_k=2)
    assert [d.id for d in out] == [f"h{r.index}" for r in ref]
    assert [d.score for d in out] == [r.score for r in ref]
