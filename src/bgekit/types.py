"""Value types returned by bgekit: small, frozen, with conversions on the value."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from bgekit.errors import InputError

Kind = Literal["query", "document"]
OutputKind = Literal["dense", "sparse", "multivector"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("dense", "sparse", "multivector")
KINDS: tuple[Kind, ...] = ("query", "document")
# How an index or corpus is searched: one output, BM25 over the texts, or a hybrid of them.
SearchMode = Literal["dense", "sparse", "multivector", "hybrid", "bm25"]
SEARCH_MODES: tuple[SearchMode, ...] = ("dense", "sparse", "multivector", "hybrid", "bm25")
# The scorers a search combines (``hybrid`` is a mix of these).
Scorer = Literal["dense", "sparse", "bm25", "multivector"]


@dataclass(frozen=True, eq=False)
class SparseVec:
    """A lexical vector: sorted unique token ids with one positive weight each."""

    indices: np.ndarray  # int64, sorted ascending, unique
    values: np.ndarray  # float32, same length

    def __post_init__(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.ndim != 1:
            raise ValueError("SparseVec indices and values must be 1-D arrays of the same length")

    @classmethod
    def from_dict(cls, weights: Mapping[int, float]) -> SparseVec:
        """Build from ``{token_id: weight}``."""
        ids = np.fromiter((int(k) for k in weights), dtype=np.int64, count=len(weights))
        vals = np.fromiter((float(v) for v in weights.values()), dtype=np.float32, count=len(weights))
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], vals[order])

    def to_dict(self) -> dict[int, float]:
        """``{token_id: weight}`` with plain Python numbers."""
        return dict(zip(self.indices.tolist(), self.values.tolist(), strict=True))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseVec):
            return NotImplemented
        return bool(np.array_equal(self.indices, other.indices) and np.array_equal(self.values, other.values))

    __hash__ = None  # type: ignore[assignment]


def canonical(kinds: Iterable[object]) -> tuple[OutputKind, ...]:
    """The output kinds among ``kinds``, once each, in canonical order (the one place that
    order is derived).

    >>> canonical({"multivector", "dense"})
    ('dense', 'multivector')
    """
    given = set(kinds)
    return tuple(k for k in OUTPUT_KINDS if k in given)


@dataclass(frozen=True)
class Outputs:
    """Output kinds, checked once and kept in canonical order (dense, sparse, multivector):
    what every room below an entry point reads, without converting or re-checking.

    >>> Outputs.parse(["multivector", "dense", "dense"]).kinds
    ('dense', 'multivector')
    >>> "sparse" in Outputs.parse("dense") | Outputs.parse(["sparse"])
    True
    """

    kinds: tuple[OutputKind, ...]

    def __post_init__(self) -> None:
        if self.kinds != canonical(self.kinds):
            raise ValueError(f"Outputs holds kinds in canonical order, once each: {self.kinds}")

    @classmethod
    def parse(cls, value: Outputs | str | Iterable[str]) -> Outputs:
        """``value`` (one name or several) as Outputs; an unknown or empty one is an error."""
        if isinstance(value, Outputs):
            return value
        names = [value] if isinstance(value, str) else list(value)
        for name in names:
            if name not in OUTPUT_KINDS:
                raise InputError(f"unknown output {name!r}; choose from {', '.join(OUTPUT_KINDS)}")
        if not names:
            raise InputError("outputs is empty; ask for at least one of dense, sparse, multivector")
        return cls(canonical(names))

    def __iter__(self) -> Iterator[OutputKind]:
        return iter(self.kinds)

    def __len__(self) -> int:
        return len(self.kinds)

    def __contains__(self, kind: object) -> bool:
        return kind in self.kinds

    def __or__(self, other: Outputs) -> Outputs:
        return Outputs(canonical((*self.kinds, *other.kinds)))


@dataclass(frozen=True)
class EmbeddingRow:
    """One input's outputs as the engine returns them (``None``: not asked for)."""

    dense: np.ndarray | None = None
    sparse: SparseVec | None = None
    multivector: np.ndarray | None = None


