"""BERT / XLM-RoBERTa encoders built straight from their weights file, without transformers.

Importing transformers' modelling code and instantiating its model is most of a small
model's load time (about 3 s of a 4 s load on 2 CPU cores, for all-MiniLM-L6-v2). The
packed forward needs only the tensors, so for a folder with one weights file and a config
it supports, the encoder is built from the tensors directly; anything else (sharded or
unusual checkpoints, missing keys) returns ``None`` and the caller loads through
transformers, which handles every case. Same numbers either way (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgekit.models.backbones import PackedEncoder, PackedLayer, config_unsupported, position_offset
from bgekit.models.loading import key_mismatch, safe_torch_load, weights_error

logger = logging.getLogger(__name__)

# Prefixes a task model puts before the encoder's keys (transformers strips them too).
_PREFIXES = ("", "bert.", "roberta.", "xlm-roberta.", "model.")
# The encoder's own parts (a tensor under them that the encoder does not take is one the
# config does not account for) and the buffers some checkpoints save beside the weights.
_ENCODER_PARTS = ("embeddings", "encoder")
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _read_weights(path: Path) -> tuple[Path, dict[str, torch.Tensor]] | None:
    """The weights file and its tensors, when the folder has one file bgekit reads itself."""
    safetensors = path / "model.safetensors"
    if safetensors.is_file():
        from safetensors.torch import load_file

        try:
            return safetensors, load_file(str(safetensors))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise weights_error(safetensors, e) from None
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        state = safe_torch_load(binary)
        return (binary, state) if isinstance(state, dict) else None
    return None


def _encoder_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The encoder's tensors under transformers' base-model names (old LayerNorm names
    ``gamma`` / ``beta`` renamed), or ``None`` when no prefix gives the embeddings."""
    for prefix in _PREFIXES:
        if f"{prefix}embeddings.word_embeddings.weight" not in state:
            continue
        out = {}
        for key, value in state.items():
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if name.endswith(".gamma"):
                    name = name[: -len("gamma")] + "weight"
                elif name.endswith(".beta"):
                    name = name[: -len("beta")] + "bias"
                out[name] = value
        return out
    return None


class _Linear(nn.Linear):
    """An ``nn.Linear`` around given tensors (the constructor would draw random weights)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        nn.Module.__init__(self)
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)


class _LayerNorm(nn.LayerNorm):
    """An ``nn.LayerNorm`` around given tensors."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        nn.Module.__init__(self)
        self.normalized_shape = (int(weight.shape[0]),)
        self.eps = eps
        self.elementwise_affine = True
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)


class TensorMismatch(KeyError):
    """A tensor the encoder needs is missing (``found`` is ``None``) or has another shape."""

    def __init__(self, name: str, found: tuple[int, ...] | None, expected: tuple[int, ...]):
        super().__init__(name)
        self.name, self.found, self.expected = name, found, expected


class _Tensors:
    """Named tensors as float32, each one's shape checked; ``used``: the names taken."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state = state
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = self.state.get(name)
        if t is None or tuple(t.shape) != shape:
            raise TensorMismatch(name, None if t is None else tuple(t.shape), shape)
        self.used.add(name)
        return t.to(torch.float32).contiguous()

    def linear(self, prefix: str, n_in: int, n_out: int) -> nn.Linear:
        return _Linear(self.get(f"{prefix}.weight", (n_out, n_in)), self.get(f"{prefix}.bias", (n_out,)))

    def norm(self, prefix: str, dim: int, eps: float) -> nn.LayerNorm:
        return _LayerNorm(self.get(f"{prefix}.weight", (dim,)), self.get(f"{prefix}.bias", (dim,)), eps)

    def embedding(self, name: str, rows: int, dim: int) -> nn.Embedding:
        weight = nn.Parameter(self.get(name, (rows, dim)), requires_grad=False)
        return nn.Embedding(rows, dim, _weight=weight)


def _build(config: Mapping[str, Any], t: _Tensors) -> PackedEncoder:
    dim, ffn = int(config["hidden_size"]), int(config["intermediate_size"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    layers = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        names = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
        qkv = _Linear(
            torch.cat([t.get(f"{n}.weight", (dim, dim)) for n in names]),
            torch.cat([t.get(f"{n}.bias", (dim,)) for n in names]),
        )
        layers.append(
            PackedLayer(
                qkv,
                t.linear(f"{p}.attention.output.dense", dim, dim),
                t.norm(f"{p}.attention.output.LayerNorm", dim, eps),
                t.linear(f"{p}.intermediate.dense", dim, ffn),
                t.linear(f"{p}.output.dense", ffn, dim),
                t.norm(f"{p}.output.LayerNorm", dim, eps),
            )
        )
    return PackedEncoder(
        word=t.embedding("embeddings.word_embeddings.weight", int(config["vocab_size"]), dim),
        position=t.embedding(
            "embeddings.position_embeddings.weight", int(config["max_position_embeddings"]), dim
        ),
        token_type=t.embedding(
            "embeddings.token_type_embeddings.weight", int(config.get("type_vocab_size", 2)), dim
        ),
        emb_norm=t.norm("embeddings.LayerNorm", dim, eps),
        layers=layers,
        heads=int(config["num_attention_heads"]),
        position_offset=position_offset(str(config["model_type"]), int(config.get("pad_token_id") or 0)),
    )


def packed_from_state(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> tuple[PackedEncoder, set[str]]:
    """A packed encoder from tensors under transformers' base-model names
    (``embeddings.*``, ``encoder.layer.N.*``) and the names it took. A missing or misshapen
    tensor raises :class:`TensorMismatch` (for a checkpoint that holds the encoder among
    other parts, such as BGE-Visualized's)."""
    tensors = _Tensors(state)
    return _build(config, tensors).eval(), tensors.used


def packed_from_folder(path: Path, config: Mapping[str, Any]) -> PackedEncoder | None:
    """The packed encoder of the model in ``path`` built from its weights file, or ``None``
    when transformers has to load it (see the module docstring)."""
    reason = config_unsupported(config)
    if reason is not None:
        return None
    read = _read_weights(path)
    encoder = _encoder_state(read[1]) if read is not None else None
    if read is None or encoder is None:
        return None
    tensors = _Tensors(encoder)
    try:
        model = _build(config, tensors)
    except (KeyError, ValueError) as e:
        # transformers loads it, or names what is missing (runtime.check_loading_info)
        logger.debug("%s: loading through transformers (%s missing or misshapen)", path, e)
        return None
    unused = [k for k in encoder if k.split(".", 1)[0] in _ENCODER_PARTS and k not in tensors.used]
    unused = [k for k in unused if k not in _BUFFERS]
    if unused:  # e.g. layers beyond config.json's num_hidden_layers
        layers = config["num_hidden_layers"]
        raise key_mismatch(
            read[0], f"config.json ({config['model_type']}, {layers} layers)", unexpected=unused
        )
    return model.eval()
