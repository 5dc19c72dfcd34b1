"""An MTEB model: lets ``mteb.evaluate`` run any task on a bgekit :class:`Embedder`.

Queries (``prompt_type`` query) get the model's query instruction, or a per-task one from
``task_instructions`` (keyed by MTEB task name); everything else is encoded as documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bgekit.models import Embedder


class MtebEncoder:
    """Implements mteb's encoder protocol (``encode``, ``similarity``, ``similarity_pairwise``)."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        name: str | None = None,
        revision: str | None = None,
        task_instructions: Mapping[str, str] | None = None,
    ):
        self.embedder = embedder
        self.name = name or f"bgekit/{embedder.info.name.rstrip('/').rsplit('/', 1)[-1]}"
        self.revision = revision or "local"
        self.task_instructions = dict(task_instructions or {})

    @property
    def mteb_model_meta(self) -> Any:
        from mteb.models import ModelMeta

        info = self.embedder.info
        return ModelMeta.create_empty(
            {
                "name": self.name,
                "revision": self.revision,
                "embed_dim": info.hidden_size,
                "max_tokens": info.passage_max_length,
                "similarity_fn_name": "cosine",
                "framework": ["PyTorch"],
                "use_instructions": bool(info.query_instruction or self.task_instructions),
            }
        )

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **encode_kwargs: Any,  # mteb's batch_size / progress settings: bgekit batches by tokens
    ) -> np.ndarray:
        """Dense vectors for every text in mteb's batches, in order."""
        texts = [t for batch in inputs for t in batch["text"]]
        if getattr(prompt_type, "value", prompt_type) == "query":
            instruction = self.task_instructions.get(getattr(task_metadata, "name", ""))
            enc = self.embedder.encode(texts, kind="query", instruction=instruction)
        else:
            enc = self.embedder.encode(texts, kind="document")
        assert enc.dense is not None
        return enc.dense

    @staticmethod
    def _unit(x: Any) -> np.ndarray:
        a = np.asarray(x, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity of every pair, ``(n, m)``."""
        return self._unit(embeddings1) @ self._unit(embeddings2).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity of aligned rows, ``(n,)``."""
        return np.einsum("ij,ij->i", self._unit(embeddings1), self._unit(embeddings2))
