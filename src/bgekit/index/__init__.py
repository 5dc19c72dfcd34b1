"""The embedded index: documents in, hybrid search out, saved safely on disk."""

from bgekit.index.documents import AddReport, Chunk, Document, chunk_documents, read_source
from bgekit.index.storage import IndexFormatError
from bgekit.index.store import Index, IndexConfig, IndexInfo
from bgekit.types import SEARCH_MODES

__all__ = [
    "SEARCH_MODES",
    "AddReport",
    "Chunk",
    "Document",
    "Index",
    "IndexConfig",
    "IndexFormatError",
    "IndexInfo",
    "chunk_documents",
    "read_source",
]
