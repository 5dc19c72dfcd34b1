"""The HTTP server through an in-process ASGI client: batching under concurrency, the
OpenAI client, rerank, search, limits, errors, auth and metrics."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, Reranker
from bgekit.cli.main import build_parser
from bgekit.server import Batcher, ServerConfig, create_app
from bgekit.server.schemas import EmbeddingsResponse, EmbedResponse
from bgekit.types import TokenSeq
from tests.tiny_models import CORPUS

TEXTS = list(dict.fromkeys(CORPUS))
FAST = EngineConfig(device="cpu", progress=False)
ALL = ("dense", "sparse", "multivector")


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3), engine=FAST)


@pytest.fixture(scope="module")
def reranker(bert_reranker: Path) -> Reranker:
    return Reranker.from_pretrained(str(bert_reranker), engine=FAST)


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
            yield client


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def _slow_first_run(app: Any, seconds: float) -> None:
    """Make the embedder batcher's next run wait, so that concurrent requests pile up."""
    state = app.state.bgekit
    original = state._run_embed
    calls = {"n": 0}

    def slow(seqs: list[TokenSeq], options: list[frozenset[str]]) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(seconds)
        return original(seqs, options)

    state._run_embed = slow
    state.embed_batcher._run = slow


def test_concurrent_clients_each_get_their_own_outputs(m3: Embedder) -> None:
    app = create_app(ServerConfig(), embedder=m3)
    requests = [
        {
            "inputs": TEXTS[i % len(TEXTS)]
            if i % 3
            else [TEXTS[i % len(TEXTS)], TEXTS[(i + 1) % len(TEXTS)]],
            "kind": "query" if i % 2 else "document",
            "outputs": list(ALL[: 1 + i % 3]),
        }
        for i in range(24)
    ]

    async def main() -> list[Any]:
        async with serving(app) as client:
            _slow_first_run(app, 0.3)
            runs_before = _count(app, "bgekit_batch_inputs_count")
            answers = await asyncio.gather(*(client.post("/encode", json=r) for r in requests))
            assert _count(app, "bgekit_batch_inputs_count") - runs_before < len(
                requests
            )  # requests were merged
            return list(answers)

    for req, resp in zip(requests, run(main), strict=True):
        assert resp.status_code == 200, resp.text
        texts = req["inputs"] if isinstance(req["inputs"], list) else [req["inputs"]]
        want = m3.encode(texts, kind=req["kind"], outputs=ALL)
        EmbedResponse.model_validate(resp.json())  # the documented response shape
        data = resp.json()["data"]
        assert [d["index"] for d in data] == list(range(len(texts)))
        for i, d in enumerate(data):
            assert set(d) - {"index"} == set(req["outputs"])
            np.testing.assert_allclose(d["dense"], want.dense[i], atol=1e-5)  # type: ignore[index]
            if "sparse" in d:
                assert d["sparse"]["indices"] == want.sparse[i].indices.tolist()  # type: ignore[index]
                np.testing.assert_allclose(d["sparse"]["values"], want.sparse[i].values, atol=1e-5)  # type: ignore[index]
            if "multivector" in d:
                np.testing.assert_allclose(d["multivector"], want.multivector[i], atol=1e-5)  # type: ignore[index]


def _count(app: Any, sample: str) -> float:
    registry = app.state.bgekit.metrics.registry
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == sample)


def test_openai_client_compatibility(m3: Embedder) -> None:
    openai = pytest.importorskip("openai")
    app = create_app(ServerConfig(api_key="secret"), embedder=m3)
    texts = TEXTS[:3]
    want = m3.encode(texts).dense
    assert want is not None

    async def main() -> None:
        async with serving(app) as http:
            client = openai.AsyncOpenAI(api_key="secret", base_url="http://bgekit/v1", http_client=http)
            res = await client.embeddings.create(input=texts, model="tiny")  # the client asks for base64
            assert [d.index for d in res.data] == [0, 1, 2] and res.model == "tiny"
            np.testing.assert_allclose([d.embedding for d in res.data], want, atol=1e-6)
            assert res.usage.prompt_tokens == sum(len(s) for s in m3.tokenize(texts))
            floats = await client.embeddings.create(input=texts[0], model="tiny", encoding_format="float")
            np.testing.assert_allclose(floats.data[0].embedding, want[0], atol=1e-6)
            short = await client.embeddings.create(input=texts[0], model="tiny", dimensions=8)
            cut = want[0][:8] / np.linalg.norm(want[0][:8])
            np.testing.assert_allclose(short.data[0].embedding, cut, atol=1e-6)
            bad = openai.AsyncOpenAI(api_key="wrong", base_url="http://bgekit/v1", http_client=http)
            with pytest.raises(openai.AuthenticationError):
                await bad.embeddings.create(input="x", model="tiny")

    run(main)


