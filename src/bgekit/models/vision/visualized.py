"""BGE-Visualized (FlagEmbedding ``research/visual_bge``): a BGE text encoder that also
reads images, as EVA02-CLIP patch tokens projected into its embedding space.

One ``.pth`` state dict holds it all: the text model's embeddings and encoder
(``bge_embeddings.*``, ``bge_encoder.*``; its pooler ``bge_pooler.*`` is unused), the
EVA02 tower (``model_visual.visual.*``, see :mod:`.eva`) and ``visual_proj`` (a Linear
from the tower's width to the text model's). The text model's config and tokenizer come
from its own folder or hub id (``EmbedderSettings.text_model``; inferred for the two
published checkpoints); its weights are not read.

An input with an image is laid out as ``[CLS] + N image slots + text tokens[1:]`` (the
text tokenised with its special tokens; an image alone takes the empty text), at raw
positions ``0 .. L-1`` for every model (the reference passes position ids, so XLM-R's
padding offset does not apply); the image slots hold the tower's tokens (the EVA CLS token
dropped) through ``visual_proj``, plus the position embedding, through the embedding
LayerNorm, with no token-type embedding. A text alone runs as the plain text model.
Then the BERT / XLM-R layers, CLS pooling, L2 normalisation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from bgekit.engine import EngineConfig, TokenBatch
from bgekit.engine.device import MatmulKind
from bgekit.errors import ModelFormatError, ModelNotFoundError
from bgekit.images import DEFAULT_LIMITS, ImageInput, ImageLimits, ImagePart, ImagePreprocess, load_pixels
from bgekit.models.backbones import PackedEncoder, config_unsupported
from bgekit.models.encoder_weights import TensorMismatch, packed_from_state
from bgekit.models.heads import EncoderWithHeads
from bgekit.models.kernels import Kernel, make_kernel, plain_linear
from bgekit.models.loading import FolderMeta, key_mismatch, read_folder, resolve_model_dir, safe_torch_load
from bgekit.models.long_input import LongInputPolicy
from bgekit.models.processor import long_input_policy
from bgekit.models.prompts import Prompts
from bgekit.models.registry import KnownModel
from bgekit.models.settings import EmbedderSettings, resolve_info
from bgekit.models.tokenizer import TextTokenizer
from bgekit.models.vision.eva import EvaVisionTower
from bgekit.models.vision.processor import IMAGE_MODALITIES, ImageProcessor
from bgekit.types import Kind, ModelInfo, TokenSeq

__all__ = ["VisualizedBackbone", "VisualizedProcessor", "load_visualized", "text_model_of"]

logger = logging.getLogger(__name__)

KNOWN_AS = "BAAI/bge-visualized"
# The published checkpoints (BAAI/bge-visualized) and the text models they were trained on.
TEXT_MODELS = {"visualized_base_en_v1.5.pth": "BAAI/bge-base-en-v1.5", "visualized_m3.pth": "BAAI/bge-m3"}
# What is fetched of a hub text model: its config and tokenizer (the weights are in the .pth).
TEXT_MODEL_FILES = ("*.json", "*.txt", "*.model")
TOWER = "model_visual.visual."
# Parts of the checkpoint that inference never runs: the text pooler, CLIP's logit scale.
UNUSED = ("bge_pooler.", "model_visual.logit_scale")
_TEXT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class VisualizedBackbone(nn.Module):
    """The text encoder with image slots filled from the EVA tower (see the module)."""

    packed = True

    def __init__(
        self,
        text: PackedEncoder,
        tower: EvaVisionTower,
        visual_proj: nn.Linear,
        *,
        preprocess: ImagePreprocess,
        limits: ImageLimits = DEFAULT_LIMITS,
    ):
        super().__init__()
        self.text, self.tower, self.visual_proj = text, tower, visual_proj
        self.preprocess, self.limits = preprocess, limits
        self.proj_kernel: Kernel | None = None  # set by set_matmul (CPU)

    def set_matmul(self, kind: MatmulKind) -> int:
        """Switch the text encoder's, the tower's and the projection's kernels."""
        self.proj_kernel = make_kernel(self.visual_proj, kind)
        return self.text.set_matmul(kind) + self.tower.set_matmul(kind) + 1

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        return self.forward(batch)

    def image_embeddings(self, images: Sequence[ImageInput], device: torch.device) -> torch.Tensor:
        """``(images, tokens, hidden)``: the tower's patch tokens in the text model's space,
        before position embeddings (images decoded and preprocessed here, per batch)."""
        pixels = torch.from_numpy(load_pixels(images, self.preprocess, self.limits)).to(device)
        tokens = self.tower.tokens(pixels)[:, 1:]  # the EVA CLS token is not used
        if self.proj_kernel is None:
            return plain_linear(tokens, self.visual_proj)
        return self.proj_kernel(tokens)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        text = self.text
        parts = [(i, m) for i, m in enumerate(batch.media) if isinstance(m, ImagePart)]
        if not parts:
            return text(batch)
        n = self.tower.config.tokens
        wrong = next((m for _, m in parts if m.count != n), None)
        if wrong is not None:
            raise ModelFormatError(
                f"{wrong.image.name}: laid out for {wrong.count} image tokens, the tower gives {n}"
            )
        # raw positions for inputs with an image (the reference passes position ids), the
        # text model's own (XLM-R: after the padding index) for texts
        with_image = torch.zeros(len(batch), dtype=torch.bool)
        with_image[[i for i, _ in parts]] = True
        offset = torch.where(with_image, 0, text.position_offset)
        positions = batch.positions + torch.repeat_interleave(offset, batch.lengths).to(batch.device)
        x = text.embed(batch, positions)
        starts = batch.offsets[[i for i, _ in parts]] + torch.tensor([m.start for _, m in parts])
        rows = (starts[:, None] + torch.arange(n)).reshape(-1).to(batch.device)
        images = self.image_embeddings([m.image for _, m in parts], batch.device)
        slots = images.reshape(-1, images.shape[-1]).to(x.dtype) + text.position(positions[rows])
        x[rows] = text.emb_norm(slots).to(x.dtype)
        return text.encode(x, batch)


