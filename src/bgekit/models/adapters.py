"""LoRA adapters at inference: a folder holding peft's ``adapter_config.json`` and
``adapter_model.safetensors`` (what ``bgekit train ... --lora`` and peft's
``save_pretrained`` write) names its base model; the base loads as usual and each adapted
weight is merged in place, ``W += scale · B @ A`` with ``scale = alpha / r`` (``alpha /
√r`` under rsLoRA), before any CPU kernel is applied. peft is not needed to run one.

Added tokens travel as ``embeddings.safetensors`` (the resized input embeddings, and the
output embeddings of a causal LM whose head is not tied) beside the adapter's own
tokenizer files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgekit.errors import ModelFormatError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EMBEDDINGS = "embeddings.safetensors"
BASE_RECORD = "bgekit_adapter.json"  # what bgekit's training records: the base's resolved folder, the kind
ADAPTER_RECORD = BASE_RECORD
_PREFIX = "base_model.model."
# peft's config keys that change the maths of a merge; bgekit merges plain LoRA only
_UNSUPPORTED = ("use_dora", "fan_in_fan_out", "layer_replication")


@dataclass(frozen=True)
class Adapter:
    """An adapter folder: its base (a hub id or folder, as recorded), rank, alpha and
    whether rsLoRA scales it."""

    folder: Path
    base: str
    r: int
    alpha: float
    rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]

    def scale(self, module: str) -> float:
        """``alpha / r`` (or ``/ √r``) for one adapted module, honouring per-module patterns
        (peft matches a pattern key against the end of the module's name)."""
        r = next((v for k, v in self.rank_pattern.items() if _matches(module, k)), self.r)
        alpha = next((v for k, v in self.alpha_pattern.items() if _matches(module, k)), self.alpha)
        return float(alpha) / (math.sqrt(r) if self.rslora else r)

    @property
    def has_embeddings(self) -> bool:
        return (self.folder / EMBEDDINGS).is_file()


def _matches(module: str, pattern: str) -> bool:
    return module == pattern or module.endswith("." + pattern)


def is_adapter_folder(name: str | Path) -> bool:
    """A local folder holding a LoRA adapter (peft's layout)."""
    return (Path(name).expanduser() / ADAPTER_CONFIG).is_file()


def read_adapter(folder: str | Path) -> Adapter:
    """The adapter's settings, checked: a LoRA (not another peft method), with its weights
    and a base to load."""
    root = Path(folder).expanduser()
    path = root / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: not a readable adapter config ({e})") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: an adapter config must be a JSON object")
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise ModelFormatError(f"{path}: a {kind} adapter; bgekit merges LoRA adapters only")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise ModelFormatError(f"{path}: {key} is set; bgekit merges plain LoRA adapters only")
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ModelFormatError(f"{path}: no base_model_name_or_path; the adapter does not say what it adapts")
    if not (root / ADAPTER_WEIGHTS).is_file():
        raise ModelFormatError(f"{root}: no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}")
    try:
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"{path}: r and lora_alpha must be numbers") from None
    if r < 1:
        raise ModelFormatError(f"{path}: r must be at least 1, got {r}")
    return Adapter(
        folder=root,
        base=base,
        r=r,
        alpha=alpha,
        rslora=bool(config.get("use_rslora")),
        rank_pattern={str(k): int(v) for k, v in (config.get("rank_pattern") or {}).items()},
        alpha_pattern={str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()},
    )


def base_folder(adapter: Adapter, revision: str | None = None) -> Path:
    """The base model's folder: the one bgekit's training recorded (``bgekit_adapter.json``)
    while it is still there, else ``base_model_name_or_path`` as a folder or hub id."""
    from bgekit.models.loading import resolve_model_dir

    record = adapter.folder / BASE_RECORD
    if record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8")).get("base_path")
        except (OSError, ValueError, UnicodeDecodeError, AttributeError) as e:
            raise ModelFormatError(f"{record}: not a readable base record ({e})") from None
        if isinstance(recorded, str) and (Path(recorded) / "config.json").is_file():
            return Path(recorded).resolve()
    return resolve_model_dir(adapter.base, revision)


