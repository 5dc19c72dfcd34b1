"""LoRA for fine-tuning decoder models (peft, the ``train`` extra): the settings, wrapping
a loaded model, and saving what inference reads back (:mod:`bgekit.models.adapters`):
peft's adapter files, the base's name, the tokenizer (with any added tokens) and the
resized embeddings, and on request a merged model.

Defaults are the reference's (FlagEmbedding's decoder-only fine-tuning): rank 64, alpha
16, dropout 0.1, on the attention and MLP projections."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bgekit.errors import InputError
from bgekit.models.adapters import BASE_RECORD, EMBEDDINGS

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Task = Literal["FEATURE_EXTRACTION", "CAUSAL_LM"]


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """``r`` / ``alpha`` / ``dropout`` / ``target_modules`` as peft's ``LoraConfig``;
    ``modules_to_save``: modules trained whole (e.g. a layer-wise reranker's heads);
    ``merge``: also save the merged model under ``merged/``."""

    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    modules_to_save: tuple[str, ...] = ()
    merge: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise InputError(f"LoRA rank must be at least 1, got {self.r}")
        if self.alpha <= 0:
            raise InputError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise InputError("LoRA needs at least one target module")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise InputError("LoRA training needs peft: pip install 'bgekit[train]'") from None
    return peft


def add_lora(
    model: nn.Module, settings: LoraSettings, task: Task, *, alpha_pattern: dict[str, float] | None = None
) -> nn.Module:
    """``model`` wrapped with trainable LoRA pairs (the base frozen). A target module the
    model lacks is one error naming the modules it has. ``alpha_pattern``: peft's per-module
    alphas (a module whose output the model scales, trained as if the scale were outside)."""
    peft = _peft()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in settings.target_modules if t not in names]
    if missing:
        raise InputError(
            f"LoRA target modules {missing} are not linear layers of this model; it has {', '.join(sorted(names))}"
        )
    config = peft.LoraConfig(
        task_type=task,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        modules_to_save=list(settings.modules_to_save) or None,
        alpha_pattern=dict(alpha_pattern or {}),
        inference_mode=False,
    )
    return peft.get_peft_model(model, config)


def save_adapter(
    wrapped: nn.Module, folder: Path, *, base: str, base_path: Path, kind: str, resized: bool
) -> None:
    """Write the adapter to ``folder``: peft's files (recording ``base`` as the base's name
    or path), the base's resolved folder and the model kind (``bgekit_adapter.json``), and,
    when the vocabulary grew, the resized embeddings. The tokenizer is the caller's."""
    folder.mkdir(parents=True, exist_ok=True)
    # added-token embeddings travel once, in embeddings.safetensors (peft would also save
    # them whole, as the model holds them: a layer-wise reranker's scaled by scale_emb)
    wrapped.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)  # type: ignore[operator]
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    record = {"base": base, "base_path": str(base_path), "kind": kind}
    (folder / BASE_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    if resized:
        from safetensors.torch import save_file

        inner: Any = wrapped.get_base_model()  # type: ignore[operator]
        tensors = {"input_embeddings": inner.get_input_embeddings().weight.detach().float().contiguous()}
        out = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        if out is not None and out.weight is not inner.get_input_embeddings().weight:
            tensors["output_embeddings"] = out.weight.detach().float().contiguous()
        save_file(tensors, str(folder / EMBEDDINGS))


def merged_copy(wrapped: nn.Module) -> nn.Module:
    """The base with the adapter merged in (the training model left as it is)."""
    import copy

    clone: Any = copy.deepcopy(wrapped)
    return clone.merge_and_unload()


def save_merged(wrapped: nn.Module, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """A plain transformers folder (config and weights) of the merged model."""
    merged = merged_copy(wrapped).to(dtype)
    merged.save_pretrained(str(folder), safe_serialization=True)  # type: ignore[operator]
