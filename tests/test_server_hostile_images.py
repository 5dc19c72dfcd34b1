"""The server against hostile images: each is a 4xx naming the item in one line (413 over a
limit), never a 5xx or a traceback; a bad image fails only its own request, even when it
arrives with good ones; URLs are fetched only when the operator allows it, under limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

pytest.importorskip("fastapi")

from bgekit import Embedder, EngineConfig
from bgekit.images import Composed, ImageInput, ImageLimits, ImageTooLargeError
from bgekit.server import ServerConfig, create_app
from bgekit.server.image_inputs import ImagePolicy
from bgekit.types import TokenSeq

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)
LIMITS = {"max_image_bytes": 300_000, "max_image_pixels": 1_000_000}


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A 74-byte PNG whose header says ``width`` x ``height`` 1-bit pixels."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def dds_unknown_format() -> bytes:
    """A DDS header with pixel-format flags Pillow does not know: its plugin raises
    NotImplementedError (not an OSError) on open."""
    head = bytearray(124)
    struct.pack_into("<I", head, 0, 124)
    struct.pack_into("<3I", head, 4, 0x1007, 8, 8)
    struct.pack_into("<2I", head, 72, 32, 0x20000000)
    return b"DDS " + bytes(head)


PHOTO = encoded(Image.fromarray(photos.coffee()), "JPEG")  # 600 x 400, well within LIMITS
CAT = encoded(Image.fromarray(photos.chelsea()), "PNG")
NOISE = encoded(
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)), "PNG"
)
WIDE = encoded(Image.new("L", (1100, 1000)), "PNG")  # 1.1 M pixels in a few kB
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"

# (case, the item's image string, status, words the message holds)
HOSTILE: list[tuple[str, str, int, str]] = [
    ("empty string", "", 422, "empty, not an image"),
    ("not base64", "this is not base64!", 422, "not valid base64"),
    ("random bytes", b64(np.random.default_rng(1).bytes(3000)), 422, "not an image Pillow can read"),
    ("a text file", b64(b"hello, this is a text file\n" * 40), 422, "not an image Pillow can read"),
    ("truncated JPEG", b64(PHOTO[: len(PHOTO) // 2]), 422, "truncated"),
    ("truncated PNG", b64(CAT[: len(CAT) // 2]), 422, "truncated"),
    ("PNG header only", b64(CAT[:60]), 422, "truncated"),
    ("decompression bomb", b64(bomb_png(60_000, 60_000)), 413, "3,600,000,000 pixels"),
    ("over max_image_bytes", b64(NOISE), 413, "over the limit of 300,000"),
    ("over max_image_pixels", b64(WIDE), 413, "1,100,000 pixels, over the limit of 1,000,000"),
    ("SVG", b64(SVG), 422, "not an image Pillow can read"),
    ("EPS (Ghostscript's format)", b64(EPS), 422, "EPS image; this server takes JPEG"),
    ("DDS Pillow cannot parse", b64(dds_unknown_format()), 422, "variant Pillow cannot read"),
    ("data URI of text", "data:text/plain;base64," + b64(b"hello"), 422, "holds text/plain, not an image"),
    ("URL while URLs are off", "http://127.0.0.1:9/cat.png", 422, "--allow-image-urls"),
    ("file URL", "file:///etc/passwd", 422, "a file: URL is not an image"),
    ("a server path", "/etc/passwd", 422, "not valid base64"),
]


@pytest.fixture(scope="module")
def vl(clip_dir: Path) -> Embedder:
    """Its own model: serving it sets the server's image limits on it."""
    return Embedder.from_pretrained(str(clip_dir), engine=FP32)


