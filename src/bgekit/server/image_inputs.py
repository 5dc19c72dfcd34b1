"""Images in HTTP requests: how an item a client sends (Jina's ``{"image": ..., "text": ...}``,
Cohere's data URIs and ``image_url`` parts, a search's ``image``) becomes a
:class:`bgekit.images.ImageInput`, and the checks every image passes before it is queued.

An image is base64, a ``data:image/...;base64,`` URI, or — only when the operator allows it
(``--allow-image-urls``) — an http(s) URL, fetched under a time and a byte limit. Anything
else is refused; a local path in particular is never opened: the server reads no file of
its own for a client.

Every image of a request is decoded and preprocessed here, off the event loop, before any
of the request's inputs are queued, so a corrupt, truncated, oversized or hostile image
fails its own request (413 over the byte or pixel limit, 422 otherwise, naming the item)
and never a batch shared with other requests. What is queued is the preprocessed crop
(:func:`as_crop`), so the batch does not decode it again.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from starlette.concurrency import run_in_threadpool

from bgekit.errors import InputError
from bgekit.images import (
    DEFAULT_LIMITS,
    Composed,
    ImageError,
    ImageInput,
    ImageLimits,
    ImagePreprocess,
    ImageTooLargeError,
    Item,
    image_from_base64,
    load_pixels,
    open_image,
    preprocess,
    text_of,
)

if TYPE_CHECKING:
    from bgekit.models import Embedder

# What Pillow calls the formats accepted (its MPO is a camera's multi-picture JPEG); any
# other format Pillow recognises (EPS, whose decoder runs Ghostscript, PSD, DDS, ...) is
# refused after its header is read, before it is decoded.
FORMATS = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}
_BITS = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):", re.IGNORECASE)
FETCH_TIMEOUT = 10.0  # seconds for one URL, from connecting to its last byte
FETCH_CONCURRENCY = 8  # URLs of one request fetched at a time


@dataclass(frozen=True)
class ImagePolicy:
    """How a server takes images: ``limits`` on each image; ``allow_urls``: fetch http(s)
    URLs (at most ``max_fetch_bytes`` for all the images of one request together)."""

    limits: ImageLimits = DEFAULT_LIMITS
    allow_urls: bool = False
    max_fetch_bytes: int = 64 << 20
    fetch_timeout: float = FETCH_TIMEOUT


@dataclass(frozen=True)
class RawItem:
    """One input as a request gives it: a text, an image reference (base64, a data URI or
    a URL), or both."""

    text: str | None = None
    image: str | None = None


@dataclass(frozen=True)
class ImageInfo:
    """What a request's image turned out to be (Cohere's embed response lists them)."""

    width: int
    height: int
    format: str
    bit_depth: int


@dataclass(frozen=True)
class ReadItems:
    items: list[Item]
    images: list[ImageInfo]  # one per image, in input order


def check_image(
    image: ImageInput, spec: ImagePreprocess, limits: ImageLimits
) -> tuple[ImageInput, ImageInfo]:
    """``image`` decoded and preprocessed as a batch would, and what to queue in its place
    (see :func:`as_crop`): any failure is an :class:`ImageError` naming it,
    :class:`ImageTooLargeError` over ``limits``."""
    try:
        opened = open_image(image, limits)  # the header: format and size, nothing decoded
        try:
            fmt, (width, height), mode = opened.format or "", opened.size, opened.mode
        finally:
            opened.close()
        if fmt not in FORMATS:
            raise ImageError(
                f"{image.name}: {fmt or 'an unknown'} image; this server takes JPEG, PNG, WebP, GIF, BMP or TIFF"
            )
        pixels = load_pixels([image], spec, limits)[0]
    except ImageError:
        raise
    except Exception as err:  # a Pillow plugin's own exception on a hostile file (DDS: NotImplementedError)
        detail = " ".join(str(err).split())[:160]
        raise ImageError(
            f"{image.name}: not an image this server can read ({type(err).__name__}: {detail})"
        ) from None
    return as_crop(image, pixels, spec), ImageInfo(width, height, FORMATS[fmt], _BITS.get(mode, 8))


def as_crop(image: ImageInput, pixels: np.ndarray, spec: ImagePreprocess) -> ImageInput:
    """The decoded image's preprocessed ``pixels`` as the RGB crop they were normalised from
    (recovered exactly: float32 errors are ~1e-4 of a level), which preprocessing leaves as
    it is (already size x size, RGB). Queued instead of the encoded image, the batch neither
    decodes nor resizes it again, and it holds a fixed 3 x size x size bytes. Should
    preprocessing ever treat such a crop differently, the encoded image is queued as it
    came (checked here, so the vectors never change)."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    levels = np.rint((pixels * std + mean) * np.float32(255.0)).clip(0, 255).astype(np.uint8)
    crop = PILImage.fromarray(np.ascontiguousarray(levels.transpose(1, 2, 0)), "RGB")
    if not np.array_equal(preprocess(crop, spec), pixels):
        return image
    return ImageInput(pil=crop, name=image.name)


def with_texts(items: Sequence[Item], texts: Sequence[str]) -> list[Item]:
    """``items`` with their text parts replaced (cut to a length bound); images unchanged."""
    out: list[Item] = []
    for item, text in zip(items, texts, strict=True):
        if isinstance(item, str):
            out.append(text)
        elif isinstance(item, Composed):
            out.append(Composed(text, item.image))
        else:
            out.append(item)
    return out


def bound_texts(items: Sequence[Item], bound: Callable[[list[str]], list[str]]) -> list[Item]:
    """``items`` whose texts went through ``bound`` (texts cut or refused by the server's
    length rule); an image alone has the text ``""``, which passes."""
    return with_texts(items, bound([text_of(x) for x in items]))


