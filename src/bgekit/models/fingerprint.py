"""A model's identity for saved artefacts: what must match for stored vectors to be reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from bgekit.models.loading import safe_torch_load
from bgekit.models.tokenizer import tokenizer_files

if TYPE_CHECKING:
    from bgekit.models.embedder import Embedder


def model_fingerprint(embedder: Embedder) -> str:
    """Changes when the weights, heads, tokenizer or encoding settings change; not when the
    folder moves."""
    info = embedder.info
    root = Path(info.path)
    h = hashlib.sha256()
    if (root / "config.json").is_file():
        h.update((root / "config.json").read_bytes())
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        if (root / name).is_file():  # the weights, not the file bytes (torch.save adds a random id)
            state = safe_torch_load(root / name)
            for key in sorted(state):
                h.update(name.encode() + key.encode() + state[key].float().numpy().tobytes())
    for f in tokenizer_files(root):  # the same weights with another vocabulary are another model
        h.update(f"tokenizer:{f.name}:".encode() + hashlib.sha256(f.read_bytes()).digest())
    for p in sorted([*root.glob("*.safetensors"), *root.glob("pytorch_model*.bin")]):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    settings = [
        info.pooling,
        info.normalize,
        info.query_instruction,
        info.query_max_length,
        info.passage_max_length,
    ]
    h.update(json.dumps(settings).encode())
    return h.hexdigest()[:24]
