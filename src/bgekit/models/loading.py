"""Finding a model folder (local, or a hub id through huggingface_hub) and reading what it says."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgekit.errors import ModelFormatError, ModelNotFoundError

# Files bgekit reads; other hub files (ONNX exports, TF/Flax weights) are not fetched.
_HUB_PATTERNS = [
    "*.json",
    "*.txt",
    "*.model",
    "*.safetensors",
    "pytorch_model*.bin",
    "colbert_linear.pt",
    "sparse_linear.pt",
]
_HUB_IGNORE = ["onnx/*", "openvino/*", "imgs/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"]

_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "last_token",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weighted_mean",
}


@dataclass(frozen=True)
class FolderMeta:
    """What a model folder says about itself."""

    path: Path
    config: dict[str, Any]
    pooling: str | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    colbert_head: Path | None = None
    sparse_head: Path | None = None

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or ["?"]
        return str(archs[0])

    @property
    def max_positions(self) -> int:
        """The longest input the position embeddings allow."""
        positions = int(self.config.get("max_position_embeddings", 512))
        if self.config.get("model_type") in ("xlm-roberta", "roberta", "camembert"):
            positions -= 2  # RoBERTa-style position ids start after the padding index
        return positions

    @property
    def is_cross_encoder(self) -> bool:
        return self.architecture.endswith("ForSequenceClassification")


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_model_dir(name: str, revision: str | None = None) -> Path:
    """A local folder as is, otherwise a hub id downloaded (or found in the cache)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("model must be a hub id or a local folder path")
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"{name} is a file; pass the model's folder")
        return local.resolve()
    if _looks_like_path(name):
        raise ModelNotFoundError(f"no model folder at {name}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                repo_id=name,
                revision=revision,
                allow_patterns=_HUB_PATTERNS,
                ignore_patterns=_HUB_IGNORE,
            )
        )
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{name!r} is not a local folder, the Hugging Face hub cannot be reached and the model "
            "is not in the local cache. Download it on a connected machine "
            f"(huggingface-cli download {name} --local-dir DIR) and pass the folder path instead."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelNotFoundError(
            f"{name!r} is not a local folder and not a model on the hub "
            f"(revision {revision or 'main'}): {type(e).__name__}"
        ) from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(f"could not fetch {name!r} from the hub: {e}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"cannot read {path}: {e}") from None


def read_folder(path: Path) -> FolderMeta:
    """Read the transformers config, sentence-transformers metadata and M3 head files."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFormatError(f"{path} has no config.json: not a Hugging Face model folder")
    config = _read_json(config_file)
    pooling = normalize = max_seq = None
    prompts: dict[str, str] = {}
    modules_file = path / "modules.json"
    if modules_file.is_file():
        normalize = False
        for module in _read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            sub = path / str(module.get("path", ""))
            if kind == "Pooling" and (sub / "config.json").is_file():
                pool_cfg = _read_json(sub / "config.json")
                chosen = [v for k, v in _POOLING_KEYS.items() if pool_cfg.get(k)]
                if len(chosen) != 1:
                    raise ModelFormatError(f"{sub}/config.json: expected one pooling mode, got {chosen}")
                pooling = chosen[0]
            elif kind == "Normalize":
                normalize = True
            elif kind == "Transformer" and (sub / "sentence_bert_config.json").is_file():
                max_seq = _read_json(sub / "sentence_bert_config.json").get("max_seq_length")
    st_config = path / "config_sentence_transformers.json"
    if st_config.is_file():
        prompts = dict(_read_json(st_config).get("prompts") or {})
    colbert = path / "colbert_linear.pt"
    sparse = path / "sparse_linear.pt"
    return FolderMeta(
        path=path,
        config=config,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=int(max_seq) if max_seq else None,
        prompts=prompts,
        colbert_head=colbert if colbert.is_file() else None,
        sparse_head=sparse if sparse.is_file() else None,
    )


def weights_error(path: Path | str, err: BaseException) -> ModelFormatError:
    """A load failure as one clear error. A pickle that is not plain tensors is code bgekit
    will not run (torch's advice to retry with ``weights_only=False`` is not passed on:
    that would run it)."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "weights only load failed" in text.lower():
        return ModelFormatError(
            f"{path} holds Python code besides weights (an unsafe pickle), which bgekit will not run; "
            "convert the checkpoint to safetensors"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return ModelFormatError(f"cannot load model weights from {path}: {first}")


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` of plain tensors only (``weights_only=True``), errors as :func:`weights_error`."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad or unsafe file
        raise weights_error(path, e) from None