class VisualizedProcessor(ImageProcessor):
    """Lays out images and composed inputs as BGE-Visualized reads them (see the module);
    texts as the text model does. ``text_model``: the folder its config and tokenizer
    come from (part of the model's identity)."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        info: ModelInfo,
        long: LongInputPolicy,
        *,
        preprocess: ImagePreprocess,
        image_tokens: int,
        max_positions: int,
        text_model: Path,
        limits: ImageLimits = DEFAULT_LIMITS,
    ):
        super().__init__(
            tokenizer, info, long, preprocess=preprocess, image_tokens=image_tokens, limits=limits
        )
        frame = tokenizer.frame
        if frame is None or len(frame[0]) != 1:
            raise ModelFormatError(
                f"{info.name}: BGE-Visualized puts the image after a single CLS token; "
                f"this tokenizer adds {'no separable' if frame is None else len(frame[0])} tokens before a text"
            )
        # the image and the whole text (its special tokens included) fit the position table
        self.text_room = max_positions - image_tokens
        if self.text_room < len(frame[0]) + len(frame[1]) + 1:
            raise ModelFormatError(
                f"{info.name}: {image_tokens} image tokens leave no room for text in {max_positions} positions"
            )
        self.max_positions = max_positions
        self.text_model = text_model

    def image_seq(self, image: ImageInput, text: str | None, kind: Kind) -> TokenSeq:
        """``[CLS] + image slots + text tokens[1:]``; the text (its special tokens
        included) cut to the side's limit and to what the position table leaves."""
        limit = self.input_limit(kind)
        room = self.text_room if limit is None else min(limit, self.text_room)
        seq = self.tokenizer.encode([text or ""], room)[0]
        ids = [seq.ids[0], *[self.tokenizer.pad_id] * self.image_tokens, *seq.ids[1:]]
        types = [0] * len(ids) if self.tokenizer.with_type_ids else None
        return TokenSeq(ids, types, seq.truncated, ImagePart(image, 1, self.image_tokens))


def text_model_of(checkpoint: str) -> str | None:
    """The text model a published checkpoint was trained on, from its file name."""
    return TEXT_MODELS.get(Path(checkpoint).name.lower())


