"""Model merging (LM-Cocktail style): a weighted average of same-architecture checkpoints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from bgekit.errors import InputError, ModelFormatError
from bgekit.io import atomic_dir
from bgekit.models.loading import read_folder, resolve_model_dir, safe_torch_load
from bgekit.models.runtime import quiet_hf_bars

HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
# Config keys that do not change the architecture (training records, names, dtypes).
_IGNORED_CONFIG = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "id2label", "label2id"}


def _arch(config: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in config.items() if k not in _IGNORED_CONFIG}


def _average(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], names: Sequence[str]
) -> dict:
    first = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))[:3]
            raise ModelFormatError(f"{name} has other parameters than {names[0]} (e.g. {', '.join(diff)})")
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise ModelFormatError(
                    f"{key}: shape {tuple(value.shape)} in {name} but {tuple(first[key].shape)} in {names[0]}"
                )
    out = {}
    for key, value in first.items():
        if not value.is_floating_point():
            out[key] = value.clone()  # integer buffers (position ids) are copied, not averaged
            continue
        acc = torch.zeros_like(value, dtype=torch.float32)
        for state, w in zip(states, weights, strict=True):
            acc += w * state[key].float()
        out[key] = acc.to(value.dtype)
    return out


def merge_models(
    models: Sequence[str], weights: Sequence[float], output: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``sum_i weights[i] * params_i`` (weights must sum to 1) of models that share
    one architecture, with the first model's config, tokenizer and settings files, and the
    averaged M3 head files when every model has them."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from bgekit.train.modeling import copy_metadata

    if len(models) < 2:
        raise InputError("merging needs at least two models")
    if len(weights) != len(models):
        raise InputError(f"{len(models)} models but {len(weights)} weights")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise InputError(f"weights must be non-negative and sum to 1, got {list(weights)}")
    paths = [resolve_model_dir(m) for m in models]
    metas = [read_folder(p) for p in paths]
    for meta, name in zip(metas[1:], models[1:], strict=True):
        if _arch(meta.config) != _arch(metas[0].config):
            diff = sorted(
                k
                for k in _arch(meta.config).keys() | _arch(metas[0].config).keys()
                if meta.config.get(k) != metas[0].config.get(k)
            )
            raise ModelFormatError(
                f"{name} and {models[0]} have different architectures (config differs in {', '.join(diff[:5])})"
            )
    cls = AutoModelForSequenceClassification if metas[0].is_cross_encoder else AutoModel
    with quiet_hf_bars():
        loaded = [cls.from_pretrained(str(p), dtype=torch.float32) for p in paths]
    merged = _average([m.state_dict() for m in loaded], weights, models)
    heads = {}
    for head in HEAD_FILES:
        found = [p / head for p in paths if (p / head).is_file()]
        if len(found) == len(paths):
            states = [safe_torch_load(f) for f in found]
            heads[head] = _average(states, weights, models)
        elif found:
            raise ModelFormatError(f"only some models have {head}; merge models with the same heads")
    target = loaded[0]
    target.load_state_dict(merged)
    out = Path(output)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with quiet_hf_bars():
            target.save_pretrained(str(tmp))
        copy_metadata(paths[0], tmp, embedder=not metas[0].is_cross_encoder)
        for head, state in heads.items():
            torch.save(state, tmp / head)
        record = {"models": [str(p) for p in paths], "weights": list(weights)}
        (tmp / "merge_config.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