def test_base64_is_little_endian_float32(m3: Embedder) -> None:
    app = create_app(ServerConfig(), embedder=m3)

    async def main() -> httpx.Response:
        async with serving(app) as client:
            return await client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"})

    body = run(main).json()
    EmbeddingsResponse.model_validate(body)
    raw = base64.b64decode(body["data"][0]["embedding"])
    np.testing.assert_allclose(np.frombuffer(raw, dtype="<f4"), m3.encode([TEXTS[0]]).dense[0], atol=1e-6)  # type: ignore[index]


def test_rerank_matches_the_library(reranker: Reranker) -> None:
    app = create_app(ServerConfig(), reranker=reranker)
    query, docs = "what is bge m3", TEXTS[:5]
    scores = reranker.score([(query, d) for d in docs])

    async def main() -> httpx.Response:
        async with serving(app) as client:
            body = {
                "query": query,
                "documents": [docs[0], {"text": docs[1]}, *docs[2:]],
                "top_n": 3,
                "return_documents": True,
            }
            return await client.post("/rerank", json=body)

    results = run(main).json()["results"]
    order = np.argsort(-scores, kind="stable")[:3]
    assert [r["index"] for r in results] == order.tolist()
    np.testing.assert_allclose([r["relevance_score"] for r in results], scores[order], atol=1e-5)
    assert [r["document"]["text"] for r in results] == [docs[i] for i in order]


def test_search_with_and_without_rerank(m3: Embedder, reranker: Reranker) -> None:
    index = Index(m3, IndexConfig(outputs=ALL))
    index.add([Document(str(i), t) for i, t in enumerate(TEXTS)])
    app = create_app(ServerConfig(), embedder=m3, reranker=reranker, index=index)
    query = "hybrid lexical search"

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with serving(app) as client:
            plain = await client.post("/search", json={"query": query, "k": 3, "mode": "hybrid"})
            reranked = await client.post(
                "/search", json={"query": query, "k": 3, "rerank": True, "rerank_top": 5}
            )
            return plain, reranked

    plain, reranked = run(main)
    want = index.search([query], 3, mode="hybrid")[0]
    assert [h["id"] for h in plain.json()["hits"]] == [h.id for h in want]
    np.testing.assert_allclose([h["score"] for h in plain.json()["hits"]], [h.score for h in want], atol=1e-5)
    top5 = index.search([query], 5, mode="hybrid")[0]
    scores = reranker.score([(query, h.text) for h in top5])
    best = [top5[i].id for i in np.argsort(-scores, kind="stable")[:3]]
    assert [h["id"] for h in reranked.json()["hits"]] == best
    assert all("rerank" in h["scores"] for h in reranked.json()["hits"])


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/encode", b"{not json", 422, "JSON"),
        ("/encode", {"inputs": 5}, 422, "inputs"),
        ("/encode", {"inputs": []}, 422, "inputs"),
        ("/encode", {"inputs": ["ok", "  "]}, 422, "inputs.1: is empty"),
        ("/encode", {"inputs": "ok", "outputs": ["colour"]}, 422, "outputs"),
        ("/encode", {"inputs": "ok", "kind": "passage"}, 422, "kind"),
        ("/encode", {"inputs": "ok", "extra": 1}, 422, "extra"),
        ("/v1/embeddings", {"input": "ok", "encoding_format": "int8"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": "ok", "dimensions": 999}, 422, "dimensions"),
        ("/v1/embeddings", {}, 422, "input"),
        ("/v1/embeddings", {"input": " "}, 422, "empty"),  # the HTTP API refuses what the library takes
        ("/encode", {"inputs": "dense sparse and multi vector retrieval " * 10}, 413, "longer than"),
        ("/rerank", {"query": "q", "documents": ["d"]}, 404, "no reranker"),
        ("/search", {"query": "q"}, 404, "no index"),
    ],
)
def test_client_mistakes_get_4xx_naming_the_problem(
    bert_st_mean: Path, path: str, body: Any, status: int, words: str
) -> None:
    app = create_app(ServerConfig(), embedder=Embedder.from_pretrained(str(bert_st_mean), engine=FAST))

    async def main() -> httpx.Response:
        async with serving(app) as client:
            if isinstance(body, bytes):
                return await client.post(path, content=body, headers={"content-type": "application/json"})
            return await client.post(path, json=body)

    resp = run(main)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]["message"]


