"""Tiny random BGE-Visualized checkpoints in the published layout, built offline.

The published ``Visualized_*.pth`` is one state dict of FlagEmbedding's ``Visualized_BGE``:
``bge_embeddings.*`` / ``bge_encoder.*`` / ``bge_pooler.*`` (the text model), the EVA02-CLIP
tower under ``model_visual.visual.*`` (with its rotary tables saved once for the tower and
once per block, its unused final norm and CLIP head) plus ``model_visual.logit_scale``, and
``visual_proj.*``. The text model's folder keeps its config and tokenizer only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, BertModel, XLMRobertaModel

from tests.tiny_models import build_encoder

TOWER = "model_visual.visual."


@dataclass(frozen=True)
class TinyVisualized:
    checkpoint: Path
    text_dir: Path
    family: str
    image_size: int
    patch: int
    head_width: int
    layers: int

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2


def rope_table(grid: int, head_width: int, pt_hw_seq_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """EVA02's 2-D rotary table written out channel by channel (float64): channel ``c`` of
    the first half turns with the patch's row, of the second half with its column, at
    frequency ``10000 ** (-2 * (c % half // 2) / half)``; positions on the pre-training grid."""
    half = head_width // 2
    angles = np.zeros((grid * grid, head_width))
    for r in range(grid):
        for col in range(grid):
            for c in range(head_width):
                pos = r if c < half else col
                freq = 10000.0 ** (-2 * ((c % half) // 2) / half)
                angles[r * grid + col, c] = pos / grid * pt_hw_seq_len * freq
    return np.cos(angles), np.sin(angles)


def _rand(g: torch.Generator, *shape: int, scale: float) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def eva_state(
    width: int, layers: int, patch: int, image_size: int, head_width: int, seed: int, *, rope: bool = True
) -> dict[str, torch.Tensor]:
    """A random EVA02 tower in the reference's key layout (``model_visual.visual.*``)."""
    g = torch.Generator().manual_seed(seed)
    hidden = int(width * 2.6667)
    grid = image_size // patch
    s: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": _rand(g, width, 3, patch, patch, scale=(3 * patch * patch) ** -0.5),
        "patch_embed.proj.bias": _rand(g, width, scale=0.1),
        "cls_token": _rand(g, 1, 1, width, scale=0.5),
        "pos_embed": _rand(g, 1, 1 + grid * grid, width, scale=0.5),
    }

    def norm(name: str, dim: int) -> None:
        s[f"{name}.weight"] = 1 + _rand(g, dim, scale=0.2)
        s[f"{name}.bias"] = _rand(g, dim, scale=0.1)

    for i in range(layers):
        p = f"blocks.{i}."
        norm(p + "norm1", width)
        for n in "qkv":
            s[p + f"attn.{n}_proj.weight"] = _rand(g, width, width, scale=width**-0.5)
        s[p + "attn.q_bias"] = _rand(g, width, scale=0.1)
        s[p + "attn.v_bias"] = _rand(g, width, scale=0.1)
        norm(p + "attn.inner_attn_ln", width)
        s[p + "attn.proj.weight"] = _rand(g, width, width, scale=width**-0.5)
        s[p + "attn.proj.bias"] = _rand(g, width, scale=0.1)
        norm(p + "norm2", width)
        for n in ("w1", "w2"):
            s[p + f"mlp.{n}.weight"] = _rand(g, hidden, width, scale=width**-0.5)
            s[p + f"mlp.{n}.bias"] = _rand(g, hidden, scale=0.1)
        norm(p + "mlp.ffn_ln", hidden)
        s[p + "mlp.w3.weight"] = _rand(g, width, hidden, scale=hidden**-0.5)
        s[p + "mlp.w3.bias"] = _rand(g, width, scale=0.1)
    norm("norm", width)
    s["head.weight"] = _rand(g, 16, width, scale=0.1)
    s["head.bias"] = torch.zeros(16)
    if rope:
        cos, sin = (torch.from_numpy(t).float() for t in rope_table(grid, head_width))
        for name in ["rope.", *[f"blocks.{i}.attn.rope." for i in range(layers)]]:
            s[name + "freqs_cos"], s[name + "freqs_sin"] = cos, sin
    return {TOWER + k: v for k, v in s.items()}


def build_visualized(
    root: Path,
    family: str = "bert",
    *,
    seed: int = 0,
    image_size: int = 32,
    patch: int = 8,
    layers: int = 2,
    head_width: int = 16,
    name: str = "Visualized_tiny.pth",
    trainable: bool = False,
) -> TinyVisualized:
    """A tiny checkpoint (text model: tests.tiny_models' hidden-32 BERT or XLM-R, its
    weights large unless ``trainable``: BERT at the usual 0.02 init, which bf16 matmuls
    reproduce closely) and its text model's folder, config and tokenizer only."""
    text_dir = build_encoder(root / f"text-{family}", family, m3_heads=False, seed=seed, trainable=trainable)
    (text_dir / "model.safetensors").unlink()  # the checkpoint holds the text weights
    config = AutoConfig.from_pretrained(text_dir)
    torch.manual_seed(seed + 1)
    text = BertModel(config) if family == "bert" else XLMRobertaModel(config)
    state: dict[str, torch.Tensor] = {}
    for part, module in (("bge_embeddings", text.embeddings), ("bge_encoder", text.encoder)):
        state |= {f"{part}.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    if text.pooler is not None:
        state |= {f"bge_pooler.{k}": v.detach().clone() for k, v in text.pooler.state_dict().items()}
    width = int(config.hidden_size)
    state |= eva_state(width, layers, patch, image_size, head_width, seed + 2)
    state["model_visual.logit_scale"] = torch.tensor(4.6052)
    g = torch.Generator().manual_seed(seed + 3)
    state["visual_proj.weight"] = torch.randn(width, width, generator=g) * width**-0.5
    state["visual_proj.bias"] = torch.randn(width, generator=g) * 0.1
    root.mkdir(parents=True, exist_ok=True)
    checkpoint = root / name
    torch.save(state, checkpoint)
    return TinyVisualized(checkpoint, text_dir, family, image_size, patch, head_width, layers)
