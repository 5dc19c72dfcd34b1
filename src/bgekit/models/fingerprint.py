"""A model's identity: everything that shapes its vectors, in one place. The index (its
manifest), the Ray shards and the evaluation cache all use it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgekit.models.adapters import ADAPTER_CONFIG
from bgekit.models.loading import safe_torch_load
from bgekit.models.tokenizer import tokenizer_files

if TYPE_CHECKING:
    from bgekit.models.embedder import Embedder

# Bytes read from each end of a weight file: fine-tuned weights differ there too, where the
# size alone does not change (reading whole multi-GB files on every load would be slow).
EDGE_BYTES = 1 << 20
PREPROCESSOR = "preprocessor_config.json"  # image models (BGE-VL): how pixels are made
_digests: dict[tuple[str, str, tuple[tuple[str, int, int], ...]], str] = {}


def _weight_files(root: Path) -> list[Path]:
    return sorted([*root.glob("*.safetensors"), *root.glob("pytorch_model*.bin")])


def files_digest(root: Path, text_model: Path | None = None) -> str:
    """The model files' digest: config, head weights (values: ``torch.save`` adds a random
    id to the bytes), tokenizer files, an image model's ``preprocessor_config.json``, and
    each weight file's size and both ends. Cached per folder while no file changes; moving
    the folder does not change it. ``root`` may be one checkpoint file (BGE-Visualized's
    ``.pth``) whose config and tokenizer are those of the folder ``text_model``."""
    single = root.is_file()
    meta = text_model if single else root
    weights = [root] if single else _weight_files(root)
    watched = [*weights, *([meta / "config.json", *tokenizer_files(meta)] if meta is not None else [])]
    watched += [root / n for n in ("colbert_linear.pt", "sparse_linear.pt", PREPROCESSOR)]
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in watched if p.is_file())
    key = (str(root.resolve()), str(meta), stamp)
    if key in _digests:
        return _digests[key]
    h = hashlib.sha256()
    if meta is not None and (meta / "config.json").is_file():
        h.update((meta / "config.json").read_bytes())
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        if (root / name).is_file():
            state = safe_torch_load(root / name)
            for k in sorted(state):
                h.update(name.encode() + k.encode() + state[k].float().numpy().tobytes())
    if (root / PREPROCESSOR).is_file():  # an image model's resize, crop, mean and std
        h.update(b"preprocessor:" + hashlib.sha256((root / PREPROCESSOR).read_bytes()).digest())
    # the same weights with another vocabulary are another model
    for f in tokenizer_files(meta) if meta is not None else []:
        h.update(f"tokenizer:{f.name}:".encode() + hashlib.sha256(f.read_bytes()).digest())
    for p in weights:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(EDGE_BYTES)
            fh.seek(max(0, size - EDGE_BYTES))
            tail = fh.read(EDGE_BYTES)
        h.update(f"{p.name}:{size}:".encode() + hashlib.sha256(head + tail).digest())
    _digests[key] = h.hexdigest()
    return _digests[key]


def adapter_digest(folder: Path) -> str:
    """A LoRA adapter folder's digest: its config (rank, alpha, targets) and, as
    :func:`files_digest` reads them, its weights (the LoRA pairs, added-token embeddings)
    and tokenizer files. The base it names is not part of it: the base's own files are."""
    h = hashlib.sha256(files_digest(folder).encode())
    h.update(b"adapter_config:" + (folder / ADAPTER_CONFIG).read_bytes())
    return h.hexdigest()


def model_identity(embedder: Embedder) -> dict[str, Any]:
    """What shapes the vectors, as JSON-ready data: the model files (and a LoRA adapter
    merged into them), pooling and normalisation, both sides' lengths, every prompt
    (instructions, query format, tasks, the default task, in-context examples) and the
    long-input policy."""
    info = embedder.info
    identity = {
        # an image model built on a text model's config and tokenizer names that folder
        "files": files_digest(Path(info.path), getattr(embedder.processor, "text_model", None)),
        "pooling": info.pooling,
        "normalize": info.normalize,
        "query_max_length": info.query_max_length,
        "passage_max_length": info.passage_max_length,
        "prompts": embedder.prompts.describe(),
        "long_input": asdict(embedder.long),
    }
    if info.adapter is not None:  # absent otherwise: identities recorded before adapters still match
        identity["adapter"] = adapter_digest(Path(info.adapter))
    return identity


def fingerprint_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def model_fingerprint(embedder: Embedder) -> str:
    """A short hash of :func:`model_identity`: equal fingerprints give equal vectors."""
    return fingerprint_of(model_identity(embedder))


def identity_diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two identities, one readable item each (``pooling: cls ->
    mean``; the model files and long values by name only)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{item}" for item in identity_diff(a, b)]
        elif key == "files":
            out.append("model files (weights, config or tokenizer)")
        elif key == "adapter":
            out.append("LoRA adapter " + ("(only one has one)" if a is None or b is None else "files"))
        else:
            shown = [json.dumps(v, ensure_ascii=False) for v in (a, b)]
            out.append(key if max(map(len, shown)) > 60 else f"{key}: {shown[0]} -> {shown[1]}")
    return out
