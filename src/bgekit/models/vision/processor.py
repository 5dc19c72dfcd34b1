"""Texts, images and composed (image + text) inputs to token sequences.

An image becomes token slots in its sequence (its patches count against the engine's
token budget like text tokens) and an :class:`~bgekit.images.ImagePart` telling the
model's forward which slots to fill from which image. Each model family says how a
sequence is laid out (:meth:`ImageProcessor.image_seq`); texts go through the text
processor unchanged. Images are opened here only to check them (format, bytes and pixel
limits: a bad file fails before any encoding); the pixels are decoded per batch by the
model's forward.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Sequence
from typing import cast

import numpy as np
from PIL import Image as PILImage

from bgekit.errors import InputError
from bgekit.images import (
    DEFAULT_LIMITS,
    Composed,
    ImageInput,
    ImageLimits,
    ImagePreprocess,
    Item,
    check_items,
    open_image,
)
from bgekit.models.long_input import LongInputPolicy
from bgekit.models.processor import TextProcessor
from bgekit.models.prompts import Prompts
from bgekit.models.tokenizer import TextTokenizer
from bgekit.types import KINDS, Kind, ModelInfo, TokenSeq

IMAGE_MODALITIES = ("text", "image", "text+image")


def check_image() -> ImageInput:
    """A fixed synthetic photograph-like image (smooth colour gradients with a few edges),
    for the check of a fast path against fp32 at load."""
    y, x = np.mgrid[0:256, 0:320].astype(np.float32)
    r = 127 + 120 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 127 + 120 * np.cos((x + y) / 41.0)
    b = np.where((x // 64 + y // 64) % 2 == 0, 200.0, 40.0)
    rgb = np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)
    return ImageInput(pil=PILImage.fromarray(rgb, "RGB"), name="the load check image")


class ImageProcessor(TextProcessor):
    """A text processor that also lays out images and composed inputs (see the module)."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        info: ModelInfo,
        long: LongInputPolicy,
        *,
        preprocess: ImagePreprocess,
        image_tokens: int,
        limits: ImageLimits = DEFAULT_LIMITS,
    ):
        super().__init__(tokenizer, info, long)
        self.preprocess = preprocess
        self.image_tokens = image_tokens  # slots one image takes (the engine's budget counts them)
        self.limits = limits

    @abstractmethod
    def image_seq(self, image: ImageInput, text: str | None, kind: Kind) -> TokenSeq:
        """The sequence of an image alone (``text=None``) or with a text (prompts already
        applied), its slots named by an :class:`~bgekit.images.ImagePart` in ``media``."""

    def tokenize(
        self,
        texts: Sequence[Item],
        prompts: Prompts,
        *,
        kind: Kind = "document",
        task: str | None = None,
        instruction: str | None = None,
    ) -> list[TokenSeq]:
        """Texts as the text processor lays them out; images and composed inputs as the
        model does (the side's prompts apply to a composed input's text too)."""
        if kind not in KINDS:
            raise InputError(f"kind must be 'query' or 'document', got {kind!r}")
        items = check_items(texts)
        out: list[TokenSeq | None] = [None] * len(items)
        at = [i for i, x in enumerate(items) if isinstance(x, str)]
        plain = [items[i] for i in at]
        for i, seq in zip(
            at,
            super().tokenize(plain, prompts, kind=kind, task=task, instruction=instruction) if at else [],
            strict=True,
        ):
            out[i] = seq
        for i, item in enumerate(items):
            if isinstance(item, str):
                continue
            image = item if isinstance(item, ImageInput) else item.image
            if image.name == "image":  # unnamed (bytes, a PIL image): name it by its position
                image = dataclasses.replace(image, name=f"inputs[{i}]")
            opened = open_image(image, self.limits)  # header only: format, bytes, pixels
            if image.pil is None:
                opened.close()
            text = None
            if isinstance(item, Composed):
                text = prompts.apply([item.text], kind, task=task, instruction=instruction)[0]
            out[i] = self.image_seq(image, text, kind)
        return cast(list[TokenSeq], out)

    def check_seqs(self, texts: Sequence[TokenSeq]) -> list[TokenSeq]:
        """What a fast path is checked on at load: the text checks, an image and the image
        with a text."""
        image = check_image()
        return [*texts, self.image_seq(image, None, "document"), self.image_seq(image, "a photo", "query")]
