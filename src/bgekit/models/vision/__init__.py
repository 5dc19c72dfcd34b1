"""Image models: BGE-Visualized (a BGE text encoder reading EVA02-CLIP patch tokens) and
BGE-VL (CLIP). Both load as an :class:`~bgekit.models.embedder.Embedder` whose processor
lays out images (:mod:`.processor`) and whose backbone computes the image slots."""

from __future__ import annotations

import json
from pathlib import Path

from bgekit.engine import EngineConfig
from bgekit.models.heads import EncoderWithHeads
from bgekit.models.prompts import Prompts
from bgekit.models.settings import EmbedderSettings
from bgekit.models.vision.processor import IMAGE_MODALITIES, ImageProcessor

__all__ = ["IMAGE_MODALITIES", "ImageProcessor", "is_visualized_name", "load_image_model"]

ImageModelParts = tuple[EncoderWithHeads, ImageProcessor, Prompts]


def is_visualized_name(name: str) -> bool:
    """A BGE-Visualized checkpoint: a ``.pth`` file, local or ``owner/repo/file.pth`` on the hub."""
    return name.endswith(".pth")


def _is_clip_folder(name: str) -> Path | None:
    path = Path(name).expanduser()
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # the text loader names a damaged config
    return path if isinstance(data, dict) and data.get("model_type") == "clip" else None


def load_image_model(
    name_or_path: str, *, revision: str | None, settings: EmbedderSettings, engine: EngineConfig
) -> ImageModelParts | None:
    """The modules, processor and prompts of an image model, or ``None`` for a text model.
    A hub id is looked at only when it names a ``.pth`` file or a known BGE-VL repository."""
    if is_visualized_name(name_or_path):
        from bgekit.models.vision.visualized import load_visualized

        return load_visualized(name_or_path, revision=revision, settings=settings, engine=engine)
    folder = _is_clip_folder(name_or_path)
    if folder is None and name_or_path.lower() in ("baai/bge-vl-base", "baai/bge-vl-large"):
        from bgekit.models.loading import resolve_model_dir

        folder = resolve_model_dir(name_or_path, revision)
    if folder is not None:
        from bgekit.models.vision.clip import load_bge_vl

        return load_bge_vl(folder, name_or_path, settings=settings, engine=engine)
    return None
