"""The server with images: Jina's items on /v1/embeddings and /encode, Cohere's /v2/embed
(images, mixed inputs, embedding types) and /search by image, with real photographs
(skimage's samples) through the real openai and cohere clients; every vector equal to the
library's own ``Embedder.encode`` of the same images."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

pytest.importorskip("fastapi")

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig
from bgekit.errors import InputError
from bgekit.images import Composed, ImageInput, ImageLimits
from bgekit.models.settings import EmbedderSettings
from bgekit.server import ServerConfig, create_app
from tests.live_server import live
from tests.tiny_clip import VISION_TOKENS
from tests.tiny_visualized import build_visualized

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)
CAPTION = "a cat sitting on a chair"
EDIT = "make the background dark as if the photo was taken at night"


def encoded(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, fmt: str = "png") -> str:
    return f"data:image/{fmt};base64,{b64(data)}"


@pytest.fixture(scope="module")
def pictures() -> dict[str, bytes]:
    """Real photographs: PNG and JPEG, odd sizes, a grey one."""
    return {
        "astronaut": encoded(photos.astronaut()[:509], "PNG"),
        "coffee": encoded(photos.coffee()[:, :597], "JPEG"),
        "chelsea": encoded(photos.chelsea(), "PNG"),
        "camera": encoded(photos.camera()[:301, :455], "PNG"),
    }


@pytest.fixture(scope="module")
def vl(clip_dir: Path) -> Embedder:
    return Embedder.from_pretrained(str(clip_dir), engine=FP32)


@pytest.fixture(scope="module")
def vis(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    t = build_visualized(tmp_path_factory.mktemp("vis") / "bert", "bert", seed=3)
    settings = EmbedderSettings(text_model=str(t.text_dir))
    return Embedder.from_pretrained(str(t.checkpoint), settings=settings, engine=FP32)


def image(data: bytes) -> ImageInput:
    return ImageInput(data=data)


def close(got: Any, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, atol=1e-6, rtol=1e-5)


def test_openai_client_sends_jina_items(vl: Embedder, pictures: dict[str, bytes]) -> None:
    """Images (data URI, bare base64), image + text and plain text in one list, through the
    official openai client (base64 transfer, its default, and float)."""
    import openai

    p = pictures
    given: list[Any] = [
        {"image": data_uri(p["astronaut"])},
        {"text": CAPTION, "image": b64(p["chelsea"])},
        "a cup of coffee on a wooden table",
        {"image": data_uri(p["coffee"], "jpeg")},
        {"text": "a photo of an astronaut"},
    ]
    items = [
        image(p["astronaut"]),
        Composed(CAPTION, image(p["chelsea"])),
        "a cup of coffee on a wooden table",
        image(p["coffee"]),
        "a photo of an astronaut",
    ]
    with live(create_app(ServerConfig(), embedder=vl)) as url:
        client = openai.OpenAI(api_key="none", base_url=f"{url}/v1")
        docs = client.embeddings.create(model="bge-vl", input=given)  # base64 on the wire
        close([d.embedding for d in docs.data], vl.encode(items).dense)
        queries = client.embeddings.create(
            model="bge-vl", input=given, encoding_format="float", extra_body={"input_type": "query"}
        )
        close([d.embedding for d in queries.data], vl.encode_queries(items).dense)
        assert docs.usage.prompt_tokens == sum(len(s) for s in vl.tokenize(items))


def test_encode_route_with_bge_visualized(vis: Embedder, pictures: dict[str, bytes]) -> None:
    p = pictures
    inputs = [
        {"image": data_uri(p["camera"])},
        {"text": EDIT, "image": data_uri(p["coffee"], "jpeg")},
        "a rocket on the launch pad",
    ]
    items = [image(p["camera"]), Composed(EDIT, image(p["coffee"])), "a rocket on the launch pad"]
    with live(create_app(ServerConfig(), embedder=vis)) as url:
        for kind in ("document", "query"):
            r = httpx.post(f"{url}/encode", json={"inputs": inputs, "kind": kind}, timeout=60)
            assert r.status_code == 200, r.text
            want = vis.encode(items, kind=kind).dense  # type: ignore[arg-type]
            close([d["dense"] for d in r.json()["data"]], want)


def packed_bits(vectors: np.ndarray) -> list[list[int]]:
    """Cohere's ubinary written out: bit 7 of byte 0 is dimension 0, set where positive."""
    out = []
    for v in vectors:
        row = []
        for start in range(0, len(v), 8):
            byte = 0
            for j, x in enumerate(v[start : start + 8]):
                byte |= int(x > 0) << (7 - j)
            row.append(byte)
        out.append(row)
    return out