class ImageReader:
    """Turns a request's items into :data:`~bgekit.images.Item` values, every image fetched
    (if allowed), decoded and checked (see the module). At most ``decoders`` requests
    decode at a time: a decoded image may be ``max_pixels`` x 3 bytes, and the threadpool
    is shared with tokenising. Made on the event loop that serves (its semaphore)."""

    def __init__(self, policy: ImagePolicy, decoders: int | None = None):
        self.policy = policy
        self._decoders = asyncio.Semaphore(decoders or min(8, os.cpu_count() or 1))

    async def read(
        self, raw: Sequence[RawItem], what: str, emb: Embedder, labels: Sequence[str] | None = None
    ) -> ReadItems:
        """The items; ``what`` names the field (``input``: errors say ``input[2]: ...``) unless
        ``labels`` names each item."""
        names = list(labels) if labels is not None else [f"{what}[{i}]" for i in range(len(raw))]
        if all(r.image is None for r in raw):
            return ReadItems([r.text or "" for r in raw], [])
        if "image" not in emb.info.modalities:  # the library's message, before any decoding
            emb.processor.texts_only([r.text if r.image is None else {"image": "?"} for r in raw], what)
            raise InputError(f"{emb.info.name} reads text only")
        spec: ImagePreprocess = emb.processor.preprocess  # type: ignore[attr-defined]
        refs: list[str | bytes | None] = [r.image for r in raw]
        urls = [i for i, ref in enumerate(refs) if isinstance(ref, str) and _is_web_url(ref)]
        if urls and not self.policy.allow_urls:
            raise ImageError(
                f"{names[urls[0]]}: this server does not fetch image URLs (start it with "
                "--allow-image-urls); send the image as base64 or a data: URI"
            )
        if urls:
            fetched = await self._fetch_all([(str(refs[i]), names[i]) for i in urls])
            for i, data in zip(urls, fetched, strict=True):
                refs[i] = data
        async with self._decoders:
            inputs, infos = await run_in_threadpool(self._decode, refs, names, spec)
        items: list[Item] = []
        for r, image in zip(raw, inputs, strict=True):
            if image is None:
                items.append(r.text or "")
            else:
                items.append(image if r.text is None else Composed(r.text, image))
        return ReadItems(items, infos)

    def _decode(
        self, refs: Sequence[str | bytes | None], names: Sequence[str], spec: ImagePreprocess
    ) -> tuple[list[ImageInput | None], list[ImageInfo]]:
        inputs: list[ImageInput | None] = []
        infos = []
        for ref, name in zip(refs, names, strict=True):
            if ref is None:
                inputs.append(None)
                continue
            image = ImageInput(data=ref, name=name) if isinstance(ref, bytes) else from_string(ref, name)
            queued, info = check_image(image, spec, self.policy.limits)
            inputs.append(queued)
            infos.append(info)
        return inputs, infos

    async def _fetch_all(self, urls: Sequence[tuple[str, str]]) -> list[bytes]:
        """Each URL's body, a few at a time; all of them together within ``max_fetch_bytes``."""
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)
        total = [0]

        async def one(url: str, name: str) -> bytes:
            async with gate:
                data = await self._fetch(url, name)
            total[0] += len(data)
            if total[0] > self.policy.max_fetch_bytes:
                raise ImageTooLargeError(
                    f"{name}: the images fetched for this request pass {self.policy.max_fetch_bytes:,} bytes in all"
                )
            return data

        tasks = [asyncio.ensure_future(one(u, n)) for u, n in urls]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one failed: the others stop fetching
            for task in tasks:
                task.cancel()

    async def _fetch(self, url: str, name: str) -> bytes:
        import httpx

        shown = url if len(url) <= 100 else url[:97] + "..."
        try:
            return await asyncio.wait_for(self._download(url, name, shown), self.policy.fetch_timeout)
        except asyncio.TimeoutError:  # the whole download, however slowly its bytes drip
            raise ImageError(f"{name}: fetching {shown} took over {self.policy.fetch_timeout:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            detail = " ".join(str(err).split())[:120] or type(err).__name__
            raise ImageError(f"{name}: cannot fetch {shown} ({detail})") from None

    async def _download(self, url: str, name: str, shown: str) -> bytes:
        import httpx

        cap = self.policy.limits.max_bytes
        # trust_env=False: no proxy settings or .netrc credentials for client-chosen hosts
        async with httpx.AsyncClient(
            follow_redirects=True, max_redirects=3, timeout=self.policy.fetch_timeout, trust_env=False
        ) as client:
            headers = {"Accept": "image/*", "Accept-Encoding": "identity"}
            async with client.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    raise ImageError(f"{name}: fetching {shown} gave HTTP {resp.status_code}")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise ImageTooLargeError(
                        f"{name}: {shown} is {int(declared):,} bytes, over the limit of {cap:,}"
                    )
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > cap:  # stop reading: the rest is never downloaded
                        raise ImageTooLargeError(f"{name}: {shown} is over the limit of {cap:,} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)


def _is_web_url(ref: str) -> bool:
    found = _SCHEME.match(ref.strip())
    return found is not None and found.group(1).lower() in ("http", "https")


def from_string(ref: str, name: str) -> ImageInput:
    """An image sent as base64 or a data URI; any other scheme (``file:``, ``ftp:``, ...) is
    refused naming the item (http(s) URLs are fetched, or refused, before this)."""
    found = _SCHEME.match(ref.strip())
    if found is not None and found.group(1).lower() != "data":
        raise ImageError(
            f"{name}: a {found.group(1).lower()}: URL is not an image this server reads "
            "(base64, a data: URI or, when the server allows it, an http(s) URL)"
        )
    return image_from_base64(ref, name)