async def _posts(app: Any, calls: list[tuple[str, Any]]) -> list[httpx.Response]:
    """The calls sent together (concurrently) to ``app`` in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bgekit", timeout=60) as client:
            return list(await asyncio.gather(*(client.post(path, json=body) for path, body in calls)))


def one_line_naming(r: httpx.Response, status: int, words: str, item: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    assert message.startswith(f"{item}") or f"({item})" in message, message
    assert words in message and "\n" not in message and "Traceback" not in message, message


@pytest.mark.parametrize(("case", "ref", "status", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_image_is_a_4xx_naming_it(
    vl: Embedder, case: str, ref: str, status: int, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(ServerConfig(**LIMITS), embedder=vl)
    good = {"image": b64(PHOTO)}
    with caplog.at_level(logging.WARNING):
        openai_shape, encode, cohere = asyncio.run(
            _posts(
                app,
                [
                    ("/v1/embeddings", {"input": [good, {"image": ref}]}),
                    ("/encode", {"inputs": ["a text", {"text": "with a caption", "image": ref}]}),
                    ("/v2/embed", {"input_type": "image", "images": [b64(PHOTO), ref]}),
                ],
            )
        )
    one_line_naming(openai_shape, status, words, "input[1]")
    one_line_naming(encode, status, words, "inputs[1]")
    one_line_naming(cohere, status, words, "images[1]")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], case


def test_malformed_items_are_422_naming_the_field(vl: Embedder) -> None:
    app = create_app(ServerConfig(), embedder=vl)
    answers = asyncio.run(
        _posts(
            app,
            [
                ("/v1/embeddings", {"input": ["a text", {"image": 5}]}),
                ("/v1/embeddings", {"input": ["a text", {}]}),
                ("/v1/embeddings", {"input": [{"imag": b64(PHOTO)}]}),
                ("/v1/embeddings", {"input": [[1, 2], {"image": b64(PHOTO)}]}),
                ("/v2/embed", {"input_type": "image", "inputs": [{"content": [{"type": "image_url"}]}]}),
                ("/v2/embed", {"input_type": "image", "inputs": [{"content": [_url_part(PHOTO)] * 2}]}),
            ],
        )
    )
    messages = [r.json()["error"]["message"] for r in answers]
    assert [r.status_code for r in answers] == [422] * 6, messages
    assert "input.1.image" in messages[0]
    assert "needs 'image', 'text' or both" in messages[1]
    assert "imag" in messages[2]
    assert "a list of token ids" in messages[3]
    assert "image_url part needs 'image_url'" in messages[4]
    assert messages[5] == "inputs[0] holds 2 images; a BGE model reads one per input"


def _url_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + b64(data)}}


def test_a_bad_image_fails_only_its_own_request(vl: Embedder) -> None:
    """Good requests queued behind a slow batch, with a truncated image among them: had the
    bad image joined their batch, every one of them would fail."""
    app = create_app(ServerConfig(), embedder=vl)
    state = app.state.bgekit
    original = state._run_embed
    runs: list[int] = []

    def slow(seqs: list[TokenSeq], options: list[Any]) -> list[Any]:
        runs.append(len(seqs))
        if len(runs) == 2:  # the first run after warm-up holds the queue until the rest wait
            started.set()
            deadline = time.monotonic() + 20
            while state.embed_batcher.depth < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
        return original(seqs, options)

    started = threading.Event()
    state._run_embed = slow
    bad = {"input": [{"image": b64(PHOTO)}, {"image": b64(CAT[: len(CAT) // 2])}]}
    goods = [{"input": [{"image": b64(PHOTO)}, {"text": f"photo {i}", "image": b64(CAT)}]} for i in range(5)]

    async def go() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            state.embed_batcher._run = slow
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit", timeout=60) as client:
                first = asyncio.ensure_future(client.post("/v1/embeddings", json=goods[0]))
                while not started.is_set():  # its batch is running
                    await asyncio.sleep(0.01)
                rest = asyncio.gather(
                    *(client.post("/v1/embeddings", json=b) for b in (*goods[1:3], bad, *goods[3:]))
                )
                return [await first, *await rest]

    answers = asyncio.run(go())
    bad_answer = answers.pop(3)
    one_line_naming(bad_answer, 422, "truncated", "input[1]")
    want = vl.encode([ImageInput(data=PHOTO)]).dense[0]
    for r in answers:
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=1e-6)
    assert runs[2:] == [8]  # the four goods behind the slow run shared one batch; the bad one never queued


class _Images(BaseHTTPRequestHandler):
    """Loopback image host: a photo, a redirect to it, one over the byte limit with and
    without Content-Length, a 404, HTML, and one that answers too slowly."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        path = self.path
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
            return
        if path == "/slow.png":
            time.sleep(2.0)
        body = {"/cat.png": CAT, "/slow.png": CAT, "/big.png": NOISE, "/big-stream.png": NOISE}.get(path)
        if path == "/page.html":
            body = b"<html><body>not an image</body></html>"
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if path != "/big-stream.png":  # that one streams with no length until the connection closes
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the fetcher hung up: over its byte or time limit
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


