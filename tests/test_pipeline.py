"""One retrieve → rerank: ``Pipeline``, the server's ``/search`` and the evaluation's rerank
stage give the same hits on the same inputs, reranking what the index encoded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, Pipeline, Reranker
from bgekit.eval import RetrievalEvalConfig, load_beir
from bgekit.eval.retrieval import first_stage, rerank_stage
from bgekit.retrieval import HybridConfig
from tests.test_eval import DOCS, write_beir

QUERIES = ["cats and dogs at home", "stock market news", "fast brown fox"]
EXACT = EngineConfig(device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def models(bert_m3: Path, bert_reranker: Path) -> tuple[Embedder, Reranker]:
    return Embedder.from_pretrained(str(bert_m3), engine=EXACT), Reranker.from_pretrained(
        str(bert_reranker), engine=EXACT
    )


def test_pipeline_server_and_eval_rerank_alike(models: tuple[Embedder, Reranker], tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from bgekit.server import ServerConfig, create_app

    emb, rr = models
    index = Index(emb, IndexConfig(outputs=("dense", "sparse", "multivector")))
    index.add([Document(d, text, title) for d, (title, text) in DOCS.items()])  # one chunk per document
    hybrid = HybridConfig(candidates=None)
    piped = Pipeline(None, index, rr, retrieve=4, hybrid=hybrid).search(QUERIES, 3)

    # The reranker saw title + " " + text (what the index encoded), not the chunk alone.
    title, text = DOCS[piped[0][0].id]
    expected_top = rr.score([(QUERIES[0], f"{title} {text}".strip())])[0]
    assert piped[0][0].scores["rerank"] == pytest.approx(float(expected_top), rel=1e-6)

    app = create_app(ServerConfig(), embedder=emb, reranker=rr, index=index)

    async def ask() -> list[dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                out = []
                for q in QUERIES:
                    body = {"query": q, "k": 3, "rerank": True, "rerank_top": 4, "candidates": 1000}
                    r = await client.post("/search", json=body)
                    assert r.status_code == 200, r.text
                    out.append(r.json()["hits"])
                return out

    served = asyncio.run(ask())

    queries = {f"q{i}": q for i, q in enumerate(QUERIES)}
    data = load_beir(write_beir(tmp_path / "beir", queries, [(f"q{i}", "d1", 1) for i in range(3)]))
    cfg = RetrievalEvalConfig(mode="hybrid", k=len(DOCS), hybrid=hybrid, progress=False)
    evaluated = rerank_stage(data, first_stage(data, emb, cfg, {}), rr, 4)

    for p, s, e in zip(piped, served, evaluated, strict=True):
        assert [h.id for h in p] == [h["id"] for h in s] == [data.doc_ids[i] for i in e.indices[:3]]
        np.testing.assert_allclose([h.score for h in p], [h["score"] for h in s], rtol=1e-6)
        np.testing.assert_allclose([h.score for h in p], e.scores[:3], rtol=1e-6)
        assert all("retrieval" in h.scores and "rerank" in h.scores for h in p)


def test_fused_rerank_weighs_standardised_stage_scores(
    models: tuple[Embedder, Reranker], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    from bgekit import InputError
    from bgekit.server import ServerConfig, create_app

    emb, rr = models
    index = Index(emb, IndexConfig(outputs=("dense", "sparse", "multivector")))
    index.add([Document(d, text, title) for d, (title, text) in DOCS.items()])
    hybrid = HybridConfig(candidates=None)
    w = 0.4
    fused = Pipeline(None, index, rr, retrieve=4, hybrid=hybrid, rerank_weight=w).search(QUERIES, 4)
    for hits in fused:
        # by hand: each stage standardised over the query's 4 rescored hits, then weighed
        rer = np.array([h.scores["rerank"] for h in hits], np.float64)
        ret = np.array([h.scores["retrieval"] for h in hits], np.float64)
        want = w * (rer - rer.mean()) / rer.std() + (1 - w) * (ret - ret.mean()) / ret.std()
        np.testing.assert_allclose([h.score for h in hits], want, rtol=1e-5, atol=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # weight 0: the first stage's order; weight 1: the reranker's raw scores
    first = Pipeline(None, index, None, hybrid=hybrid).search(QUERIES, 4)
    only_first = Pipeline(None, index, rr, retrieve=4, hybrid=hybrid, rerank_weight=0.0).search(QUERIES, 4)
    assert [[h.id for h in q] for q in only_first] == [[h.id for h in q] for q in first]
    for hits in Pipeline(None, index, rr, retrieve=4, hybrid=hybrid).search(QUERIES, 4):
        assert [h.score for h in hits] == [h.scores["rerank"] for h in hits]
    with pytest.raises(InputError, match=r"rerank weight .* \[0, 1\], got 1.5"):
        Pipeline(None, index, rr, retrieve=4, rerank_weight=1.5)

    app = create_app(ServerConfig(), embedder=emb, reranker=rr, index=index)

    async def ask() -> tuple[list[dict], int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                out = []
                for q in QUERIES:
                    body = {"query": q, "k": 4, "rerank": True, "rerank_top": 4, "candidates": 1000}
                    r = await client.post("/search", json=body | {"rerank_weight": w})
                    assert r.status_code == 200, r.text
                    out.append(r.json()["hits"])
                bad = await client.post("/search", json={"query": "x", "rerank": True, "rerank_weight": 2})
                return out, bad.status_code

    served, bad_status = asyncio.run(ask())
    assert bad_status == 422
    queries = {f"q{i}": q for i, q in enumerate(QUERIES)}
    data = load_beir(write_beir(tmp_path / "beir", queries, [(f"q{i}", "d1", 1) for i in range(3)]))
    cfg = RetrievalEvalConfig(mode="hybrid", k=len(DOCS), hybrid=hybrid, progress=False)
    evaluated = rerank_stage(data, first_stage(data, emb, cfg, {}), rr, 4, weight=w)
    for p, s, e in zip(fused, served, evaluated, strict=True):
        assert [h.id for h in p] == [h["id"] for h in s] == [data.doc_ids[i] for i in e.indices[:4]]
        # fused scores are centred, so near zero only an absolute tolerance means anything;
        # standardising magnifies the encoders' rounding (the server and the evaluation batch
        # queries their own way): 2.1e-6 apart in one clean CI run, on z-scores of order 1
        np.testing.assert_allclose([h.score for h in p], [h["score"] for h in s], rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose([h.score for h in p], e.scores[:4], rtol=1e-5, atol=2e-5)
