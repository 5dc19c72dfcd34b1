"""Models fine-tuned by bgekit load in sentence-transformers and give bgekit's numbers
(packaged all-MiniLM-L6-v2, a few training steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

st = pytest.importorskip("sentence_transformers")

from bgekit import Embedder, EngineConfig, Reranker  # noqa: E402
from bgekit.train import (  # noqa: E402
    EmbedderTrainConfig,
    RerankerTrainConfig,
    TrainExample,
    train_embedder,
    train_reranker,
)
from tests.real_models import minilm_cross_encoder  # noqa: E402

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)
TEXTS = ["Vitamin D and bone fractures", "Cats sleep most of the day.", "the stock market fell sharply"]
EXAMPLES = [
    TrainExample(
        "vitamin d fractures",
        ("Vitamin D reduces fractures in older adults.",),
        ("Cats purr.", "Stocks fell."),
    ),
    TrainExample(
        "cat sleep", ("Cats sleep sixteen hours a day.",), ("Vitamin D is made in skin.", "Markets rose.")
    ),
    TrainExample(
        "market crash", ("The stock market fell on Monday.",), ("Cats chase mice.", "Bones need calcium.")
    ),
]


def test_trained_embedder_loads_in_sentence_transformers(minilm: Path, tmp_path: Path) -> None:
    cfg = EmbedderTrainConfig(batch_size=3, group_size=3, max_steps=2, learning_rate=1e-4, progress=False)
    out = train_embedder(str(minilm), EXAMPLES, tmp_path / "emb", cfg).output
    ours = Embedder.from_pretrained(str(out), engine=FP32).encode(TEXTS).dense
    before = Embedder.from_pretrained(str(minilm), engine=FP32).encode(TEXTS).dense
    assert np.abs(ours - before).max() > 1e-4  # the steps changed the model  # type: ignore[operator]
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # type: ignore[arg-type]


def test_trained_reranker_loads_in_sentence_transformers(minilm: Path, tmp_path: Path) -> None:
    start = minilm_cross_encoder(minilm, tmp_path / "ce")
    cfg = RerankerTrainConfig(batch_size=3, group_size=3, max_steps=2, max_length=64, progress=False)
    out = train_reranker(str(start), EXAMPLES, tmp_path / "rr", cfg).output
    pairs = [(e.query, e.pos[0]) for e in EXAMPLES] + [(e.query, e.neg[0]) for e in EXAMPLES]
    ours = Reranker.from_pretrained(str(out), max_length=64, engine=FP32).score(pairs)
    ce = st.CrossEncoder(str(out), device="cpu", max_length=64)
    theirs = ce.predict(pairs, activation_fn=torch.nn.Identity())  # logits, as Reranker.score gives
    np.testing.assert_allclose(ours, np.asarray(theirs).reshape(-1), atol=1e-5)
