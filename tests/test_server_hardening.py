"""The server against hostile or careless clients: invalid Unicode, oversized and slow
bodies, unauthenticated slot-holders, loose types — each a regression test of issue 13."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, Reranker
from bgekit.server import ServerConfig, create_app
from tests.live_server import live
from tests.tiny_models import CORPUS

EXACT = EngineConfig(device="cpu", progress=False, dtype="float32")


@pytest.fixture(scope="module")
def emb(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3), engine=EXACT)


@pytest.fixture(scope="module")
def rr(bert_reranker: Path) -> Reranker:
    return Reranker.from_pretrained(str(bert_reranker), engine=EXACT)


@pytest.fixture(scope="module")
def index(emb: Embedder) -> Index:
    ix = Index(emb, IndexConfig(outputs=("dense", "sparse")))
    ix.add([Document(f"d{i}", t) for i, t in enumerate(dict.fromkeys(CORPUS))])
    return ix


async def _call(
    app: Any, requests: list[tuple[str, str, Any]], headers: dict[str, str] | None = None
) -> list:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
            out = []
            for method, path, body in requests:
                kw: dict[str, Any] = {"headers": {"content-type": "application/json", **(headers or {})}}
                if body is not None:
                    kw["content"] = body if isinstance(body, bytes) else body.encode()
                out.append(await client.request(method, path, **kw))
            return out


SURROGATES = [
    ("/v1/embeddings", r'{"input": "abc \ud800"}', "input"),
    ("/v1/embeddings", r'{"input": ["ok", "\udfff"]}', "input.1"),
    ("/v1/embeddings", r'{"input": "x", "model": "\ud800"}', "model"),
    ("/encode", r'{"inputs": "\ud83d"}', "inputs"),
    ("/rerank", r'{"query": "q", "documents": ["\ud800"]}', "documents.0"),
    ("/rerank", r'{"query": "\udc00", "documents": ["d"]}', "query"),
    ("/search", r'{"query": "cats \ud800"}', "query"),
]


def test_lone_surrogates_are_422_naming_the_field(emb: Embedder, rr: Reranker, index: Index) -> None:
    app = create_app(ServerConfig(), embedder=emb, reranker=rr, index=index)
    answers = asyncio.run(_call(app, [("POST", path, body) for path, body, _ in SURROGATES]))
    for (path, _, field), r in zip(SURROGATES, answers, strict=True):
        assert r.status_code == 422, (path, r.text)
        err = r.json()["error"]
        assert err["param"] == field and ("unicode" in err["message"] or "surrogate" in err["message"]), err
    # non-BMP text is fine
    ok = asyncio.run(_call(app, [("POST", "/encode", '{"inputs": "emoji \U0001f600 ok"}')]))[0]
    assert ok.status_code == 200


LOOSE = [
    ("/v1/embeddings", '{"input": "x", "dimensions": true}', "dimensions"),
    ("/encode", '{"inputs": "x", "return_tokens": "yes"}', "return_tokens"),
    ("/search", '{"query": "cats", "k": "5"}', "k"),
    ("/search", '{"query": "cats", "weights": [NaN, 0.2, 0.4]}', "weights.0"),
    ("/search", '{"query": "cats", "weights": [Infinity, 0.2, 0.4]}', "weights.0"),
    ("/search", '{"query": "cats", "weights": [1e308, 0.2, 0.4]}', "weights.0"),
    ("/rerank", '{"query": "q", "documents": ["d"], "top_n": 1.5}', "top_n"),
    ("/encode", '{"inputs": ["x"', "body"),
]


def test_loose_types_and_non_finite_weights_are_422(emb: Embedder, rr: Reranker, index: Index) -> None:
    app = create_app(ServerConfig(), embedder=emb, reranker=rr, index=index)
    answers = asyncio.run(_call(app, [("POST", path, body) for path, body, _ in LOOSE]))
    for (path, body, field), r in zip(LOOSE, answers, strict=True):
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["error"]["param"] == field, (body, r.json())


def test_search_follows_the_same_defaults_and_length_rule(emb: Embedder, index: Index) -> None:
    app = create_app(ServerConfig(), embedder=emb, index=index)
    long_query = '{"query": "' + "cats " * 200_000 + '"}'
    plain, with_candidates, too_long = asyncio.run(
        _call(
            app,
            [
                ("POST", "/search", '{"query": "cats and dogs", "mode": "hybrid"}'),
                ("POST", "/search", '{"query": "cats and dogs", "mode": "hybrid", "candidates": 100}'),
                ("POST", "/search", long_query),
            ],
        )
    )
    # giving candidates must not change the fusion (it used to switch RRF to a weighted sum)
    assert plain.json()["hits"] == with_candidates.json()["hits"]
    assert too_long.status_code == 413 and "query 0" in too_long.json()["error"]["message"]


def test_body_size_limit_and_cheap_length_bound(emb: Embedder) -> None:
    app = create_app(ServerConfig(max_body_bytes=10_000), embedder=emb)
    big = '{"inputs": "' + "x" * 20_000 + '"}'
    declared, long_text = asyncio.run(
        _call(app, [("POST", "/encode", big), ("POST", "/encode", '{"inputs": "' + "word " * 1900 + '"}')])
    )
    assert declared.status_code == 413 and "10000 bytes" in declared.json()["error"]["message"]
    # 9,500 characters for a 40-token limit: refused before tokenising (40 x 32 characters)
    small = create_app(
        ServerConfig(max_input_tokens=40),
        embedder=Embedder.from_pretrained(str(Path(emb.info.path)), engine=EXACT),
    )
    r = asyncio.run(_call(small, [("POST", "/encode", '{"inputs": "' + "word " * 1900 + '"}')]))[0]
    assert r.status_code == 413 and "characters" in r.json()["error"]["message"]
    assert long_text.status_code == 413  # over the model's token limit too


def test_tokenising_does_not_block_the_event_loop(emb: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(ServerConfig(), embedder=emb)
    release = threading.Event()
    real = emb.tokenize

    def slow_tokenize(*args: Any, **kwargs: Any) -> Any:
        if args and args[0] == ["the slow one"]:
            assert release.wait(10), "health was never answered while tokenising"
        return real(*args, **kwargs)

    monkeypatch.setattr(emb, "tokenize", slow_tokenize)

    async def main() -> tuple[int, int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                slow = asyncio.ensure_future(client.post("/encode", json={"inputs": ["the slow one"]}))
                await asyncio.sleep(0.05)
                health = await asyncio.wait_for(client.get("/health"), 10)  # served meanwhile
                release.set()
                return health.status_code, (await slow).status_code

    assert asyncio.run(main()) == (200, 200)


# -- a live server on loopback -------------------------------------------------------------


def test_unauthenticated_slow_clients_cannot_take_the_slots(emb: Embedder) -> None:
    cfg = ServerConfig(api_key="k3y", max_concurrent_requests=8, body_timeout=1.0)
    app = create_app(cfg, embedder=emb)
    with live(app) as url:
        port = int(url.rsplit(":", 1)[1])
        held = []
        try:
            for _ in range(40):  # 5x the slots: headers sent, body never
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(
                    b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                )
                held.append(s)
            keyed = [
                httpx.post(
                    f"{url}/encode", json={"inputs": ["cats"]}, headers={"x-api-key": "k3y"}, timeout=30
                )
                for _ in range(3)
            ]
            assert [r.status_code for r in keyed] == [200, 200, 200]
            # a keyed client that never finishes its body is cut off after body_timeout
            slow = socket.create_connection(("127.0.0.1", port))
            slow.sendall(
                b"POST /encode HTTP/1.1\r\nHost: x\r\nx-api-key: k3y\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            slow.settimeout(20)
            assert b" 408 " in slow.recv(1024).split(b"\r\n")[0]
            slow.close()
            # the slot is given back once the handler has finished (just after the 408 is sent)
            for _ in range(200):
                if app.state.bgekit.in_flight == 0:
                    break
                time.sleep(0.05)
            assert app.state.bgekit.in_flight == 0
        finally:
            for s in held:
                s.close()


# -- a body over the limit while the client is still sending (issue 22) ----------------------

BIG = b'{"input": "' + b"x" * 20_000_000 + b'"}'  # 20 MB: more than loopback's socket buffers hold


def _parts() -> Iterator[bytes]:
    for i in range(0, len(BIG), 1 << 16):
        yield BIG[i : i + (1 << 16)]


def _by_urllib(url: str, data: Any) -> tuple[int, dict[str, Any], str | None]:
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=data, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=60)
    return caught.value.code, json.loads(caught.value.read()), caught.value.headers.get("connection")


def test_a_client_still_uploading_gets_its_413(emb: Embedder) -> None:
    """urllib sends the whole body before it reads (and asks for Connection: close): the
    server used to close on it mid-upload, and urllib saw a reset instead of the 413."""
    app = create_app(ServerConfig(max_body_bytes=1 << 20), embedder=emb)
    limit = f"over the limit of {1 << 20} bytes"
    with live(app) as url:
        # Content-Length over the limit: refused up front, the rest is read and dropped
        status, body, connection = _by_urllib(url, BIG)
        assert (status, connection) == (413, "close") and limit in body["error"]["message"]
        # no Content-Length (chunked): refused once the body passes the limit
        status, body, connection = _by_urllib(url, _parts())
        assert (status, connection) == (413, "close") and limit in body["error"]["message"]
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(
            "POST", "/v1/embeddings", body=_parts(), encode_chunked=True, headers={"Connection": "close"}
        )
        r = conn.getresponse()
        assert r.status == 413 and limit in json.loads(r.read())["error"]["message"]
        conn.close()
        answers = [httpx.post(f"{url}/v1/embeddings", content=BIG, timeout=60)]
        requests = pytest.importorskip("requests")
        answers.append(requests.post(f"{url}/v1/embeddings", data=BIG, timeout=60))
        for a in answers:
            assert a.status_code == 413 and limit in a.json()["error"]["message"]
        # other answers keep their connection open; the server goes on serving
        ok = httpx.post(f"{url}/v1/embeddings", json={"input": "cats"}, timeout=60)
        assert ok.status_code == 200 and ok.headers.get("connection") != "close"


def _early_413(declared: bytes | None, parts: int, drain_bytes: int) -> tuple[int, list[Any]]:
    """A 413 sent through the middleware's sender before any of the body was read: how
    many body parts it read (of ``parts`` of 1 MiB) and what it sent."""
    from bgekit.server import middleware

    received, sent = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * (1 << 20), "more_body": received < parts}

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        answer = middleware._answer_early(send, receive, middleware._Body(declared), timeout=30)
        await middleware.error_response(413, "too big")({"type": "http"}, receive, answer)

    old = middleware.DRAIN_BYTES
    middleware.DRAIN_BYTES = drain_bytes
    try:
        asyncio.run(main())
    finally:
        middleware.DRAIN_BYTES = old
    return received, sent


def test_the_drain_of_a_refused_body_is_bounded() -> None:
    # all of it read before the response is completed; the response says Connection: close
    received, sent = _early_413(str(5 << 20).encode(), parts=5, drain_bytes=8 << 20)
    assert received == 5
    assert (b"connection", b"close") in sent[0]["headers"]
    assert [m.get("more_body", False) for m in sent[1:]] == [True, False]
    assert b"too big" in sent[1]["body"]
    # a streamed body is read up to the bound, then the response is completed (and closed)
    received, sent = _early_413(None, parts=1000, drain_bytes=4 << 20)
    assert received == 5 and sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    # a declared body over the bound is not read at all
    received, sent = _early_413(str(100 << 20).encode(), parts=100, drain_bytes=4 << 20)
    assert received == 0 and len(sent) == 2 and (b"connection", b"close") not in sent[0]["headers"]