@dataclass(frozen=True)
class Encoded:
    """What one encode call returns; an output that was not asked for is ``None``.

    ``dense`` is ``(n, d)`` float32; ``sparse`` is one :class:`SparseVec` per text;
    ``multivector`` is one ``(n_tokens_i, d)`` float32 array per text, padding removed.
    ``truncated``: texts cut at the end; ``chunked``: texts longer than the model's window
    that the long-input policy handled (split into windows, or given several CLS tokens).
    """

    dense: np.ndarray | None = None
    sparse: list[SparseVec] | None = None
    multivector: list[np.ndarray] | None = None
    truncated: int = 0
    chunked: int = 0

    def __len__(self) -> int:
        for part in (self.dense, self.sparse, self.multivector):
            if part is not None:
                return len(part)
        return 0

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[EmbeddingRow],
        outputs: Collection[OutputKind],
        dim: int = 0,
        *,
        truncated: int = 0,
        chunked: int = 0,
    ) -> Encoded:
        """Stack per-input rows; ``dim`` shapes an empty dense matrix."""
        dense = None
        if "dense" in outputs:
            vecs = [r.dense for r in rows if r.dense is not None]
            dense = np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)
        return cls(
            dense=dense,
            sparse=[r.sparse for r in rows if r.sparse is not None] if "sparse" in outputs else None,
            multivector=[r.multivector for r in rows if r.multivector is not None]
            if "multivector" in outputs
            else None,
            truncated=truncated,
            chunked=chunked,
        )

    def select(self, rows: Sequence[int]) -> Encoded:
        """These rows, in that order (the counts of cut inputs are not kept)."""
        pick = list(rows)
        return Encoded(
            dense=None if self.dense is None else self.dense[pick],
            sparse=None if self.sparse is None else [self.sparse[i] for i in pick],
            multivector=None if self.multivector is None else [self.multivector[i] for i in pick],
        )

    @property
    def outputs(self) -> tuple[OutputKind, ...]:
        """The outputs this value holds, in canonical order."""
        parts = {"dense": self.dense, "sparse": self.sparse, "multivector": self.multivector}
        return canonical(k for k, v in parts.items() if v is not None)


@dataclass(frozen=True)
class PairScores:
    """Scores of (query, passage) pairs in every mode the model supports.

    ``sparse_dense`` and ``all`` are the weighted combinations (weighted sum divided by
    the sum of the weights, weights ordered dense, sparse, multi-vector).
    """

    dense: np.ndarray
    sparse: np.ndarray | None = None
    multivector: np.ndarray | None = None
    sparse_dense: np.ndarray | None = None
    all: np.ndarray | None = None

    def to_dict(self) -> dict[str, list[float]]:
        """Mode name -> list of scores, with the reference toolkit's key names."""
        names = {
            "dense": self.dense,
            "sparse": self.sparse,
            "colbert": self.multivector,
            "sparse+dense": self.sparse_dense,
            "colbert+sparse+dense": self.all,
        }
        return {k: v.tolist() for k, v in names.items() if v is not None}


@dataclass(frozen=True, eq=False)
class Ranking:
    """One query's hits: row positions and scores, best first; ``modes`` holds each
    scorer's own score of the same rows (for a hybrid, the scores that were fused)."""

    indices: np.ndarray  # int64
    scores: np.ndarray  # float32
    modes: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class Hit:
    """One search result: a document with its best chunk, the final score, and the score of
    every mode and stage that produced it (``"dense"``, ``"bm25"``, ``"rerank"``, ...)."""

    id: str
    score: float
    text: str
    title: str = ""
    chunk: int = 0
    metadata: dict[str, object] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    image: str | None = None  # an image document's file (stored by reference)


