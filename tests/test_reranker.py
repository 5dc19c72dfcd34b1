from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bgekit import EngineConfig, InputError, ModelFormatError, Reranker

PAIRS = [
    ("what is bge m3", "dense sparse and multi vector retrieval from one forward pass"),
    ("cats", "cats and dogs are popular pets in many homes " * 6),  # passage cut to fit
    ("the quick brown fox jumps over the lazy dog " * 4, "the fox"),  # query cut to 3/4
    ("hybrid search", "hybrid search mixes lexical and semantic scores"),
]


def reference_logit(path: Path, query: str, passage: str, max_length: int) -> float:
    """One pair alone, ids assembled by hand as the reference cross-encoder does."""
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), attn_implementation="eager").eval()
    q = tok(query, add_special_tokens=False)["input_ids"][: max_length * 3 // 4]
    bert = model.config.model_type == "bert"
    n_special = 3 if bert else 4
    p = tok(passage, add_special_tokens=False)["input_ids"][: max_length - len(q) - n_special]
    if bert:
        ids = [tok.cls_token_id, *q, tok.sep_token_id, *p, tok.sep_token_id]
        types = [0] * (len(q) + 2) + [1] * (len(p) + 1)
        kwargs = {"token_type_ids": torch.tensor([types])}
    else:
        ids = [tok.cls_token_id, *q, tok.sep_token_id, tok.sep_token_id, *p, tok.sep_token_id]
        kwargs = {}
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids]), **kwargs).logits[0, 0])


@pytest.mark.parametrize("backend", ["auto", "transformers"])
@pytest.mark.parametrize("which", ["bert_reranker", "xlmr_reranker"])
def test_logits_match_reference(which: str, backend: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(which)
    engine = EngineConfig(device="cpu", backend=backend, dtype="float32")  # type: ignore[arg-type]
    rr = Reranker.from_pretrained(str(path), max_length=32, engine=engine)
    assert rr.info.query_max_length == 24
    got = rr.score(PAIRS)
    assert got.dtype == np.float32 and got.shape == (len(PAIRS),)
    expected = [reference_logit(path, q, p, 32) for q, p in PAIRS]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        rr.score(PAIRS, normalize=True), 1 / (1 + np.exp(-np.array(expected))), atol=1e-6
    )


def test_rerank_orders_and_cuts(bert_reranker: Path) -> None:
    rr = Reranker.from_pretrained(str(bert_reranker), max_length=32)
    passages = [p for _, p in PAIRS]
    scores = rr.score([("what is bge m3", p) for p in passages])
    ranked = rr.rerank("what is bge m3", passages, top_k=3)
    assert [r.index for r in ranked] == np.argsort(-scores, kind="stable")[:3].tolist()
    assert [r.score for r in ranked] == pytest.approx(sorted(scores.tolist(), reverse=True)[:3])
    assert len(rr.rerank("what is bge m3", passages)) == len(passages)


def test_reranker_errors(bert_reranker: Path, bert_m3: Path) -> None:
    rr = Reranker.from_pretrained(str(bert_reranker), max_length=32)
    assert rr.score([]).shape == (0,)
    with pytest.raises(InputError, match=r"pairs\[0\]\[1\] \(passage\) is NoneType"):
        rr.score([("q", None)])  # type: ignore[list-item]
    with pytest.raises(InputError, match="top_k"):
        rr.rerank("q", ["p"], top_k=0)
    with pytest.raises(ModelFormatError, match="load it with Embedder"):
        Reranker.from_pretrained(str(bert_m3))
    with pytest.raises(ModelFormatError, match="max_length 4096"):
        Reranker.from_pretrained(str(bert_reranker), max_length=4096)


@pytest.mark.parametrize("which", ["bert_reranker", "xlmr_reranker"])
def test_empty_texts_score_as_the_reference(which: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(which)
    engine = EngineConfig(device="cpu", dtype="float32")
    rr = Reranker.from_pretrained(str(path), max_length=32, engine=engine)
    pairs = [("", ""), ("what is bge m3", "  "), ("", "cats and dogs")]
    expected = [reference_logit(path, q, p, 32) for q, p in pairs]
    np.testing.assert_allclose(rr.score(pairs), expected, rtol=1e-4, atol=1e-5)
    assert [r.index for r in rr.rerank("", ["", "cats"])] in ([0, 1], [1, 0])
