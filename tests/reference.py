"""Independent reference computations for tests: one text at a time, plain transformers + numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


class PlainEncoder:
    """Encodes each text alone (no batching, no padding) and applies the SPEC §2 formulas."""

    def __init__(self, path: Path):
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
        self.colbert_sd = self.sparse_sd = None
        if (path / "colbert_linear.pt").exists():
            self.colbert_sd = torch.load(path / "colbert_linear.pt", weights_only=True)
            self.sparse_sd = torch.load(path / "sparse_linear.pt", weights_only=True)
        self.specials = {
            i
            for i in (
                self.tok.cls_token_id,
                self.tok.sep_token_id,
                self.tok.pad_token_id,
                self.tok.unk_token_id,
            )
            if i is not None
        }

    def hidden(self, text: str, max_length: int) -> tuple[list[int], np.ndarray]:
        enc = self.tok(text, truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        return ids, self.hidden_ids(ids)

    def hidden_ids(self, ids: list[int]) -> np.ndarray:
        """Last hidden states of one input given as token ids (special tokens included)."""
        with torch.no_grad():
            h = self.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return h.double().numpy()

    def sparse_of(self, ids: list[int], h: np.ndarray) -> dict[int, float]:
        """Token id -> largest relu(linear(h)) over its occurrences, special tokens dropped."""
        w = np.maximum(
            h @ self.sparse_sd["weight"].double().numpy().T + self.sparse_sd["bias"].double().numpy(), 0
        )
        out: dict[int, float] = {}
        for tid, weight in zip(ids, w[:, 0], strict=True):
            if tid in self.specials or weight <= 0:
                continue
            out[tid] = max(out.get(tid, 0.0), float(weight))
        return out

    def colbert_of(self, h: np.ndarray) -> np.ndarray:
        """The multi-vector head on each row of ``h``, L2-normalised."""
        v = h @ self.colbert_sd["weight"].double().numpy().T + self.colbert_sd["bias"].double().numpy()
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def dense(self, text: str, max_length: int, pooling: str = "cls") -> np.ndarray:
        _, h = self.hidden(text, max_length)
        v = h[0] if pooling == "cls" else h.mean(axis=0)
        return v / np.linalg.norm(v)

    def sparse(self, text: str, max_length: int) -> dict[int, float]:
        ids, h = self.hidden(text, max_length)
        return self.sparse_of(ids, h)

    def multivector(self, text: str, max_length: int) -> np.ndarray:
        _, h = self.hidden(text, max_length)
        return self.colbert_of(h[1:])


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float(np.mean([max(float(qv @ dv) for dv in d) for qv in q]))


def lexical(q: dict[int, float], d: dict[int, float]) -> float:
    return sum(w * d[t] for t, w in q.items() if t in d)