def test_missing_head_and_truncation_setting(bert_st_mean: Path) -> None:
    emb = Embedder.from_pretrained(str(bert_st_mean), engine=FAST)
    long_text = "dense sparse and multi vector retrieval " * 10

    async def main(app: Any, body: dict) -> httpx.Response:
        async with serving(app) as client:
            return await client.post("/encode", json=body)

    resp = asyncio.run(
        main(create_app(ServerConfig(), embedder=emb), {"inputs": "ok", "outputs": ["sparse"]})
    )
    assert resp.status_code == 422 and "no sparse head" in resp.json()["error"]["message"]
    app = create_app(ServerConfig(truncate=True), embedder=emb)
    resp = asyncio.run(main(app, {"inputs": long_text}))
    assert resp.status_code == 200
    np.testing.assert_allclose(resp.json()["data"][0]["dense"], emb.encode([long_text]).dense[0], atol=1e-5)  # type: ignore[index]


def test_too_many_concurrent_requests_get_429_with_retry_after(m3: Embedder) -> None:
    app = create_app(ServerConfig(max_concurrent_requests=2), embedder=m3)

    async def main() -> list[httpx.Response]:
        async with serving(app) as client:
            _slow_first_run(app, 0.5)
            first = [asyncio.ensure_future(client.post("/encode", json={"inputs": t})) for t in TEXTS[:2]]
            await asyncio.sleep(0.2)  # both are in flight, waiting on the slow run
            third = await client.post("/encode", json={"inputs": TEXTS[2]})
            return [*(await asyncio.gather(*first)), third]

    a, b, c = run(main)
    assert a.status_code == b.status_code == 200
    assert c.status_code == 429 and c.headers["retry-after"] == "1"


def test_auth_health_ready_info_and_metrics(m3: Embedder) -> None:
    app = create_app(ServerConfig(api_key="k3y"), embedder=m3)
    key = {"Authorization": "Bearer k3y"}

    async def main() -> dict[str, httpx.Response]:
        async with serving(app) as client:
            out = {
                "health": await client.get("/health"),
                "ready": await client.get("/ready"),
                "no_key": await client.post("/encode", json={"inputs": "x"}),
                "wrong": await client.post(
                    "/encode", json={"inputs": "x"}, headers={"Authorization": "Bearer no"}
                ),
                "x_api_key": await client.post("/encode", json={"inputs": "x"}, headers={"x-api-key": "k3y"}),
                "info": await client.get("/info", headers=key),
                "docs": await client.get("/openapi.json", headers=key),
                "docs_no_key": await client.get("/openapi.json"),
            }
            out["metrics"] = await client.get("/metrics", headers=key)
            return out

    r = run(main)
    assert r["health"].json() == {"status": "ok"} and r["ready"].json() == {"status": "ready"}
    assert r["no_key"].status_code == 401 and r["wrong"].status_code == 401
    assert r["x_api_key"].status_code == 200
    info = r["info"].json()
    assert info["outputs"] == list(ALL) and info["limits"]["over_token_limit"] == "413"
    assert info["limits"]["max_input_tokens"]["document"] == m3.info.passage_max_length
    assert info["compute"]["model"] == m3.compute() and info["compute"]["reranker"] == []
    assert "/v1/embeddings" in r["docs"].json()["paths"]
    assert r["docs_no_key"].status_code == 401  # only /health and /ready answer without the key
    text = r["metrics"].text
    assert 'bgekit_requests_total{endpoint="/encode",status="401"} 2.0' in text
    assert 'bgekit_requests_total{endpoint="/encode",status="200"} 1.0' in text
    assert "bgekit_batch_inputs_bucket" in text and "bgekit_request_seconds_bucket" in text


def test_not_ready_before_start_and_nothing_loaded_at_construction() -> None:
    app = create_app(ServerConfig(model="/no/such/model"))  # loading happens only at start-up
    assert app.state.bgekit.embedder is None and not app.state.bgekit.ready