def resolve_checkpoint(name: str, revision: str | None) -> Path:
    """A local ``.pth`` file, or ``owner/repo/path/file.pth`` downloaded from the hub."""
    local = Path(name).expanduser()
    if local.is_file():
        return local.resolve()
    parts = name.split("/")
    if local.exists() or name.startswith((".", "/", "~")) or len(parts) < 3 or not all(parts):
        raise ModelNotFoundError(
            f"no checkpoint file at {name} (a local .pth, or owner/repo/file.pth on the Hugging Face hub)"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{name!r} is not a local file, the Hugging Face hub cannot be reached and the file is "
            f"not in the local cache; download it on a connected machine "
            f"(hf download {repo} {filename}) and pass its path"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise ModelNotFoundError(
            f"{name!r}: no {filename} in the hub repository {repo} (revision {revision or 'main'}): "
            f"{type(e).__name__}"
        ) from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(f"could not fetch {name!r} from the hub: {e}") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    state = safe_torch_load(path)
    if not isinstance(state, Mapping):
        raise ModelFormatError(f"{path} is not a state dict (it holds a {type(state).__name__})")
    bad = next(
        (k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None
    )
    if bad is not None:
        raise ModelFormatError(f"{path}: {bad!r} is not a named tensor; not a BGE-Visualized state dict")
    return dict(state)


def _text_encoder(
    state: Mapping[str, torch.Tensor], config: Mapping[str, object], where: Path
) -> tuple[PackedEncoder, set[str]]:
    """The text encoder from the ``bge_embeddings.*`` / ``bge_encoder.*`` tensors, checked
    against the text model's config; and the keys it took."""
    ours = {
        k[len("bge_") :]: v for k, v in state.items() if k.startswith(("bge_embeddings.", "bge_encoder."))
    }
    what = (
        f"the text model's config.json ({config.get('model_type')}, {config.get('num_hidden_layers')} layers)"
    )
    try:
        encoder, used = packed_from_state(config, ours)
    except TensorMismatch as e:
        key = f"bge_{e.name}"
        if e.found is None:
            raise key_mismatch(where, what, missing=[key]) from None
        raise key_mismatch(
            where, what, wrong_shape=[f"{key} ({e.found} in the file, {e.expected} expected)"]
        ) from None
    unexpected = [f"bge_{k}" for k in ours if k not in used and k not in _TEXT_BUFFERS]
    if unexpected:  # e.g. more layers than the config's
        raise key_mismatch(where, what, unexpected=unexpected)
    return encoder, {f"bge_{k}" for k in ours}


def _visual_proj(state: Mapping[str, torch.Tensor], width: int, hidden: int, where: Path) -> nn.Linear:
    what = f"visual_proj (Linear {width} -> {hidden})"
    tensors = []
    for name, shape in (("visual_proj.weight", (hidden, width)), ("visual_proj.bias", (hidden,))):
        t = state.get(name)
        if t is None:
            raise key_mismatch(where, what, missing=[name])
        if tuple(t.shape) != shape:
            raise key_mismatch(
                where, what, wrong_shape=[f"{name} ({tuple(t.shape)} in the file, {shape} expected)"]
            )
        tensors.append(nn.Parameter(t.detach().float().contiguous(), requires_grad=False))
    proj = nn.Linear(width, hidden, device="meta")
    proj.weight, proj.bias = tensors
    return proj


def load_visualized(
    name_or_path: str, *, revision: str | None, settings: EmbedderSettings, engine: EngineConfig
) -> tuple[EncoderWithHeads, VisualizedProcessor, Prompts]:
    """The modules, processor and prompts of a BGE-Visualized checkpoint (see the module).
    ``revision`` is the checkpoint's hub revision; the text model is fetched as named."""
    del engine  # placement and precision are the embedder's
    if settings.long_input != "truncate":
        raise ModelFormatError(
            f"BGE-Visualized reads inputs up to its position table; long_input={settings.long_input!r} "
            "is for text models (use 'truncate')"
        )
    text_name = settings.text_model or text_model_of(name_or_path)
    if text_name is None:
        raise ModelFormatError(
            f"{name_or_path}: cannot tell which text model this BGE-Visualized checkpoint was trained on; "
            "pass EmbedderSettings(text_model=...) (a hub id such as BAAI/bge-base-en-v1.5, or a folder)"
        )
    path = resolve_checkpoint(name_or_path, revision)
    text_dir = resolve_model_dir(text_name, None, allow_patterns=TEXT_MODEL_FILES)
    meta = read_folder(text_dir)
    config = meta.config
    reason = config_unsupported(config)
    if reason is not None:
        raise ModelFormatError(
            f"{text_name}: BGE-Visualized runs BERT / XLM-RoBERTa text models, not {reason}"
        )
    state = _read_state(path)
    encoder, used = _text_encoder(state, config, path)
    tower, tower_keys = EvaVisionTower.from_state(state, path, TOWER)
    hidden = int(config["hidden_size"])
    proj = _visual_proj(state, tower.config.width, hidden, path)
    used |= tower_keys | {"visual_proj.weight", "visual_proj.bias"}
    unexpected = [k for k in state if k not in used and not k.startswith(UNUSED)]
    if unexpected:
        raise key_mismatch(path, "a BGE-Visualized checkpoint", unexpected=unexpected)

    table = int(config["max_position_embeddings"])
    folder = FolderMeta(path=path, config=config)  # no pooling / prompts of the text folder: the reference's
    known = KnownModel(
        "embedder", query_max_length=min(512, meta.max_positions), passage_max_length=meta.max_positions
    )
    info, prompts = resolve_info(
        name_or_path, folder, (KNOWN_AS, known), settings, heads=("dense",), multivector_dim=None
    )
    tokenizer = TextTokenizer.from_folder(text_dir, with_type_ids=int(config.get("type_vocab_size", 0)) > 1)
    long = long_input_policy(settings, info, tokenizer, meta.max_positions, False)
    cfg = tower.config
    info = dataclasses.replace(
        info,
        architecture=f"Visualized_BGE ({meta.architecture} + EVA02 vision, width {cfg.width}, patch {cfg.patch})",
        long_input=long.policy,
        modalities=IMAGE_MODALITIES,
    )
    preprocess = ImagePreprocess(size=cfg.image_size, crop="round", rgb_first=False)
    processor = VisualizedProcessor(
        tokenizer,
        info,
        long,
        preprocess=preprocess,
        image_tokens=cfg.tokens,
        max_positions=table,
        text_model=text_dir,
    )
    backbone = VisualizedBackbone(encoder, tower, proj, preprocess=preprocess)
    logger.debug("%s: BGE-Visualized on %s, %d image tokens", name_or_path, text_name, cfg.tokens)
    return EncoderWithHeads(backbone, None, None), processor, prompts