def test_cohere_client_images_inputs_and_types(vl: Embedder, pictures: dict[str, bytes]) -> None:
    import cohere

    p = pictures
    with live(create_app(ServerConfig(api_key="co"), embedder=vl)) as url:
        co = cohere.ClientV2(api_key="co", base_url=url)
        got = co.embed(
            model="bge-vl",
            input_type="image",
            images=[data_uri(p["astronaut"]), data_uri(p["coffee"], "jpeg"), data_uri(p["camera"])],
            embedding_types=["float", "ubinary", "binary", "base64"],
        )
        want = vl.encode([image(p["astronaut"]), image(p["coffee"]), image(p["camera"])]).dense
        emb = got.embeddings
        close(emb.float_, want)
        assert emb.ubinary == packed_bits(want)
        assert emb.binary == [[b - 128 for b in row] for row in packed_bits(want)]
        assert emb.base64 is not None
        close([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in emb.base64], want)
        sizes = [(i.width, i.height, i.format, i.bit_depth) for i in got.images or []]
        assert sizes == [(512, 509, "png", 8), (597, 400, "jpeg", 8), (455, 301, "png", 8)]
        assert got.response_type == "embeddings_by_type" and got.id

        mixed = co.embed(
            model="bge-vl",
            input_type="search_query",
            inputs=[
                {
                    "content": [
                        {"type": "text", "text": CAPTION},
                        {"type": "image_url", "image_url": {"url": data_uri(p["chelsea"])}},
                    ]
                },
                {"content": [{"type": "image_url", "image_url": {"url": data_uri(p["coffee"], "jpeg")}}]},
                {"content": [{"type": "text", "text": "a cup of coffee"}]},
            ],
            output_dimension=8,
        )
        full = vl.encode_queries(
            [Composed(CAPTION, image(p["chelsea"])), image(p["coffee"]), "a cup of coffee"]
        )
        cut = full.dense[:, :8] / np.linalg.norm(full.dense[:, :8], axis=1, keepdims=True)
        close(mixed.embeddings.float_, cut)
        assert mixed.texts == [CAPTION, "", "a cup of coffee"]

        texts = co.embed(model="bge-vl", input_type="search_document", texts=["a dog on the beach"])
        close(texts.embeddings.float_, vl.encode(["a dog on the beach"]).dense)
        assert texts.images is None

        for kwargs, words in (
            ({"images": [data_uri(p["coffee"])], "embedding_types": ["int8"]}, "int8"),
            ({"images": [data_uri(p["coffee"])], "texts": ["x"]}, "one of texts, images or inputs"),
            ({"images": ["data:image/png;base64,AAAA"]}, "images[0]"),
        ):
            with pytest.raises(cohere.core.api_error.ApiError) as err:
                co.embed(model="bge-vl", input_type="image", **kwargs)  # type: ignore[arg-type]
            assert err.value.status_code == 422 and words in str(err.value.body)


def test_text_model_refuses_images_with_the_library_message(
    bert_m3: Path, pictures: dict[str, bytes]
) -> None:
    emb = Embedder.from_pretrained(str(bert_m3), engine=FP32)
    app = create_app(ServerConfig(), embedder=emb)

    async def go() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                with_image = {"input": ["a text", {"image": data_uri(pictures["coffee"])}]}
                jina_text = {"input": [{"text": "cats purr"}, "cats purr"]}
                return [
                    await client.post("/v1/embeddings", json=with_image),
                    await client.post("/v1/embeddings", json=jina_text),
                ]

    refused, texts = asyncio.run(go())
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    with pytest.raises(InputError) as lib:
        emb.processor.texts_only(["a text", {"image": b"x"}], "input")
    assert message == str(lib.value) and message.startswith("input[1] is an image")
    assert texts.status_code == 200  # Jina's text item is a text
    a, b = (np.asarray(d["embedding"]) for d in texts.json()["data"])
    np.testing.assert_array_equal(a, b)


def test_image_tokens_are_not_held_to_the_text_limit(clip_dir: Path, pictures: dict[str, bytes]) -> None:
    """A query image is 17 slots here, over an 8-token query limit; only text is held to it."""
    short = Embedder.from_pretrained(
        str(clip_dir), settings=EmbedderSettings(query_max_length=8), engine=FP32
    )
    assert VISION_TOKENS > 8
    app = create_app(ServerConfig(), embedder=short)
    long_text = "a photo of an astronaut in a white space suit on the moon at night"

    async def go() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                out = []
                for inputs in ([{"image": b64(pictures["coffee"])}], [long_text]):
                    body = {"input": inputs, "input_type": "query"}
                    out.append(await client.post("/v1/embeddings", json=body))
                return out

    ok, too_long = asyncio.run(go())
    assert ok.status_code == 200, ok.text
    close([ok.json()["data"][0]["embedding"]], short.encode_queries([image(pictures["coffee"])]).dense)
    assert too_long.status_code == 413 and "longer than 8 tokens" in too_long.json()["error"]["message"]


