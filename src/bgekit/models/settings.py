"""How an embedder runs, resolved from (in rising priority) bgekit's defaults, its table of
known models, the folder's own metadata and the user's settings. No torch here: this is
plain data, shared by loading, manifests and the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from bgekit.errors import InputError, ModelFormatError
from bgekit.models.long_input import DEFAULT_MCLS_STRIDE, LongInput
from bgekit.models.prompts import Prompts, Task, check_examples
from bgekit.models.registry import DECODER_TYPES, LLM_FORMAT, PREFIX_FORMAT, KnownModel
from bgekit.types import ModelInfo, OutputKind

if TYPE_CHECKING:
    from bgekit.models.loading import FolderMeta

POOLINGS = ("cls", "mean", "last_token")
# sentence-transformers prompt names that say which side a prompt is for
QUERY_PROMPTS = ("query",)
PASSAGE_PROMPTS = ("document", "passage")
V = TypeVar("V")


@dataclass(frozen=True, kw_only=True)
class EmbedderSettings:
    """Overrides of what the folder and bgekit's table say; ``None`` keeps theirs.

    ``query_instruction`` / ``passage_instruction`` prefix queries / passages (queries in
    ``query_format``); ``task`` picks the default entry of the model's task table (BAAI/llm-
    embedder: qa, icl, chat, lrlm, tool, convsearch), whose pair of instructions replaces
    both. ``long_input`` says what happens to a document longer than ``passage_max_length``
    (see :mod:`bgekit.models.long_input`): ``"truncate"`` cuts it (the reference behaviour);
    ``"chunk"`` encodes it as windows of the passage length sharing ``long_input_overlap``
    tokens (default 64, at most half a window) and combines them; ``"mcls"`` (CLS-pooled
    encoders) puts a CLS token before every ``mcls_stride`` tokens and averages their
    states, reading up to the model's position table. ``max_input_tokens``: under chunk and
    mcls, the longest document kept (longer ones are cut at the end and counted as
    truncated; default: no limit for chunk, the position table for mcls). Queries are cut
    at ``query_max_length`` under every policy (under mcls they get its CLS layout too).
    ``text_model``: for a BGE-Visualized checkpoint (a ``.pth``), the text model it was
    trained on (hub id or folder with its config and tokenizer); by default the one its file
    name says (``Visualized_base_en_v1.5.pth``: BAAI/bge-base-en-v1.5; ``Visualized_m3.pth``:
    BAAI/bge-m3).
    """

    pooling: str | None = None
    normalize: bool | None = None
    query_instruction: str | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    query_format: str | None = None
    long_input: LongInput = "truncate"
    long_input_overlap: int | None = None
    mcls_stride: int = DEFAULT_MCLS_STRIDE
    max_input_tokens: int | None = None
    passage_instruction: str | None = None
    task: str | None = None
    text_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data (what an index manifest records)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderSettings:
        """Settings recorded by :meth:`to_dict`; an unknown key is an error naming it."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown embedder settings {unknown}; known: {', '.join(sorted(names))}")
        return cls(**data)


def first(*values: V | None) -> V:
    """The first value that is set: explicit setting, folder, table, default."""
    for v in values:
        if v is not None:
            return v
    raise ValueError("no value set")


def resolve_prompts(
    s: EmbedderSettings, meta: FolderMeta, known: KnownModel | None, decoder: bool
) -> Prompts:
    """The instructions, formats, tasks and (for ICL models) an empty example list.

    A sentence-transformers folder's ``prompts`` give the query side (``query``), the
    passage side (``document`` or ``passage``) and, under any other name, a task whose query
    instruction is that prompt (the passage side keeps the folder's passage prompt)."""
    folder_query = next((meta.prompts[k] for k in QUERY_PROMPTS if k in meta.prompts), None)
    folder_passage = next((meta.prompts[k] for k in PASSAGE_PROMPTS if k in meta.prompts), None)
    passage = str(first(s.passage_instruction, folder_passage, ""))
    tasks = [(name, Task(q, p)) for name, q, p in known.tasks] if known else []
    tasks += [
        (name, Task(text, passage))
        for name, text in meta.prompts.items()
        if name not in QUERY_PROMPTS + PASSAGE_PROMPTS and name not in dict(tasks)
    ]
    default_format = LLM_FORMAT if decoder else PREFIX_FORMAT
    return Prompts(
        query_instruction=str(
            first(s.query_instruction, folder_query, known.query_instruction if known else None, "")
        ),
        passage_instruction=passage,
        query_format=str(first(s.query_format, known.query_format if known else None, default_format)),
        tasks=tuple(tasks),
        task=first(s.task, known.default_task if known else None, "") or None,
        examples=check_examples(()) if known is not None and known.icl else None,
    )


def resolve_info(
    name: str,
    meta: FolderMeta,
    known: tuple[str, KnownModel] | None,
    s: EmbedderSettings,
    *,
    heads: tuple[OutputKind, ...],
    multivector_dim: int | None,
) -> tuple[ModelInfo, Prompts]:
    """The model's description and prompts under these settings; a value outside what the
    model allows is a one-line error."""
    k = known[1] if known else None
    config = meta.config
    positions = meta.max_positions
    decoder = str(config.get("model_type", "")) in DECODER_TYPES
    default_len = min(meta.max_seq_length or positions, positions, 512 if decoder else positions)
    pooling = str(
        first(s.pooling, meta.pooling, k.pooling if k else None, "last_token" if decoder else "cls")
    )
    if pooling not in POOLINGS:
        raise ModelFormatError(f"pooling {pooling!r} is not supported; use one of {POOLINGS}")
    prompts = resolve_prompts(s, meta, k, decoder)
    info = ModelInfo(
        name=name,
        path=str(meta.path),
        task="embedder",
        model_type=str(config.get("model_type", "?")),
        architecture=meta.architecture,
        hidden_size=int(config.get("hidden_size", 0)),
        pooling=pooling,
        normalize=bool(first(s.normalize, meta.normalize, k.normalize if k else None, True)),
        query_instruction=prompts.query_instruction,
        query_max_length=int(
            first(s.query_max_length, min(k.query_max_length, default_len) if k else None, default_len)
        ),
        passage_max_length=int(
            first(s.passage_max_length, min(k.passage_max_length, positions) if k else None, default_len)
        ),
        heads=heads,
        multivector_dim=multivector_dim,
        known_as=known[0] if known else None,
        query_format=prompts.query_format,
        passage_instruction=prompts.passage_instruction,
        tasks=prompts.task_names,
        default_task=prompts.task,
    )
    for label, value in (("query", info.query_max_length), ("passage", info.passage_max_length)):
        if not 2 < value <= positions:
            raise ModelFormatError(f"{label} max length {value} is outside 3..{positions}")
    return info, prompts


def is_decoder(meta: FolderMeta) -> bool:
    return str(meta.config.get("model_type", "")) in DECODER_TYPES
