"""Models built offline from the real all-MiniLM-L6-v2 weights (tests and benchmarks).

Real trained weights behave like the published BGE checkpoints under reduced precision
(tiny random models do not: their activations are far more spread out), so the precision
gates are checked on these.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def minilm_with_m3_heads(minilm: Path, out: Path, seed: int = 0) -> Path:
    """MiniLM plus seeded ``sparse_linear.pt`` / ``colbert_linear.pt`` (the bge-m3 layout)."""
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.copytree(minilm, tmp)
    for extra in ("modules.json", "1_Pooling", "2_Normalize", "sentence_bert_config.json"):
        path = tmp / extra
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    g = torch.Generator().manual_seed(seed)
    hidden = 384
    colbert, sparse = nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
    with torch.no_grad():
        for layer in (colbert, sparse):
            bound = hidden**-0.5
            layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=g))
            layer.bias.copy_(torch.empty_like(layer.bias).uniform_(-bound, bound, generator=g))
    torch.save(colbert.state_dict(), tmp / "colbert_linear.pt")
    torch.save(sparse.state_dict(), tmp / "sparse_linear.pt")
    tmp.rename(out)
    return out


def minilm_cross_encoder(minilm: Path, out: Path, seed: int = 0) -> Path:
    """MiniLM as a one-logit cross-encoder (ms-marco-MiniLM-L-6-v2's shape), seeded head."""
    if out.exists():
        return out
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    tmp = out.with_name(out.name + ".tmp")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the fresh head's "newly initialized" report
    try:
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_pretrained(str(minilm), num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.save_pretrained(tmp)
    _copy_tokenizer(minilm, tmp)
    tmp.rename(out)
    return out
