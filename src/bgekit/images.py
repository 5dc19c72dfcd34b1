"""Image inputs: what users pass (a path, encoded bytes, a PIL image, or an image with a
text), how an image is opened safely (limits on bytes and pixels, corrupt and truncated
files, decompression bombs: one :class:`ImageError` naming the item), and the CLIP-style
preprocessing (short side resized bicubic, centre crop, RGB, mean / std) on Pillow + numpy.

Opening reads the header only (format and size), so a corpus is checked up front without
decoding it; :func:`load_pixels` decodes and preprocesses one batch at a time.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile

from bgekit.errors import InputError

__all__ = [
    "DEFAULT_LIMITS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "Composed",
    "ImageError",
    "ImageInput",
    "ImageLimits",
    "ImagePart",
    "ImagePreprocess",
    "ImageTooLargeError",
    "Item",
    "as_item",
    "check_items",
    "has_images",
    "image_from_base64",
    "is_image_like",
    "is_image_path",
    "load_pixels",
    "open_image",
    "preprocess",
    "text_of",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# A truncated file is an error, never a half-grey image (Pillow's default, kept explicit).
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(InputError):
    """An image that cannot be used: not an image, corrupt, truncated, or an unknown format."""


class ImageTooLargeError(ImageError):
    """An image over the byte or pixel limit (a decompression bomb is one)."""


@dataclass(frozen=True, eq=False)
class ImageInput:
    """An image to encode: a file ``path``, encoded ``data`` (JPEG, PNG, WebP, ...), or an
    already opened PIL image. ``name`` is how errors and search hits refer to it: the path,
    or a label such as ``"inputs[3]"``."""

    path: str | None = None
    data: bytes | None = None
    pil: PILImage.Image | None = None
    name: str = "image"

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.path, self.data, self.pil)) != 1:
            raise InputError("an ImageInput takes exactly one of path, data or pil")

    @classmethod
    def of(cls, value: object, name: str = "image") -> ImageInput:
        """An image from a path (``str`` / ``Path``), bytes, a PIL image or an ImageInput."""
        if isinstance(value, ImageInput):
            return value
        if isinstance(value, PILImage.Image):
            return cls(pil=value, name=name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(data=bytes(value), name=name)
        if isinstance(value, (str, Path)):
            return cls(path=str(value), name=str(value))
        raise InputError(f"{name} is {type(value).__name__}; an image is a path, bytes or a PIL image")


@dataclass(frozen=True, eq=False)
class Composed:
    """A composed input: an image with a text (e.g. a query "this dress, in red")."""

    text: str
    image: ImageInput


Item: TypeAlias = str | ImageInput | Composed


def as_item(value: object, label: str) -> Item:
    """One input as bgekit reads it: a string is a text; a PIL image, bytes or ``Path`` an
    image; ``{"image": ..., "text": ...}`` (either key alone too) an image, a text or both."""
    if isinstance(value, (str, ImageInput, Composed)):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"image", "text"}
        if unknown or not value:
            raise InputError(f"{label} takes the keys 'image' and 'text', got {sorted(map(str, value))}")
        text = value.get("text")
        if text is not None and not isinstance(text, str):
            raise InputError(f"{label}: 'text' is {type(text).__name__}, expected a string")
        if value.get("image") is None:
            if text is None:
                raise InputError(f"{label} has neither an image nor a text")
            return text
        image = ImageInput.of(value["image"], label)
        return image if text is None else Composed(text, image)
    if isinstance(value, (PILImage.Image, bytes, bytearray, memoryview, Path)):
        return ImageInput.of(value, label)
    raise InputError(f"{label} is {type(value).__name__}, expected a string or an image")


def check_items(items: object, what: str = "inputs") -> list[Item]:
    """``items`` as a list of texts, images and composed inputs (see :func:`as_item`); a
    single string or image is refused rather than taken as a list."""
    if isinstance(items, (str, ImageInput, Composed, PILImage.Image, bytes)):
        raise InputError(f"{what} must be a list; wrap a single input in one: [input]")
    if not isinstance(items, Sequence):
        raise InputError(f"{what} must be a list, got {type(items).__name__}")
    return [as_item(x, f"{what}[{i}]") for i, x in enumerate(items)]


def text_of(item: Item) -> str:
    """The text part of an input (``""`` for an image alone): what lexical search reads."""
    if isinstance(item, str):
        return item
    return item.text if isinstance(item, Composed) else ""


def has_images(items: Iterable[object]) -> bool:
    """Whether any input holds an image."""
    return any(is_image_like(x) for x in items)


def is_image_like(value: object) -> bool:
    """Whether ``value`` is (or holds) an image as :func:`as_item` reads one."""
    if isinstance(value, (ImageInput, Composed, PILImage.Image, bytes, bytearray, memoryview, Path)):
        return True
    return isinstance(value, Mapping) and value.get("image") is not None


def image_from_base64(value: str, name: str) -> ImageInput:
    """An image sent as base64 or a ``data:image/...;base64,`` URI (HTTP APIs); line breaks
    in the base64 (MIME wraps it at 76 characters) are ignored."""
    text = value.strip()
    if text[:5].lower() == "data:":
        head, sep, body = text.partition(",")
        head = head.lower()  # media types and parameters are case-insensitive
        if not sep or not head.endswith(";base64"):
            raise ImageError(f"{name}: a data URI must be 'data:image/<type>;base64,<data>'")
        if not head[5:].startswith("image/"):
            raise ImageError(
                f"{name}: the data URI holds {head[5:].split(';')[0] or 'no type'}, not an image"
            )
        text = body
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name}: not valid base64") from None
    return ImageInput(data=data, name=name)


@dataclass(frozen=True)
class ImageLimits:
    """The largest image accepted: encoded bytes and decoded pixels (width times height).
    A file over either is refused before it is decoded, so a decompression bomb (a small
    file that decodes to gigapixels) costs nothing."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise InputError("image limits must be positive")


