"""Loading the LLM rerankers' checkpoints onto transformers' own decoder layers.

- MiniCPM (bge-reranker-v2-minicpm-layerwise; transformers has no MiniCPM): a Llama whose
  embedding and residual scalings (``scale_emb``, ``scale_depth / sqrt(layers)``) are folded
  into the embedding and output-projection weights, which is exact. :class:`MiniCPMLayout`
  keeps the checkpoint's module names over it (what LoRA adapters name); an adapter merges
  into the file's weights before the scalings are folded in.
- CostWise-Gemma (bge-reranker-v2.5-gemma2-lightweight): a Gemma-2.
- Yes/no rerankers: any ``*ForCausalLM`` as transformers loads it.

The layer-wise checkpoints carry one score head per layer (``lm_head.N.linear_head``).
No downloaded remote code runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgekit.errors import ModelFormatError
from bgekit.models.loading import safe_torch_load
from bgekit.models.runtime import quiet_hf_bars


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        for f in files:
            state.update(load_file(str(f)))
        return state
    for f in sorted(path.glob("pytorch_model*.bin")):
        state.update(safe_torch_load(f))
    if not state:
        raise ModelFormatError(f"{path} holds no weights (*.safetensors or pytorch_model*.bin)")
    return state


def _heads(state: dict[str, torch.Tensor]) -> torch.Tensor:
    keys = sorted(
        (k for k in state if k.startswith("lm_head.") and k.endswith(".linear_head.weight")),
        key=lambda k: int(k.split(".")[1]),
    )
    if not keys:
        raise ModelFormatError("no per-layer heads (lm_head.N.linear_head.weight) in the checkpoint")
    return torch.cat([state[k] for k in keys], dim=0).float()


def _base_from_state(base: nn.Module, state: dict[str, torch.Tensor]) -> None:
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = base.load_state_dict(weights, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise ModelFormatError(
            f"checkpoint does not fit the backbone: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


class _Head(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.linear_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
        with torch.no_grad():
            self.linear_head.weight.copy_(weight)


class MiniCPMLayout(nn.Module):
    """A layer-wise MiniCPM checkpoint's module names over the Llama backbone bgekit runs it
    on: ``model.*`` (the backbone) and ``lm_head.N.linear_head`` (the per-layer heads), as
    the reference's ``LayerWiseMiniCPMForCausalLM`` names them, so that a LoRA adapter made
    for it (or by bgekit) names these modules; its ``state_dict`` is the checkpoint's."""

    def __init__(self, base: nn.Module, heads: torch.Tensor):
        super().__init__()
        self.model = base
        self.lm_head = nn.ModuleList(_Head(heads[i : i + 1]) for i in range(heads.shape[0]))
        self.config = base.config

    def heads(self) -> torch.Tensor:
        heads: list[Any] = list(self.lm_head)
        return torch.cat([h.linear_head.weight for h in heads], dim=0).detach()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()  # type: ignore[operator]

    def get_output_embeddings(self) -> None:
        return None  # the heads score; there is no vocabulary head

    def resize_token_embeddings(self, size: int) -> Any:
        return self.model.resize_token_embeddings(size)  # type: ignore[operator]


def minicpm_residual_scale(config: dict[str, Any]) -> float:
    """What MiniCPM multiplies each attention and MLP output by before the residual add."""
    return float(config.get("scale_depth", 1.0)) / math.sqrt(int(config["num_hidden_layers"]))


def minicpm_layout(
    path: Path, config: dict[str, Any], *, dtype: torch.dtype = torch.float32
) -> MiniCPMLayout:
    """The checkpoint on a Llama backbone in ``dtype``, its scalings not folded in yet (the
    weights as the file holds them)."""
    from transformers import LlamaConfig, LlamaModel

    layers = int(config["num_hidden_layers"])
    llama = LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_parameters={
            **(config.get("rope_scaling") or {}),
            "rope_type": (config.get("rope_scaling") or {}).get("rope_type", "default"),
            "rope_theta": config.get("rope_theta", 10000.0),
        },
        hidden_act=config.get("hidden_act", "silu"),
        attention_bias=config.get("attention_bias", False),
        pad_token_id=config.get("pad_token_id"),
    )
    with quiet_hf_bars():
        # built in ``dtype`` from the start: a 2B model trained in bf16 gets no fp32 copy
        base = LlamaModel._from_config(llama, dtype=dtype)
    state = _state_dict(path)
    _base_from_state(base, state)
    return MiniCPMLayout(base, _heads(state).to(dtype))


def fold_minicpm_scalings(base: nn.Module, config: dict[str, Any]) -> None:
    """Fold MiniCPM's embedding and residual scalings into the weights (exact up to
    rounding): the Llama backbone then computes what MiniCPM does."""
    residual = minicpm_residual_scale(config)
    model: Any = base
    with torch.no_grad():
        model.embed_tokens.weight.mul_(float(config.get("scale_emb", 1.0)))
        for layer in model.layers:
            layer.self_attn.o_proj.weight.mul_(residual)
            layer.mlp.down_proj.weight.mul_(residual)


def minicpm_as_llama(
    path: Path, config: dict[str, Any], *, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, torch.Tensor]:
    """The backbone (scalings folded in) and the per-layer heads."""
    layout = minicpm_layout(path, config, dtype=dtype)
    fold_minicpm_scalings(layout.model, config)
    return layout.model.eval(), layout.heads()


def costwise_as_gemma2(path: Path, config: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    from transformers import Gemma2Config, Gemma2Model

    keep = {
        k: v
        for k, v in config.items()
        if k
        not in (
            "model_type",
            "architectures",
            "auto_map",
            "start_layer",
            "layer_sep",
            "layer_wise",
            "transformers_version",
        )
    }
    keep["attn_implementation"] = "eager"
    with quiet_hf_bars():
        base = Gemma2Model(Gemma2Config(**keep)).float()
    state = _state_dict(path)
    _base_from_state(base, state)
    return base.eval(), _heads(state)
