"""The model an index was built with, as its manifest records it: name, folder, identity and
the settings that rebuild exactly that embedder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bgekit.engine import EngineConfig
from bgekit.errors import InputError
from bgekit.index.storage import IndexFormatError
from bgekit.models import Embedder, EmbedderSettings
from bgekit.models.fingerprint import fingerprint_of, identity_diff, model_identity


def model_record(embedder: Embedder) -> dict[str, Any]:
    """The manifest's ``model`` entry."""
    identity = model_identity(embedder)
    settings = dataclasses.replace(embedder.settings, task=embedder.prompts.task or "")
    if settings.text_model is not None and Path(settings.text_model).is_dir():
        # a folder given relative to where the index was built: found from anywhere later
        settings = dataclasses.replace(settings, text_model=str(Path(settings.text_model).resolve()))
    examples = embedder.prompts.examples
    return {
        "name": embedder.info.name,
        # what loads it again: an adapter's folder (which names its base), else the model's
        "path": embedder.info.adapter or embedder.info.path,
        "fingerprint": fingerprint_of(identity),
        "identity": identity,
        "settings": settings.to_dict(),
        "examples": None
        if examples is None
        else [{"instruct": e.instruct, "query": e.query, "response": e.response} for e in examples],
    }


def embedder_from_record(root: Path, recorded: dict[str, Any], engine: EngineConfig | None) -> Embedder:
    """The embedder the index was built with: its folder (or hub id) under its settings."""
    if "settings" not in recorded:
        raise IndexFormatError(
            f"{root} was written before bgekit recorded the model's settings in the manifest; "
            "build it again (bgekit index build)"
        )
    try:
        settings = EmbedderSettings.from_dict(dict(recorded["settings"]))
        raw = recorded.get("examples")
        examples = None if raw is None else [{k: v for k, v in e.items() if v is not None} for e in raw]
    except (InputError, TypeError, AttributeError) as e:
        raise IndexFormatError(f"{root}: the recorded model settings are damaged ({e})") from None
    # a folder, or one checkpoint file (BGE-Visualized's .pth); else the hub id
    source = recorded["path"] if Path(recorded["path"]).exists() else recorded["name"]
    return Embedder.from_pretrained(source, settings=settings, engine=engine, examples=examples)


def check_same_model(root: Path, recorded: dict[str, Any], embedder: Embedder) -> None:
    """``embedder`` must make the vectors the index holds; otherwise an error naming what
    differs."""
    current = model_identity(embedder)
    if fingerprint_of(current) == recorded.get("fingerprint"):
        return
    if "identity" not in recorded:
        raise InputError(
            f"{root} was built before bgekit recorded model identities; build it again (bgekit index build)"
        )
    diff = identity_diff(recorded["identity"], current)
    raise InputError(
        f"{root} was built with {recorded['name']}; {embedder.info.name} differs in "
        + "; ".join(diff[:4])
        + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
    )
