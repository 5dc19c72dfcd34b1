"""BGE-VL (BAAI/BGE-VL-base, -large; MegaPairs): CLIP ViT-B/16 and ViT-L/14 fine-tuned for
composed image retrieval, in transformers' ``CLIPModel`` layout.

Their hub config points at remote code (``modeling_MMRet_CLIP.py``); bgekit runs none of
it. It builds transformers' own ``CLIPModel`` from the config and loads the weights,
checked (:func:`~bgekit.models.runtime.load_pretrained`). The maths are the reference's
``encode_text`` / ``encode_image`` / ``encode_multimodal``: a text is its projected
end-of-text state, an image its projected CLS state, an image with a text the sum of the
two, each L2-normalised (by :class:`~bgekit.models.heads.EmbedRunner`). Texts are cut at
77 tokens (the reference would fail past its position table). Images are preprocessed as
transformers' ``CLIPImageProcessor`` does (RGB first, bicubic short side, centre crop at
``(h - size) // 2``, OpenAI mean / std), decoded one batch at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgekit.engine import EngineConfig, TokenBatch
from bgekit.engine.device import MatmulKind
from bgekit.errors import InputError, ModelFormatError
from bgekit.images import (
    DEFAULT_LIMITS,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageInput,
    ImageLimits,
    ImagePart,
    ImagePreprocess,
    load_pixels,
)
from bgekit.models.heads import EncoderWithHeads
from bgekit.models.kernels import patch_linears
from bgekit.models.loading import read_folder
from bgekit.models.processor import long_input_policy
from bgekit.models.prompts import Prompts
from bgekit.models.runtime import load_pretrained
from bgekit.models.settings import EmbedderSettings, resolve_prompts
from bgekit.models.tokenizer import TextTokenizer
from bgekit.models.vision.processor import IMAGE_MODALITIES, ImageProcessor
from bgekit.types import Kind, ModelInfo, TokenSeq

__all__ = ["CLIP_MAX_LENGTH", "ClipBackbone", "ClipProcessor", "load_bge_vl", "read_preprocess"]

CLIP_MAX_LENGTH = 77  # CLIP's text position table
KNOWN = {"bge-vl-base": "BAAI/BGE-VL-base", "bge-vl-large": "BAAI/BGE-VL-large"}


class ClipBackbone(nn.Module):
    """CLIP's two towers behind bgekit's backbone interface: one vector per input
    (``pooled``), unnormalised. A batch input is a text (no media: its ids go through the
    text tower), an image (an :class:`~bgekit.images.ImagePart` at slot 0: its ids are
    placeholders), or a text then an image (the part starts after the text's ids): the
    text's and the image's projected features added up."""

    pooled = True
    packed = False  # the text tower computes on padded ids

    def __init__(self, model: Any, preprocess: ImagePreprocess, limits: ImageLimits = DEFAULT_LIMITS):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.limits = limits
        self.dim = int(model.config.projection_dim)

    def text_features(self, ids: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
        """``(n, projection_dim)``: the projected end-of-text state of each id run, padded
        on the right with ``pad_id`` (CLIP's pad is its end token, which it pools first)."""
        width = max(int(t.shape[0]) for t in ids)
        device = ids[0].device
        padded = torch.full((len(ids), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(ids), width), dtype=torch.long, device=device)
        for row, one in enumerate(ids):
            padded[row, : one.shape[0]] = one
            mask[row, : one.shape[0]] = 1
        clip: Any = self.model
        out = clip.text_model(input_ids=padded, attention_mask=mask)
        return clip.text_projection(out.pooler_output)

    def image_features(self, images: Sequence[ImageInput], device: torch.device) -> torch.Tensor:
        """``(n, projection_dim)``: the projected CLS state of each image (decoded here, for
        this batch only)."""
        clip: Any = self.model
        dtype = clip.vision_model.embeddings.patch_embedding.weight.dtype
        pixels = torch.from_numpy(load_pixels(images, self.preprocess, self.limits))
        out = clip.vision_model(pixel_values=pixels.to(device=device, dtype=dtype))
        return clip.visual_projection(out.pooler_output)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        n = len(batch)
        media = batch.media or (None,) * n
        starts = batch.offsets[:-1].tolist()
        lengths = batch.lengths.tolist()
        text_rows: list[int] = []
        text_ids: list[torch.Tensor] = []
        image_rows: list[int] = []
        images: list[ImageInput] = []
        for i, part in enumerate(media):
            if part is None:
                text_rows.append(i)
                text_ids.append(batch.ids[starts[i] : starts[i] + lengths[i]])
                continue
            if not isinstance(part, ImagePart):
                raise InputError(f"input {i} of the batch carries {type(part).__name__}, not an image")
            image_rows.append(i)
            images.append(part.image)
            if part.start > 0:  # composed: the text's ids come first
                text_rows.append(i)
                text_ids.append(batch.ids[starts[i] : starts[i] + part.start])
        parts = []
        if text_rows:
            parts.append((text_rows, self.text_features(text_ids, batch.pad_id)))
        if image_rows:
            parts.append((image_rows, self.image_features(images, batch.device)))
        out = torch.zeros((n, self.dim), dtype=parts[0][1].dtype, device=batch.device)
        for rows, features in parts:  # a composed input: text features + image features
            out[torch.tensor(rows, device=batch.device)] += features.to(out.dtype)
        return out

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        return self.forward(batch)

    def set_matmul(self, kind: MatmulKind) -> int:
        """Every linear layer of both towers and both projections (the patch embedding is a
        convolution and stays as it is)."""
        return patch_linears(self.model, kind)


class ClipProcessor(ImageProcessor):
    """Texts as CLIP's tokenizer gives them (cut at 77 tokens); an image as ``image_tokens``
    slots (CLS plus its patches, which the engine's budget counts); an image with a text as
    the text's ids, then the image's slots."""

    def image_seq(self, image: ImageInput, text: str | None, kind: Kind) -> TokenSeq:
        slots = [self.tokenizer.pad_id] * self.image_tokens  # placeholders, never read
        if text is None:
            return TokenSeq(slots, None, False, ImagePart(image, 0, self.image_tokens))
        limit = self.info.query_max_length if kind == "query" else self.info.passage_max_length
        seq = self.tokenizer.encode([text], limit)[0]
        ids = list(seq.ids)
        return TokenSeq([*ids, *slots], None, seq.truncated, ImagePart(image, len(ids), self.image_tokens))


def _edge(file: Path, data: dict[str, Any], key: str, inner: tuple[str, ...]) -> int | None:
    """A size field of a preprocessor config: a number, or ``{"shortest_edge": n}`` /
    ``{"height": n, "width": n}``."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, dict):
        sides = {value.get(k) for k in inner if k in value}
        if len(sides) == 1 and set(value) <= set(inner):
            value = sides.pop()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFormatError(
            f"{file}: {key} must be a square size (a whole number or {{{', '.join(inner)}}}), not {value!r}"
        )
    return value


def _triple(
    file: Path, data: dict[str, Any], key: str, default: tuple[float, float, float]
) -> tuple[float, float, float]:
    value = data.get(key)
    if value is None:
        return default
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        )
    ):
        raise ModelFormatError(f"{file}: {key} must be three numbers (R, G, B), not {value!r}")
    if key == "image_std" and min(value) <= 0:
        raise ModelFormatError(f"{file}: image_std must be positive, not {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def read_preprocess(folder: Path, image_size: int) -> ImagePreprocess:
    """The image preprocessing ``preprocessor_config.json`` describes (without one: CLIP's,
    at the vision tower's ``image_size``). bgekit runs transformers' CLIP pipeline only, so
    a config asking for anything else (another resampling, no crop, a size other than the
    tower's) is an error naming the file and field."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return ImagePreprocess(size=image_size, crop="floor", rgb_first=True)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"cannot read {file}: {e}") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{file} must hold a JSON object, not {type(data).__name__}")
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
        if data.get(flag, True) is not True:
            raise ModelFormatError(
                f"{file}: {flag} is {data[flag]!r}; bgekit runs CLIP's preprocessing, which sets it"
            )
    if data.get("resample", 3) != 3:
        raise ModelFormatError(
            f"{file}: resample is {data['resample']!r}; bgekit resizes bicubic (3), as CLIP does"
        )
    factor = data.get("rescale_factor", 1 / 255)
    if not isinstance(factor, (int, float)) or not math.isclose(factor, 1 / 255, rel_tol=1e-6):
        raise ModelFormatError(f"{file}: rescale_factor is {factor!r}; bgekit scales pixels by 1/255")
    size = _edge(file, data, "size", ("shortest_edge",))
    crop = _edge(file, data, "crop_size", ("height", "width"))
    for key, value in (("size", size), ("crop_size", crop)):
        if value is not None and value != image_size:
            raise ModelFormatError(
                f"{file}: {key} {value} differs from the vision tower's image_size {image_size} (config.json)"
            )
    return ImagePreprocess(
        size=image_size,
        mean=_triple(file, data, "image_mean", OPENAI_CLIP_MEAN),
        std=_triple(file, data, "image_std", OPENAI_CLIP_STD),
        crop="floor",
        rgb_first=True,
    )


def _known_as(name: str, folder: Path) -> str | None:
    for text in (name.lower(), str(folder).lower()):
        for key, known in KNOWN.items():
            if key in text:
                return known
    return None


def _lengths(s: EmbedderSettings, positions: int) -> tuple[int, int]:
    out = []
    for label, value in (("query", s.query_max_length), ("passage", s.passage_max_length)):
        length = positions if value is None else value
        if not 2 < length <= positions:
            raise ModelFormatError(f"{label} max length {length} is outside 3..{positions}")
        out.append(length)
    return out[0], out[1]


def load_bge_vl(
    folder: Path, name: str, *, settings: EmbedderSettings, engine: EngineConfig
) -> tuple[EncoderWithHeads, ClipProcessor, Prompts]:
    """The modules, processor and prompts of a BGE-VL (CLIP) folder, no remote code run
    (``engine`` decides nothing here: the model is placed by the embedder)."""
    from transformers import CLIPModel

    del engine
    s = settings
    if s.long_input != "truncate":
        raise ModelFormatError(
            f"{name} reads at most {CLIP_MAX_LENGTH} tokens per text and pools its end token; "
            f"long_input={s.long_input!r} is not supported (use 'truncate')"
        )
    if s.pooling not in (None, "cls"):
        raise ModelFormatError(
            f"{name} pools as CLIP does (its towers' end-of-text and CLS states); "
            f"pooling={s.pooling!r} cannot change that"
        )
    if s.text_model is not None:
        raise InputError(
            "text_model is for BGE-Visualized checkpoints (.pth); a BGE-VL folder has its own text tower"
        )
    meta = read_folder(folder)
    # transformers' CLIPModel, whatever architectures / auto_map say (no remote code)
    model = load_pretrained(CLIPModel, folder, unused=("logit_scale",), attn_implementation="sdpa").eval()
    config: Any = model.config
    vision = config.vision_config
    positions = min(CLIP_MAX_LENGTH, int(config.text_config.max_position_embeddings))
    tokenizer = TextTokenizer.from_folder(folder, with_type_ids=False)
    prompts = resolve_prompts(s, meta, None, decoder=False)
    query_len, passage_len = _lengths(s, positions)
    info = ModelInfo(
        name=name,
        path=str(folder),
        task="embedder",
        model_type="clip",
        architecture=type(model).__name__,
        hidden_size=int(config.projection_dim),
        pooling="cls",  # unused: the towers pool themselves
        normalize=True if s.normalize is None else bool(s.normalize),
        query_instruction=prompts.query_instruction,
        query_max_length=query_len,
        passage_max_length=passage_len,
        heads=("dense",),
        known_as=_known_as(name, folder),
        query_format=prompts.query_format,
        passage_instruction=prompts.passage_instruction,
        tasks=prompts.task_names,
        default_task=prompts.task,
        modalities=IMAGE_MODALITIES,
    )
    long = long_input_policy(s, info, tokenizer, positions, decoder=False)
    spec = read_preprocess(folder, int(vision.image_size))
    patches = int(vision.image_size) // int(vision.patch_size)
    processor = ClipProcessor(tokenizer, info, long, preprocess=spec, image_tokens=1 + patches * patches)
    backbone = ClipBackbone(model, spec, processor.limits)
    return EncoderWithHeads(backbone, None, None), processor, prompts