@pytest.fixture(scope="module")
def image_index(vl: Embedder, pictures: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Index:
    root = tmp_path_factory.mktemp("image-docs")
    docs = []
    for name, data in pictures.items():
        path = root / f"{name}.img"
        path.write_bytes(data)
        docs.append(Document(name, CAPTION if name == "chelsea" else "", image=str(path)))
    docs.append(Document("text", "a cup of coffee on a wooden table"))
    ix = Index(vl, IndexConfig(outputs=("dense",)))
    ix.add(docs)
    return ix


def test_search_by_image_and_by_image_with_text(image_index: Index, pictures: dict[str, bytes]) -> None:
    p = pictures
    app = create_app(ServerConfig(), embedder=image_index.embedder, index=image_index)
    cases = [
        ({"image": data_uri(p["coffee"], "jpeg")}, image(p["coffee"])),
        ({"image": b64(p["chelsea"]), "query": "a cat"}, Composed("a cat", image(p["chelsea"]))),
        ({"query": "a cup of coffee"}, "a cup of coffee"),
    ]

    async def go() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                out = [await client.post("/search", json={**b, "k": 4, "mode": "dense"}) for b, _ in cases]
                out.append(await client.post("/search", json={"k": 2}))
                return out

    *answers, nothing = asyncio.run(go())
    for (_, query), r in zip(cases, answers, strict=True):
        assert r.status_code == 200, r.text
        want = image_index.search([query], k=4, mode="dense")[0]
        hits = r.json()["hits"]
        assert [h["id"] for h in hits] == [h.id for h in want]
        np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in want], atol=1e-6)
        assert [h["image"] for h in hits] == [h.image for h in want]
    assert answers[0].json()["hits"][0]["id"] == "coffee"  # the same photo, found by itself
    assert answers[0].json()["hits"][0]["image"].endswith("coffee.img")
    assert (
        nothing.status_code == 422 and "needs 'query', 'image' or both" in nothing.json()["error"]["message"]
    )


def test_set_image_limits_on_a_text_model(bert_m3: Path) -> None:
    emb = Embedder.from_pretrained(str(bert_m3), engine=FP32)
    with pytest.raises(InputError, match="reads text only"):
        emb.set_image_limits(ImageLimits())


def test_serve_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bgekit serve``'s image options default to ServerConfig's and read BGEKIT_*."""
    from bgekit.cli.main import build_parser

    ns = build_parser().parse_args(["serve"])
    default = ServerConfig()
    assert (ns.max_image_bytes, ns.max_image_pixels, ns.allow_image_urls) == (
        default.max_image_bytes,
        default.max_image_pixels,
        default.allow_image_urls,
    )
    monkeypatch.setenv("BGEKIT_ALLOW_IMAGE_URLS", "true")
    monkeypatch.setenv("BGEKIT_MAX_IMAGE_PIXELS", "1000")
    ns = build_parser().parse_args(["serve", "--max-image-bytes", "5000"])
    assert (ns.max_image_bytes, ns.max_image_pixels, ns.allow_image_urls) == (5000, 1000, True)
    with pytest.raises(InputError, match="max_image_pixels must be at least 1"):
        ServerConfig(max_image_pixels=0)


def odd_images() -> dict[str, bytes]:
    """Legitimate images in every accepted format and some awkward modes and shapes."""
    cat = Image.fromarray(photos.chelsea())
    grey16 = Image.fromarray((photos.camera().astype(np.uint16) * 257)[:200, :300])
    out = {fmt: encoded(photos.chelsea(), fmt) for fmt in ("GIF", "BMP", "TIFF", "WEBP")}
    out["palette PNG with transparency"] = _saved(cat.convert("P"), "PNG", transparency=0)
    out["RGBA PNG"] = _saved(cat.convert("RGBA"), "PNG")
    out["16-bit grey PNG"] = _saved(grey16, "PNG")
    out["CMYK JPEG"] = _saved(cat.convert("CMYK"), "JPEG")
    out["1 x 90,000 strip"] = _saved(Image.new("L", (90_000, 1), 200), "PNG")
    return out


def _saved(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_every_accepted_format_and_odd_mode_encodes_as_the_library(vl: Embedder) -> None:
    odd = odd_images()
    app = create_app(ServerConfig(), embedder=vl)

    async def go() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                return await client.post(
                    "/v1/embeddings", json={"input": [{"image": b64(d)} for d in odd.values()]}
                )

    r = asyncio.run(go())
    assert r.status_code == 200, r.text
    close([d["embedding"] for d in r.json()["data"]], vl.encode([image(d) for d in odd.values()]).dense)


def test_queued_image_is_the_checked_crop(
    vl: Embedder, pictures: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a request queues is the preprocessed crop (the batch does not decode again),
    giving the very pixels of the encoded image; were preprocessing to treat the crop
    differently, the encoded image would be queued instead."""
    from bgekit.images import DEFAULT_LIMITS, load_pixels
    from bgekit.server import image_inputs

    spec = vl.processor.preprocess  # type: ignore[attr-defined]
    sent = ImageInput(data=pictures["astronaut"], name="input[0]")
    queued, info = image_inputs.check_image(sent, spec, DEFAULT_LIMITS)
    assert queued.pil is not None and queued.pil.size == (spec.size, spec.size) and queued.name == "input[0]"
    np.testing.assert_array_equal(load_pixels([queued], spec), load_pixels([sent], spec))
    assert (info.width, info.height, info.format) == (512, 509, "png")
    monkeypatch.setattr(image_inputs, "preprocess", lambda img, spec: np.zeros(1, np.float32))
    assert image_inputs.check_image(sent, spec, DEFAULT_LIMITS)[0] is sent
