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


# -- long passages as windows ------------------------------------------------------------------


def _window_logits(path: Path, query: str, passage: str, max_length: int, overlap: int) -> list[float]:
    """Each window of the passage paired with the query, assembled by hand: windows of what
    fits beside the query, starting every (fit - overlap) tokens, the last ending at the end."""
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), attn_implementation="eager").eval()
    bert = model.config.model_type == "bert"
    q = tok(query, add_special_tokens=False)["input_ids"]
    p = tok(passage, add_special_tokens=False)["input_ids"]
    fit = max_length - len(q) - (3 if bert else 4)
    assert len(p) > fit
    out, start = [], 0
    while True:
        w = p[start : start + fit]
        if bert:
            ids = [tok.cls_token_id, *q, tok.sep_token_id, *w, tok.sep_token_id]
            kwargs = {"token_type_ids": torch.tensor([[0] * (len(q) + 2) + [1] * (len(w) + 1)])}
        else:
            ids = [tok.cls_token_id, *q, tok.sep_token_id, tok.sep_token_id, *w, tok.sep_token_id]
            kwargs = {}
        with torch.no_grad():
            out.append(float(model(input_ids=torch.tensor([ids]), **kwargs).logits[0, 0]))
        if start + fit >= len(p):
            return out
        start += fit - overlap


@pytest.mark.parametrize("which", ["bert_reranker", "xlmr_reranker"])
def test_long_passages_score_as_the_best_or_mean_window(which: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(which)
    query, long = PAIRS[1][0], PAIRS[1][1]
    windows = _window_logits(path, query, long, 24, 3)
    assert len(windows) >= 3
    exact = EngineConfig(device="cpu", dtype="float32")
    best = Reranker.from_pretrained(
        str(path), max_length=24, engine=exact, long_passage="max", passage_overlap=3
    )
    mean = Reranker.from_pretrained(
        str(path), max_length=24, engine=exact, long_passage="mean", passage_overlap=3
    )
    cut = Reranker.from_pretrained(str(path), max_length=24, engine=exact)
    pairs = [(query, long), ("cats", "the fox"), ("fox", "cats and dogs")]
    plan = best.prepare(pairs)
    assert plan.windowed == 1 and len(plan.seqs) == len(windows) + 2 and plan.owner.tolist()[-2:] == [1, 2]
    got = best.score(pairs)
    assert got[0] == pytest.approx(max(windows), abs=1e-4)
    assert mean.score(pairs)[0] == pytest.approx(float(np.mean(windows)), abs=1e-4)
    assert cut.score(pairs)[0] == pytest.approx(windows[0], abs=1e-4)  # truncate: the first window
    # a pair that fits is scored as before (bit for bit in the same batch), and the sigmoid
    # comes after the windows combine
    np.testing.assert_allclose(got[1:], cut.score(pairs)[1:], atol=1e-5)
    np.testing.assert_array_equal(best.score(pairs[1:]), cut.score(pairs[1:]))
    assert best.score(pairs, normalize=True)[0] == pytest.approx(1 / (1 + np.exp(-max(windows))), abs=1e-5)
    ranked = best.rerank(query, [long, "cats"])
    scores = best.score([(query, long), (query, "cats")])
    assert [r.index for r in ranked] == np.argsort(-scores, kind="stable").tolist()
    assert ranked[[r.index for r in ranked].index(0)].score == pytest.approx(max(windows), abs=1e-4)


@pytest.mark.parametrize("which", ["bert_reranker", "xlmr_reranker"])
def test_pairs_from_ids_equal_tokenised_pairs(which: str, request: pytest.FixtureRequest) -> None:
    rr = Reranker.from_pretrained(str(request.getfixturevalue(which)), max_length=64)
    tok = rr.tokenizer
    for q, p in (PAIRS[0], PAIRS[3]):
        (want,) = tok.encode_pairs([q], [p], 64, 48)
        got = tok.wrap_pair_ids(tok.ids([q])[0], tok.ids([p])[0])
        assert list(got.ids) == list(want.ids)
        assert (got.type_ids is None) == (want.type_ids is None)
        if want.type_ids is not None:
            assert list(got.type_ids or []) == list(want.type_ids)


def test_long_passage_errors(bert_reranker: Path) -> None:
    with pytest.raises(InputError, match="long_passage must be one of truncate, max, mean"):
        Reranker.from_pretrained(str(bert_reranker), long_passage="all")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="passage_overlap must be at least 0"):
        Reranker.from_pretrained(str(bert_reranker), long_passage="max", passage_overlap=-1)
