"""Tiny random decoder LLMs with a real byte-level BPE tokenizer, built offline: a Qwen2
embedder, a Gemma yes/no reranker, and checkpoints in the layouts of the layer-wise MiniCPM
and lightweight (cost-wise Gemma-2) rerankers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2Model,
    GemmaConfig,
    GemmaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Model,
)

from tests.tiny_models import CORPUS

EXTRA = [
    "Yes No A: B: Instruct: Query: <instruct> <query> <response>",
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'.",
    "Predict whether passage B contains an answer to query A.",
    "Given a web search query, retrieve relevant passages that answer the query.",
]


def bpe_tokenizer(*, add_eos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS + EXTRA * 4, trainer)
    tok.add_tokens(["Yes"])
    template = "<s> $A </s>" if add_eos else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(
        single=template, pair=template + " $B", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _small(**extra: object) -> dict[str, object]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        **extra,
    }


def build_qwen2_embedder(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tok = bpe_tokenizer(add_eos=True)
    model = Qwen2Model(Qwen2Config(vocab_size=len(tok), **_small()))  # type: ignore[arg-type]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_gemma_reranker(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tok = bpe_tokenizer(add_eos=False)
    config = GemmaConfig(vocab_size=len(tok), head_dim=8, **_small())  # type: ignore[arg-type]
    model = GemmaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.ndim > 1 else None
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


MINICPM = {
    "scale_emb": 12.0,
    "scale_depth": 1.4,
    "dim_model_base": 16,
    "start_layer": 1,
    "rms_norm_eps": 1e-5,
}


def build_minicpm_layerwise(path: Path, seed: int = 0) -> Path:
    """A checkpoint with the parameter names of bge-reranker-v2-minicpm-layerwise."""
    g = torch.Generator().manual_seed(seed)
    tok = bpe_tokenizer(add_eos=False)
    cfg = _small(vocab_size=len(tok), rope_theta=10000.0, hidden_act="silu", **MINICPM)
    h, inter, n = 32, 64, int(cfg["num_hidden_layers"])  # type: ignore[call-overload]
    kv = 2 * 8
    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": torch.randn(len(tok), h, generator=g) * 0.1
    }
    for i in range(n):
        pre = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj.weight": (h, h),
            "self_attn.k_proj.weight": (kv, h),
            "self_attn.v_proj.weight": (kv, h),
            "self_attn.o_proj.weight": (h, h),
            "mlp.gate_proj.weight": (inter, h),
            "mlp.up_proj.weight": (inter, h),
            "mlp.down_proj.weight": (h, inter),
        }
        for name, shape in shapes.items():
            state[pre + name] = torch.randn(*shape, generator=g) * 0.2
        state[pre + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        state[pre + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    state["model.norm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    for k in range(n - int(MINICPM["start_layer"]) + 1):
        state[f"lm_head.{k}.linear_head.weight"] = torch.randn(1, h, generator=g)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"))
    config = {
        "model_type": "minicpm",
        "architectures": ["LayerWiseMiniCPMForCausalLM"],
        "head_type": "simple",
        "head_multi": True,
        **cfg,
    }
    (path / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(path)
    return path


def build_costwise_gemma2(path: Path, seed: int = 0) -> Path:
    """A checkpoint with the layout of bge-reranker-v2.5-gemma2-lightweight."""
    torch.manual_seed(seed)
    tok = bpe_tokenizer(add_eos=False)
    config = Gemma2Config(
        vocab_size=len(tok),
        head_dim=8,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        query_pre_attn_scalar=8,
        sliding_window=64,
        **_small(),
    )  # type: ignore[arg-type]
    base = Gemma2Model(config)
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.3) if p.ndim > 1 else None
    state = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    start = 1
    for k in range(config.num_hidden_layers - start + 1):
        state[f"lm_head.{k}.linear_head.weight"] = torch.randn(1, config.hidden_size, generator=g) * 3
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"))
    cfg = config.to_dict()
    cfg.update(
        {
            "model_type": "cost_wise_gemma",
            "architectures": ["CostWiseGemmaForCausalLM"],
            "start_layer": start,
            "layer_sep": 1,
            "layer_wise": True,
        }
    )
    (path / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(path)
    return path
