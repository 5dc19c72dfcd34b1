"""The same add / delete / search interface over real vector databases (Milvus, Qdrant)."""

from bgekit.index.adapters.base import VectorDBIndex
from bgekit.index.adapters.milvus import MilvusBackend
from bgekit.index.adapters.qdrant import QdrantBackend

__all__ = ["MilvusBackend", "QdrantBackend", "VectorDBIndex"]