@dataclass(frozen=True)
class RerankResult:
    """One reranked passage: its position in the input and its score."""

    index: int
    score: float


@dataclass(frozen=True)
class TokenSeq:
    """One tokenised input: ids with special tokens, and segment ids when the model uses them.

    ``media``: what the model's forward computes some token slots from (an image:
    :class:`bgekit.images.ImagePart`), carried to the batch as it is; the engine, which
    counts the slots as tokens, never reads it.
    """

    ids: Sequence[int]
    type_ids: Sequence[int] | None = None
    truncated: bool = False
    media: object | None = None

    def __len__(self) -> int:
        return len(self.ids)


MODALITY_LABELS = {"text": "text", "image": "images", "text+image": "image + text (composed)"}


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and how bgekit will run it.

    Embedders: a query holds at most ``query_max_length`` tokens, a passage
    ``passage_max_length``. Rerankers: a (query, passage) pair holds at most
    ``pair_max_length`` tokens, the query at most ``query_max_length``, and the passage is
    cut to fit (``passage_max_length`` is then the same as ``pair_max_length``: the most a
    passage can get, next to a short query).
    """

    name: str
    path: str
    task: Literal["embedder", "reranker"]
    model_type: str
    architecture: str
    hidden_size: int
    pooling: str
    normalize: bool
    query_instruction: str
    query_max_length: int
    passage_max_length: int
    heads: tuple[OutputKind, ...] = field(default=("dense",))
    multivector_dim: int | None = None
    known_as: str | None = None
    query_format: str = "{}{}"
    pair_max_length: int | None = None
    long_input: str = "truncate"
    passage_instruction: str = ""
    tasks: tuple[str, ...] = ()
    default_task: str | None = None
    modalities: tuple[str, ...] = ("text",)
    adapter: str | None = None  # a LoRA adapter folder merged into the weights at ``path``

    def describe(self) -> Iterator[tuple[str, str]]:
        """Readable (label, value) rows, for ``bgekit info``."""
        yield "name", self.name
        yield "path", self.path
        if self.adapter is not None:
            yield "adapter", f"{self.adapter} (LoRA, merged at load)"
        yield "task", self.task
        yield "architecture", f"{self.architecture} ({self.model_type}, hidden {self.hidden_size})"
        yield "known as", self.known_as or "(not in bgekit's table; settings read from the folder)"
        if self.task == "embedder":
            yield "pooling", self.pooling + (", L2-normalised" if self.normalize else "")
            yield "outputs", ", ".join(self.heads)
            yield "inputs", ", ".join(MODALITY_LABELS.get(m, m) for m in self.modalities)
            if self.multivector_dim is not None:
                yield "multi-vector dim", str(self.multivector_dim)
            yield (
                "query instruction",
                repr(self.query_instruction) if self.query_instruction else "none",
            )
            if self.query_format != "{}{}":
                yield "query format", repr(self.query_format)
            if self.passage_instruction:
                yield "passage instruction", repr(self.passage_instruction)
            if self.tasks:
                yield (
                    "tasks",
                    ", ".join(self.tasks) + (f" (default {self.default_task})" if self.default_task else ""),
                )
            longer = {
                "truncate": "longer inputs are truncated at the end",
                "chunk": "longer documents are encoded as overlapping windows, combined",
                "mcls": "documents get a CLS token every stride tokens (MCLS), up to the position table",
            }[self.long_input]
            yield (
                "max length",
                f"query {self.query_max_length}, passage {self.passage_max_length} tokens ({longer})",
            )
        else:
            passage = {
                "truncate": "the passage is truncated to fit",
                "max": "a longer passage is scored in overlapping windows (best window)",
                "mean": "a longer passage is scored in overlapping windows (mean of windows)",
            }[self.long_input]
            yield (
                "max length",
                f"{self.pair_max_length} tokens per pair; the query keeps at most {self.query_max_length}, {passage}",
            )
