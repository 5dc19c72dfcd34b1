"""The HTTP server: OpenAI-compatible embeddings, BGE-M3's three outputs in one call,
reranking and search, with a token-budget request batcher (``bgekit serve``).

Needs the ``server`` extra (FastAPI, uvicorn, prometheus-client).
"""

from bgekit.server.app import create_app
from bgekit.server.batcher import Batcher, BatchStats
from bgekit.server.config import ServerConfig
from bgekit.server.state import ServerState

__all__ = ["BatchStats", "Batcher", "ServerConfig", "ServerState", "create_app"]