DEFAULT_LIMITS = ImageLimits()


def _read(image: ImageInput, limits: ImageLimits) -> PILImage.Image:
    if image.pil is not None:
        return image.pil
    if image.path is not None:
        try:
            size = os.stat(image.path).st_size
        except OSError as err:
            raise ImageError(f"{image.name}: cannot read the image ({err.strerror or err})") from None
        if size > limits.max_bytes:
            raise ImageTooLargeError(f"{image.name}: {size:,} bytes, over the limit of {limits.max_bytes:,}")
        try:
            with open(image.path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise ImageError(f"{image.name}: cannot read the image ({err.strerror or err})") from None
    else:
        assert image.data is not None
        data = image.data
        if len(data) > limits.max_bytes:
            raise ImageTooLargeError(
                f"{image.name}: {len(data):,} bytes, over the limit of {limits.max_bytes:,}"
            )
    if not data:
        raise ImageError(f"{image.name}: empty, not an image")
    try:
        with warnings.catch_warnings():
            # Pillow's bomb warning (past ~89M pixels) is left to ``limits.max_pixels``, which
            # open_image checks next, before any decoding; its error (past twice that) stands.
            warnings.simplefilter("ignore")
            return PILImage.open(io.BytesIO(data))
    except PILImage.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageTooLargeError(f"{image.name}: {count}, too many to open (a decompression bomb?)") from None
    except PILImage.UnidentifiedImageError:
        raise ImageError(f"{image.name}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(f"{image.name}: corrupt image ({err})") from None
    except NotImplementedError as err:  # a plugin meeting a variant it lacks (DDS pixel formats)
        raise ImageError(
            f"{image.name}: an image variant Pillow cannot read ({err or 'NotImplementedError'})"
        ) from None


def open_image(image: ImageInput, limits: ImageLimits = DEFAULT_LIMITS) -> PILImage.Image:
    """The image opened lazily (header read, pixels not decoded), its size checked against
    ``limits``."""
    img = _read(image, limits)
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"{image.name}: the image is {w}x{h} pixels")
    if w * h > limits.max_pixels:
        raise ImageTooLargeError(
            f"{image.name}: {w}x{h} = {w * h:,} pixels, over the limit of {limits.max_pixels:,}"
        )
    return img


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes pixel values: resize the short side to ``size`` (bicubic, the
    long side ``int(size * long / short)``), crop the centre ``size`` x ``size``, RGB,
    scale to [0, 1], subtract ``mean``, divide by ``std``.

    The two reference pipelines differ in two details kept here: where the centre crop
    starts on an odd margin (``crop="round"``: ``round(margin / 2)`` as torchvision;
    ``"floor"``: ``margin // 2`` as transformers' CLIP processor), and whether the image is
    converted to RGB before resizing (transformers) or after the crop (torchvision
    pipelines, ``rgb_first=False``: a palette image is then resized by nearest neighbour, as
    Pillow resizes palette images)."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    crop: Literal["round", "floor"] = "round"
    rgb_first: bool = False


def _resized(w: int, h: int, size: int) -> tuple[int, int]:
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


# A resized image over this many crops' pixels (an aspect ratio past 32:1) is not made
# whole: a 1 x 10,000,000 strip, small and within the pixel limit, would resize to
# 224 x 2.2 billion pixels. Only the centre the crop keeps is resized then (Pillow's
# ``box``: the same filter on the same source pixels, within one level of 255).
_WHOLE_RESIZE_CROPS = 32
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")


def _crop_at(w: int, h: int, size: int, crop: Literal["round", "floor"]) -> tuple[int, int]:
    """(left, top) of the centre crop of a ``w`` x ``h`` image."""
    if crop == "round":
        return round((w - size) / 2.0), round((h - size) / 2.0)
    return (w - size) // 2, (h - size) // 2


def preprocess(img: PILImage.Image, spec: ImagePreprocess) -> np.ndarray:
    """``(3, size, size)`` float32 pixel values of a decoded image (see :class:`ImagePreprocess`)."""
    if img.mode in _SIXTEEN_BIT_GREY:  # Pillow's convert clips 16-bit values at 255 (white)
        img = PILImage.fromarray((np.asarray(img) >> 8).astype(np.uint8), "L")
    if spec.rgb_first and img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    s = spec.size
    new = _resized(w, h, s)
    left, top = _crop_at(*new, s, spec.crop)
    if new[0] * new[1] > _WHOLE_RESIZE_CROPS * s * s:
        sx, sy = w / new[0], h / new[1]
        box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
        img = img.resize((s, s), PILImage.Resampling.BICUBIC, box=box)
    else:
        if new != (w, h):
            img = img.resize(new, PILImage.Resampling.BICUBIC)
        img = img.crop((left, top, left + s, top + s))
    if img.mode != "RGB":
        img = img.convert("RGB")
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _decoded(image: ImageInput, limits: ImageLimits) -> PILImage.Image:
    img = open_image(image, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette transparency notes and the like
            img.load()
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise ImageError(f"{image.name}: corrupt or truncated image ({err})") from None
    return img


def load_pixels(
    images: Sequence[ImageInput], spec: ImagePreprocess, limits: ImageLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """``(n, 3, size, size)`` float32: each image decoded and preprocessed (one batch at a
    time: the engine calls this per batch, so a corpus is never decoded whole)."""
    out = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    for i, image in enumerate(images):
        try:
            out[i] = preprocess(_decoded(image, limits), spec)
        except ImageError:
            raise
        except (OSError, ValueError, MemoryError) as err:  # e.g. a mode Pillow cannot resize or convert
            raise ImageError(f"{image.name}: cannot be converted to RGB pixels ({err})") from None
    return out


@dataclass(frozen=True)
class ImagePart:
    """Where an image sits in a token sequence: token slots ``start`` to ``start + count``
    hold its patch embeddings, which the model's forward computes from ``image``. The
    engine carries it with the sequence (:attr:`bgekit.types.TokenSeq.media`) unread."""

    image: ImageInput
    start: int
    count: int


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether a file name has an image suffix bgekit indexes from a folder."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