def recorded_kind(adapter: Adapter) -> str | None:
    """What bgekit's training recorded the adapter is for (``"embedder"``, a reranker
    kind), or ``None`` for an adapter trained elsewhere."""
    record = adapter.folder / BASE_RECORD
    if not record.is_file():
        return None
    try:
        kind = json.loads(record.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ModelFormatError(f"{record}: not a readable base record ({e})") from None
    return str(kind) if kind is not None else None


def tokenizer_folder(adapter: Adapter, base: Path) -> Path:
    """Where the adapted model's tokenizer is: the adapter's folder when it holds one (added
    tokens travel with the adapter), else the base's."""
    from bgekit.models.tokenizer import VOCABULARY_FILES

    return adapter.folder if any((adapter.folder / n).is_file() for n in VOCABULARY_FILES) else base


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ModelFormatError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def load_embeddings(adapter: Adapter, model: nn.Module) -> None:
    """Put the adapter's resized embeddings (added tokens) into ``model``."""
    if not adapter.has_embeddings:
        return
    path = adapter.folder / EMBEDDINGS
    state = _load_safetensors(path)
    inputs = state.get("input_embeddings")
    if inputs is None:
        raise ModelFormatError(f"{path}: no input_embeddings tensor")
    get_in: Any = getattr(model, "get_input_embeddings", None)
    resize: Any = getattr(model, "resize_token_embeddings", None)
    if get_in is None or resize is None:
        raise ModelFormatError(f"{path}: the base model has no token embeddings to resize")
    resize(int(inputs.shape[0]))
    _copy_into(get_in().weight, inputs, path, "input_embeddings")
    outputs = state.get("output_embeddings")
    get_out: Any = getattr(model, "get_output_embeddings", None)
    head = get_out() if get_out is not None else None
    if outputs is not None and head is not None and head.weight is not get_in().weight:
        _copy_into(head.weight, outputs, path, "output_embeddings")


def _copy_into(param: torch.Tensor, value: torch.Tensor, path: Path, key: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ModelFormatError(f"{path}: {key} is {tuple(value.shape)}, the model's is {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def merge_adapter(adapter: Adapter, model: nn.Module) -> int:
    """Merge the adapter's LoRA pairs (and any whole modules it saved) into ``model``'s
    weights in place; the number of weights changed. A key naming no module of the model
    or a wrong shape is one error naming the file and the key."""
    load_embeddings(adapter, model)
    path = adapter.folder / ADAPTER_WEIGHTS
    state = _load_safetensors(path)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied head under its own name too
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix(_PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0]
                pairs.setdefault(module, {})[part] = value
                break
        else:
            whole[name] = value
    changed = 0
    for module, ab in sorted(pairs.items()):
        target = modules.get(module)
        if target is None or not isinstance(getattr(target, "weight", None), torch.Tensor):
            raise ModelFormatError(f"{path}: {module} names no weight of the base model ({adapter.base})")
        if set(ab) != {"lora_A", "lora_B"}:
            raise ModelFormatError(
                f"{path}: {module} has {', '.join(sorted(ab))} but not both lora_A and lora_B"
            )
        a, b = ab["lora_A"].double(), ab["lora_B"].double()
        weight: torch.Tensor = target.weight
        if (
            a.ndim != 2
            or b.ndim != 2
            or a.shape[0] != b.shape[1]
            or (b.shape[0], a.shape[1]) != tuple(weight.shape)
        ):
            raise ModelFormatError(
                f"{path}: {module} lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit its "
                f"weight {tuple(weight.shape)}"
            )
        with torch.no_grad():
            merged = weight.double() + adapter.scale(module) * (b @ a)
            weight.copy_(merged.to(weight.dtype))
        changed += 1
    for name, value in sorted(whole.items()):
        # peft saves modules_to_save whole, under the base's own names
        param = params.get(name)
        if param is None:
            param = params.get(name.replace(".modules_to_save.default.", "."))
        if param is None:
            raise ModelFormatError(f"{path}: {name} names no weight of the base model ({adapter.base})")
        _copy_into(param, value, path, name)
        changed += 1
    return changed


def base_location(adapter: Adapter) -> str:
    """Where the adapter's base loads from: the resolved folder bgekit noted when it saved
    the adapter (``bgekit_adapter.json``'s ``base_path``), while that folder is there; else
    the base peft records (a hub id or a path)."""
    record = adapter.folder / ADAPTER_RECORD
    try:
        noted = json.loads(record.read_text(encoding="utf-8")).get("base_path")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return adapter.base  # no note (a peft adapter), or an unreadable one: peft's own record
    if isinstance(noted, str) and noted and Path(noted).is_dir():
        return noted
    return adapter.base
