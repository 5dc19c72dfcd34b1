"""The published BGE models a user can pick from: what each is (from its model card), and
whether it is in this machine's hub cache; ``bgekit models`` prints it, ``bgekit download``
fetches one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bgekit.errors import InputError, ModelNotFoundError

Kind = Literal["embedder", "reranker", "image embedder"]


@dataclass(frozen=True)
class CatalogEntry:
    """A published checkpoint: hub id, kind, outputs, vector size (embedders), languages,
    longest input in tokens, and parameters in millions."""

    hub_id: str
    kind: Kind
    outputs: tuple[str, ...]
    dim: int | None
    languages: str
    max_length: int
    params_m: int

    @property
    def name(self) -> str:
        return self.hub_id.split("/", 1)[1]


def _bge(size: str, lang: str, dim: int, params: int, version: str = "-v1.5") -> CatalogEntry:
    return CatalogEntry(f"BAAI/bge-{size}-{lang}{version}", "embedder", ("dense",), dim, lang, 512, params)


CATALOG: tuple[CatalogEntry, ...] = (
    _bge("small", "en", 384, 33),
    _bge("base", "en", 768, 109),
    _bge("large", "en", 1024, 335),
    _bge("small", "zh", 512, 24),
    _bge("base", "zh", 768, 102),
    _bge("large", "zh", 1024, 326),
    CatalogEntry("BAAI/bge-m3", "embedder", ("dense", "sparse", "multivector"), 1024, "100+", 8192, 568),
    CatalogEntry("BAAI/llm-embedder", "embedder", ("dense",), 768, "en", 512, 109),
    CatalogEntry("BAAI/bge-multilingual-gemma2", "embedder", ("dense",), 3584, "multilingual", 8192, 9242),
    CatalogEntry("BAAI/bge-en-icl", "embedder", ("dense",), 4096, "en", 32768, 7111),
    CatalogEntry("BAAI/bge-reranker-base", "reranker", ("score",), None, "en, zh", 512, 278),
    CatalogEntry("BAAI/bge-reranker-large", "reranker", ("score",), None, "en, zh", 512, 560),
    CatalogEntry("BAAI/bge-reranker-v2-m3", "reranker", ("score",), None, "multilingual", 8192, 568),
    CatalogEntry("BAAI/bge-reranker-v2-gemma", "reranker", ("score",), None, "multilingual", 8192, 2506),
    CatalogEntry(
        "BAAI/bge-reranker-v2-minicpm-layerwise", "reranker", ("score",), None, "multilingual", 2048, 2724
    ),
    CatalogEntry(
        "BAAI/bge-reranker-v2.5-gemma2-lightweight", "reranker", ("score",), None, "multilingual", 8192, 9242
    ),
    CatalogEntry("BAAI/BGE-VL-base", "image embedder", ("dense",), 512, "en", 77, 150),
    CatalogEntry("BAAI/BGE-VL-large", "image embedder", ("dense",), 768, "en", 77, 428),
)


def find(name: str) -> CatalogEntry:
    """The entry for a hub id or a bare name (``bge-m3``), case-insensitive; else an error
    naming close ones."""
    key = name.strip().lower()
    for e in CATALOG:
        if key in (e.hub_id.lower(), e.name.lower()):
            return e
    close = [e.hub_id for e in CATALOG if key and key.split("/")[-1] in e.hub_id.lower()]
    hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (bgekit models lists them)"
    raise InputError(f"{name!r} is not a known BGE model{hint}; any hub id or folder loads with --model")


def cached(hub_id: str) -> bool:
    """Whether the hub cache on this machine holds the model's config (nothing is fetched)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(hub_id, "config.json")
    return isinstance(found, str)


def download(name: str, revision: str | None = None) -> str:
    """Fetch a model into the hub cache (every file bgekit reads) and return its folder; a
    known name or any hub id. Offline or unknown to the hub: one clear error."""
    from bgekit.models.loading import resolve_model_dir

    hub_id = find(name).hub_id if "/" not in name else name
    try:
        return str(resolve_model_dir(hub_id, revision))
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"cannot download {hub_id}: {e}") from None
