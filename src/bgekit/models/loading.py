"""Finding a model folder (local, or a hub id through huggingface_hub) and reading what it says."""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Sequence
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


def resolve_model_dir(
    name: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None
) -> Path:
    """A local folder as is, otherwise a hub id downloaded (or found in the cache);
    ``allow_patterns``: the hub files to fetch (default: every file bgekit reads)."""
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
                allow_patterns=list(allow_patterns) if allow_patterns is not None else _HUB_PATTERNS,
                ignore_patterns=_HUB_IGNORE,
            )
        )
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{name!r} is not a local folder, the Hugging Face hub cannot be reached and the model "
            "is not in the local cache. Download it on a connected machine "
            f"(bgekit download {name}, or hf download {name} --local-dir DIR) and copy the hub "
            "cache or pass the folder path instead."
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"cannot read {path}: {e}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold one object (a settings file)."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} must hold a JSON object of settings, not {_short(data)}")
    return data


# config.json fields bgekit reads as numbers: (name, lowest allowed value)
_CONFIG_INTS = (
    ("hidden_size", 1),
    ("num_hidden_layers", 1),
    ("num_attention_heads", 1),
    ("intermediate_size", 1),
    ("vocab_size", 1),
    ("max_position_embeddings", 1),
    ("type_vocab_size", 0),
    ("pad_token_id", 0),
    ("num_labels", 1),
)


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """The fields bgekit reads have the types it reads them as (a damaged config.json is
    one error naming the file and field, not a ValueError deep in the load)."""
    for name, lowest in _CONFIG_INTS:
        if name not in config or (config[name] is None and name == "pad_token_id"):
            continue
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ModelFormatError(
                f"{path}: {name} must be a whole number of at least {lowest}, not {_short(value)}"
            )
    eps = config.get("layer_norm_eps")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))):
        raise ModelFormatError(f"{path}: layer_norm_eps must be a number, not {_short(eps)}")
    for name in ("model_type", "hidden_act"):
        if name in config and not isinstance(config[name], str):
            raise ModelFormatError(f"{path}: {name} must be a string, not {_short(config[name])}")
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ModelFormatError(f"{path}: architectures must be a list of class names, not {_short(archs)}")
    dim, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if dim is not None and heads is not None and dim % heads:
        raise ModelFormatError(f"{path}: hidden_size {dim} is not a multiple of num_attention_heads {heads}")


def _read_modules(path: Path) -> list[dict[str, Any]]:
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type", ""), str) and isinstance(m.get("path", ""), str)
        for m in modules
    ):
        raise ModelFormatError(
            f"{path} must be a list of module objects with a type and a path "
            f"(sentence-transformers' modules.json), not {_short(modules)}"
        )
    return modules


def read_folder(path: Path) -> FolderMeta:
    """Read the transformers config, sentence-transformers metadata and M3 head files."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFormatError(f"{path} has no config.json: not a Hugging Face model folder")
    config = _read_object(config_file)
    _check_config(config_file, config)
    pooling = normalize = max_seq = None
    prompts: dict[str, str] = {}
    modules_file = path / "modules.json"
    if modules_file.is_file():
        normalize = False
        for module in _read_modules(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            sub = path / str(module.get("path", ""))
            if kind == "Pooling" and (sub / "config.json").is_file():
                pool_cfg = _read_object(sub / "config.json")
                chosen = [v for k, v in _POOLING_KEYS.items() if pool_cfg.get(k)]
                if len(chosen) != 1:
                    raise ModelFormatError(f"{sub}/config.json: expected one pooling mode, got {chosen}")
                pooling = chosen[0]
            elif kind == "Normalize":
                normalize = True
            elif kind == "Transformer" and (sub / "sentence_bert_config.json").is_file():
                st_file = sub / "sentence_bert_config.json"
                max_seq = _read_object(st_file).get("max_seq_length")
                if max_seq is not None and (isinstance(max_seq, bool) or not isinstance(max_seq, int)):
                    raise ModelFormatError(
                        f"{st_file}: max_seq_length must be a whole number, not {_short(max_seq)}"
                    )
    st_config = path / "config_sentence_transformers.json"
    if st_config.is_file():
        raw = _read_object(st_config).get("prompts") or {}
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise ModelFormatError(f"{st_config}: prompts must map names to strings, not {_short(raw)}")
        prompts = {str(k): v for k, v in raw.items()}
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


# What a folder's weights are in, in the order transformers prefers them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def weights_file(path: Path) -> Path:
    """The file (or shard index) holding the model weights in folder ``path``, for messages;
    the folder itself when none of :data:`WEIGHT_FILES` is there."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    return path


def _natural(key: str) -> list[Any]:
    """``layer.6`` before ``layer.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def key_mismatch(
    where: Path | str,
    what: str,
    *,
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    wrong_shape: Sequence[str] = (),
) -> ModelFormatError:
    """Weights that do not cover the model (``missing``), hold more (``unexpected``) or
    hold a tensor of another shape, as one line naming ``where`` and a few keys of each."""

    def few(keys: Sequence[str]) -> str:
        shown = ", ".join(sorted(keys, key=_natural)[:3])
        return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = [
        f"{label} {few(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if keys
    ]
    return ModelFormatError(f"{where} does not fit {what}: {'; '.join(parts)}")


# What torch's weights-only unpickler says when a pickle asks to run something (a global,
# a call): code, not a damaged file.
_RUNS_CODE = re.compile(r"GLOBAL|safe_globals|unrecognized function|can only (build|create)", re.IGNORECASE)


def weights_error(path: Path | str, err: BaseException) -> ModelFormatError:
    """A load failure as one clear error. A pickle that is not plain tensors is code bgekit
    will not run (torch's advice to retry with ``weights_only=False`` is not passed on:
    that would run it); one torch cannot parse at all is not a torch file."""
    text = str(err)
    if _RUNS_CODE.search(text) and (
        isinstance(err, pickle.UnpicklingError) or "weights only load failed" in text.lower()
    ):
        return ModelFormatError(
            f"{path} holds Python code besides weights (an unsafe pickle), which bgekit will not run; "
            "convert the checkpoint to safetensors"
        )
    if isinstance(err, (pickle.UnpicklingError, EOFError)) or "weights only load failed" in text.lower():
        return ModelFormatError(
            f"{path} is not a PyTorch weights file (torch cannot read it: damaged, cut short or another format)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if len(first) > 160 and ". " in first:  # torch's zip errors go on with advice
        first = first.split(". ", 1)[0]
    return ModelFormatError(f"cannot load model weights from {path}: {first}")


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` of plain tensors only (``weights_only=True``), errors as :func:`weights_error`."""
    import torch

    try:
        with warnings.catch_warnings():  # a damaged file's odd protocol byte is the error below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad or unsafe file
        raise weights_error(path, e) from None