def test_batcher_drops_a_cancelled_job_that_has_not_started() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def work(seqs: list[TokenSeq], options: list[None]) -> list[int]:
        gate.wait(5)
        seen.append([s.ids[0] for s in seqs])
        return [s.ids[0] * 10 for s in seqs]

    batcher: Batcher[None, int] = Batcher(work, gather_tokens=100, name="test")
    batcher.start()

    async def main() -> tuple[list[int], list[int]]:
        first = asyncio.ensure_future(batcher.submit([TokenSeq([1])], None))
        await asyncio.sleep(0.05)  # the worker has taken the first job and waits at the gate
        gone = asyncio.ensure_future(batcher.submit([TokenSeq([2])], None))
        kept = asyncio.ensure_future(batcher.submit([TokenSeq([3]), TokenSeq([4])], None))
        await asyncio.sleep(0.05)
        gone.cancel()
        gate.set()
        return await first, await kept

    try:
        first, kept = asyncio.run(main())
    finally:
        batcher.stop()
    assert first == [10] and kept == [30, 40]
    assert seen == [[1], [3, 4]]  # the cancelled job never reached the model


def test_serve_options_read_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGEKIT_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("BGEKIT_TRUNCATE", "true")
    monkeypatch.setenv("BGEKIT_API_KEY", "from-env")
    ns = build_parser().parse_args(
        ["serve", "--port", "9000", "--gather-tokens", "512", "--max-batch-size", "8"]
    )
    assert (ns.max_batch_tokens, ns.truncate, ns.api_key, ns.port) == (4096, True, "from-env", 9000)
    # one meaning for max_batch_tokens: the engine's padded budget, as in every command
    from bgekit.cli.common import engine_config

    assert engine_config(ns) == EngineConfig(max_batch_tokens=4096, max_batch_size=8)
    assert ns.gather_tokens == 512
    monkeypatch.setenv("BGEKIT_PORT", "eighty")
    from bgekit.errors import InputError

    with pytest.raises(InputError, match="BGEKIT_PORT"):
        build_parser()


def test_batcher_is_typed_by_option_and_result() -> None:
    from typing import Any, get_args

    assert get_args(Batcher[None, float]) == (type(None), float)
    # the result type defaults to Any: the one-parameter spelling of earlier versions still works
    assert get_args(Batcher[None]) == (type(None), Any)


def test_batcher_stop_finishes_queued_work_first() -> None:
    def work(seqs: list[TokenSeq], options: list[None]) -> list[int]:
        time.sleep(0.05)
        return [s.ids[0] for s in seqs]

    batcher: Batcher[None, int] = Batcher(work, gather_tokens=1, name="test")  # one job per run
    batcher.start()

    async def main() -> list[list[int]]:
        jobs = [asyncio.ensure_future(batcher.submit([TokenSeq([i])], None)) for i in range(5)]
        await asyncio.sleep(0.01)
        stopping = asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        results = await asyncio.gather(*jobs)
        await stopping
        return list(results)

    assert asyncio.run(main()) == [[0], [1], [2], [3], [4]]
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(batcher.submit([TokenSeq([9])], None))


def test_without_a_model_the_packaged_one_is_served(minilm: Path) -> None:
    app = create_app(ServerConfig(engine=EngineConfig(device="cpu")))

    async def main() -> httpx.Response:
        async with serving(app) as client:
            return await client.get("/info")

    info = run(main).json()
    assert Path(info["model"]["path"]) == minilm.resolve() and info["outputs"] == ["dense"]


def test_the_served_models_run_on_the_configured_engine(bert_m3: Path, bert_reranker: Path) -> None:
    engine = EngineConfig(device="cpu", max_batch_tokens=64, max_batch_size=3, dtype="float32")
    app = create_app(ServerConfig(model=str(bert_m3), reranker=str(bert_reranker), engine=engine))

    async def main() -> dict[str, Any]:
        async with serving(app) as client:
            return (await client.get("/info")).json()

    info = run(main)
    state = app.state.bgekit
    for model in (state.embedder, state.reranker):
        assert model.engine_config.max_batch_tokens == 64 and model.engine_config.max_batch_size == 3
        assert model.engine_config.progress is False
    assert info["engine"]["max_batch_tokens"] == 64 and info["limits"]["gather_tokens"] == 16384
