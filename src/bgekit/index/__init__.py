"""The embedded index: documents in, hybrid search out, saved safely on disk."""

from bgekit.index.build import BuildReport, build_index
from bgekit.index.chunking import Chunk, chunk_documents
from bgekit.index.documents import AddReport, Document, SyncReport
from bgekit.index.loaders import SourceOptions, read_source
from bgekit.index.lock import IndexBusyError, IndexConflictError
from bgekit.index.storage import IndexFormatError, IndexWriteError
from bgekit.index.store import Index, IndexConfig, IndexInfo
from bgekit.types import SEARCH_MODES

__all__ = [
    "SEARCH_MODES",
    "AddReport",
    "BuildReport",
    "Chunk",
    "Document",
    "Index",
    "IndexBusyError",
    "IndexConfig",
    "IndexConflictError",
    "IndexFormatError",
    "IndexInfo",
    "IndexWriteError",
    "SourceOptions",
    "SyncReport",
    "build_index",
    "chunk_documents",
    "read_source",
]
