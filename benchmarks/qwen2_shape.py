"""A random decoder with Qwen2-0.5B's layer shapes (24 layers, hidden 896, 14 heads / 2
key-value heads, FFN 4864) and the tests' small BPE tokenizer, built once in a folder
(written beside it and renamed, so an interrupted build leaves nothing half-made)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_qwen2_shape(
    folder: Path, *, vocab_size: int | None = None, max_positions: int = 4096, bf16: bool = False
) -> Path:
    """``vocab_size``: the embedding rows (default: the tokenizer's; Qwen2's real 151,936
    where memory matters); ``bf16``: built and saved in bf16, as the hub checkpoint is."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import Qwen2Config, Qwen2Model

    sys.path.insert(0, str(ROOT))
    from tests.tiny_llms import bpe_tokenizer

    tmp = folder.with_name(folder.name + ".tmp")
    torch.manual_seed(0)
    tok = bpe_tokenizer(add_eos=True)
    config = Qwen2Config(
        vocab_size=vocab_size or len(tok),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if bf16:
        torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen2Model(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