URL_CASES = [
    ("/big.png", 413, f"is {len(NOISE):,} bytes, over the limit of 300,000"),  # from Content-Length
    ("/big-stream.png", 413, "over the limit of 300,000 bytes"),  # cut off while streaming
    ("/missing.png", 422, "gave HTTP 404"),
    ("/page.html", 422, "not an image Pillow can read"),
    ("/slow.png", 422, "took over 0.5 s"),
]


def test_urls_fetched_when_allowed(vl: Embedder, image_host: str) -> None:
    app = create_app(ServerConfig(allow_image_urls=True, **LIMITS), embedder=vl)
    state = app.state.bgekit
    state.image_policy = ImagePolicy(state.image_policy.limits, allow_urls=True, fetch_timeout=0.5)
    h = image_host
    calls = [
        (
            "/v1/embeddings",
            {"input": [{"image": f"{h}/cat.png"}, {"text": "a cat", "image": f"{h}/redirect"}]},
        ),
        ("/v2/embed", {"input_type": "image", "inputs": [{"content": [_url_part(PHOTO)]}]}),
    ]
    calls += [
        ("/v1/embeddings", {"input": [{"image": b64(PHOTO)}, {"image": f"{h}{p}"}]}) for p, *_ in URL_CASES
    ]
    good, cohere, *bad = asyncio.run(_posts(app, calls))
    assert good.status_code == 200, good.text
    want = vl.encode([ImageInput(data=CAT), Composed("a cat", ImageInput(data=CAT))]).dense
    np.testing.assert_allclose([d["embedding"] for d in good.json()["data"]], want, atol=1e-6)
    assert cohere.status_code == 200, cohere.text
    for (_, status, words), r in zip(URL_CASES, bad, strict=True):
        one_line_naming(r, status, words, "input[1]")


def _limits_of(app: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                return dict((await client.get("/info")).json()["limits"])

    return asyncio.run(go())


def test_wider_limits_reach_the_model(clip_dir: Path) -> None:
    """Limits wider than the library's are the served model's too (its check and its batch
    decoding), so a batch never refuses what the server's check took."""
    emb = Embedder.from_pretrained(str(clip_dir), engine=FP32)
    huge = ImageInput(data=bomb_png(8000, 7500), name="huge")  # 60 M pixels by its header
    with pytest.raises(ImageTooLargeError, match="over the limit of 50,000,000"):
        emb.tokenize([huge])
    limits = _limits_of(create_app(ServerConfig(max_image_pixels=80_000_000), embedder=emb))
    assert (limits["max_image_pixels"], limits["image_urls"]) == (80_000_000, "refused")
    assert len(emb.tokenize([huge])) == 1  # the header check now lets it through
    # the backbones decode under the same limits: narrowed after tokenising, a batch refuses
    seqs = emb.tokenize([ImageInput(data=CAT)])
    emb.set_image_limits(ImageLimits(max_bytes=10**9, max_pixels=1000))
    with pytest.raises(ImageTooLargeError, match="over the limit of 1,000"):
        emb.encode_tokens(seqs)


def test_narrow_limits_are_the_servers_alone(clip_dir: Path) -> None:
    """Under a pixel limit smaller than the model's crop (224 x 224 for real models, 32 x 32
    here), an image within the limit is served: its crop is not held to it."""
    emb = Embedder.from_pretrained(str(clip_dir), engine=FP32)
    small = encoded(Image.fromarray(photos.chelsea()[:20, :25]), "PNG")  # 500 pixels
    bigger = encoded(Image.fromarray(photos.chelsea()[:21, :25]), "PNG")  # 525 pixels
    app = create_app(ServerConfig(max_image_pixels=500), embedder=emb)
    ok, refused = asyncio.run(
        _posts(app, [("/v1/embeddings", {"input": [{"image": b64(d)}]}) for d in (small, bigger)])
    )
    assert ok.status_code == 200, ok.text
    np.testing.assert_allclose(
        ok.json()["data"][0]["embedding"], emb.encode([ImageInput(data=small)]).dense[0], atol=1e-6
    )
    one_line_naming(refused, 413, "25x21 = 525 pixels, over the limit of 500", "input[0]")
    assert emb.processor.limits.max_pixels == 50_000_000  # type: ignore[attr-defined]
