"""What an index stores and how (:class:`IndexConfig`), and what a saved one holds
(:class:`IndexInfo`, read without loading a model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bgekit.errors import InputError
from bgekit.index import storage
from bgekit.index.chunking import CHUNKINGS, SPLITS, Chunking, Split
from bgekit.index.documents import DEFAULT_MAX_DOCUMENT_CHARS, OVERSIZE, Oversize
from bgekit.retrieval.dense_store import DEFAULT_RESCORE, check_dense_dtype
from bgekit.scoring.quantize import DenseDtype
from bgekit.types import OutputKind, Outputs


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """What an index stores and how. ``chunk_tokens=None`` uses the model's passage length
    minus room for special tokens; ``chunking="late"`` encodes each document whole and pools
    each chunk's tokens from that run (late chunking; see
    :func:`bgekit.index.documents.late_chunk_rows`) instead of encoding chunks on their own;
    ``dense_index="hnsw"`` trades exactness for speed on large corpora;
    ``dense_dtype`` stores dense vectors as float16 (half the bytes), calibrated int8 (a
    quarter) or binary (1/32 in memory, candidates by Hamming distance, the ``rescore``
    nearest rescored with int8 codes read from disk);
    ``multivector_dtype="float16"`` halves multi-vector storage;
    a document longer than ``max_document_chars`` (``None``: no limit) is refused, or
    skipped and counted with ``oversize="skip"``, before anything is encoded; ``task`` (a
    name in the model's task table, e.g. BAAI/llm-embedder's ``"qa"``) gives documents its
    passage instruction and queries its query instruction (``None``: the model's default);
    ``split="text"`` cuts long documents where their text allows — Markdown headings,
    paragraphs, lines, sentences, then words, code fences only between lines — each chunk
    carrying its heading path, ``"tokens"`` into plain token windows."""

    outputs: tuple[OutputKind, ...] = ("dense",)
    chunk_tokens: int | None = None
    chunk_overlap: int = 64
    chunking: Chunking = "independent"
    dense_index: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    multivector_dtype: Literal["float32", "float16"] = "float32"
    dense_dtype: DenseDtype = "float32"
    rescore: int = DEFAULT_RESCORE
    max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS
    oversize: Oversize = "error"
    task: str | None = None
    split: Split = "text"

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", Outputs.parse(self.outputs).kinds)  # checked, in canonical order
        if self.chunk_tokens is not None and self.chunk_tokens < 8:
            raise InputError(
                f"chunk_tokens must be at least 8 (or None for the model's length), got {self.chunk_tokens}"
            )
        if self.chunk_overlap < 0:
            raise InputError(f"chunk_overlap must be at least 0, got {self.chunk_overlap}")
        if self.split not in SPLITS:
            raise InputError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.chunking not in CHUNKINGS:
            raise InputError(f"chunking must be one of {', '.join(CHUNKINGS)}, got {self.chunking!r}")
        if self.dense_index not in ("flat", "hnsw"):
            raise InputError(f"dense_index must be 'flat' or 'hnsw', got {self.dense_index!r}")
        check_dense_dtype(self.dense_dtype)
        if self.dense_index == "hnsw" and self.dense_dtype != "float32":
            raise InputError(
                f"dense_index 'hnsw' stores float32 vectors, not {self.dense_dtype} (use 'flat')"
            )
        if self.rescore < 1:
            raise InputError(f"rescore must be at least 1, got {self.rescore}")
        if self.max_document_chars is not None and self.max_document_chars < 1:
            raise InputError(
                f"max_document_chars must be at least 1 (or None), got {self.max_document_chars}"
            )
        if self.oversize not in OVERSIZE:
            raise InputError(f"oversize must be one of {', '.join(OVERSIZE)}, got {self.oversize!r}")


@dataclass(frozen=True)
class IndexInfo:
    path: str | None
    model: str
    outputs: tuple[str, ...]
    documents: int
    chunks: int
    dims: dict[str, int]
    config: dict[str, Any]
    disk_bytes: dict[str, int] = field(default_factory=dict)
    generation: str | None = None
    building: bool = False  # an interrupted build: the same build run again finishes it


def inspect_index(path: str | Path) -> IndexInfo:
    """What a saved index holds, from its manifest, after checking every file (headers and
    sizes); no model is loaded."""
    root = Path(path)
    manifest = storage.checked_manifest(root)
    counts = manifest["counts"]
    return IndexInfo(
        path=str(root),
        model=str(manifest["model"]["name"]),
        outputs=tuple(manifest["outputs"]),
        documents=int(counts["documents"]),
        chunks=int(counts["chunks"]),
        dims=dict(manifest.get("dims") or {}),
        config=dict(manifest["config"]),
        disk_bytes=storage.disk_size(root, str(manifest["generation"])),
        generation=str(manifest["generation"]),
        building=bool(manifest.get("building", False)),
    )
