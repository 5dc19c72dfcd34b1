from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder, EmbedderSettings, EngineConfig, InputError, MissingHeadError, ModelFormatError
from bgekit.models.registry import EN_INSTRUCTION
from tests.reference import PlainEncoder, lexical, maxsim

TEXTS = [
    "what is bge m3",
    "the quick brown fox jumps over the lazy dog the fox the fox",  # repeated tokens
    "dense sparse and multi vector retrieval from one forward pass " * 8,  # long: truncated
    "cats",
    "hybrid search mixes lexical and semantic scores",
    "the quick brown fox jumps over the lazy dog the fox the fox",  # duplicate text
]
ALL = ("dense", "sparse", "multivector")
EXACT = EngineConfig(device="cpu", dtype="float32")  # compared with independent fp32 forwards


@pytest.fixture(scope="module", params=["bert_m3", "xlmr_m3"])
def m3_case(request: pytest.FixtureRequest) -> tuple[Path, Embedder, PlainEncoder]:
    path = request.getfixturevalue(request.param)
    model = Embedder.from_pretrained(
        str(path),
        settings=EmbedderSettings(passage_max_length=40, query_max_length=20),
        engine=EngineConfig(device="cpu", max_batch_tokens=128, dtype="float32"),
    )
    return path, model, PlainEncoder(path)


def test_m3_outputs_match_independent_computation(m3_case: tuple[Path, Embedder, PlainEncoder]) -> None:
    _, model, ref = m3_case
    out = model.encode(TEXTS, outputs=ALL)
    assert out.outputs == ALL and len(out) == len(TEXTS)
    assert out.dense is not None and out.dense.dtype == np.float32
    assert out.sparse is not None and out.multivector is not None
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(out.dense[i], ref.dense(text, 40), atol=1e-5)
        expected = ref.sparse(text, 40)
        got = out.sparse[i].to_dict()
        assert got.keys() == expected.keys()
        # weights up to ~3 (the spread-out tiny model): fp32 summation order differs between
        # oneDNN and transformers by up to ~2e-5 there (seen once in CI at rtol 1e-5)
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-4, atol=1e-5)
        mv = ref.multivector(text, 40)
        assert out.multivector[i].shape == mv.shape
        np.testing.assert_allclose(out.multivector[i], mv, atol=1e-5)
    # the repeated word keeps one entry (its largest weight) and the long text is truncated
    assert len(out.sparse[1]) == len(set(out.sparse[1].indices.tolist()))
    assert out.multivector[2].shape[0] == 39
    np.testing.assert_array_equal(out.dense[1], out.dense[5])


def test_batch_size_does_not_change_vectors(m3_case: tuple[Path, Embedder, PlainEncoder]) -> None:
    path, _model, _ = m3_case
    one = Embedder.from_pretrained(
        str(path),
        settings=EmbedderSettings(passage_max_length=40),
        engine=EngineConfig(device="cpu", max_batch_size=1),
    )
    wide = Embedder.from_pretrained(
        str(path),
        settings=EmbedderSettings(passage_max_length=40),
        engine=EngineConfig(device="cpu", max_batch_size=64, max_batch_tokens=1 << 20),
    )
    a, b = one.encode(TEXTS * 3, outputs=ALL), wide.encode(TEXTS * 3, outputs=ALL)
    assert a.dense is not None and b.dense is not None
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)
    assert a.sparse is not None and b.sparse is not None and a.multivector and b.multivector
    for sa, sb in zip(a.sparse, b.sparse, strict=True):
        np.testing.assert_array_equal(sa.indices, sb.indices)
        np.testing.assert_allclose(sa.values, sb.values, atol=1e-5)
    for ma, mb in zip(a.multivector, b.multivector, strict=True):
        np.testing.assert_allclose(ma, mb, atol=1e-5)


def test_compute_score_matches_formulas(m3_case: tuple[Path, Embedder, PlainEncoder]) -> None:
    _, model, ref = m3_case
    pairs = [(TEXTS[0], TEXTS[4]), (TEXTS[1], TEXTS[5]), (TEXTS[3], TEXTS[2]), (TEXTS[0], TEXTS[1])]
    weights = (0.4, 0.2, 0.4)
    s = model.compute_score(pairs, weights=weights)
    assert s.sparse is not None and s.multivector is not None and s.all is not None
    for i, (q, p) in enumerate(pairs):
        d = float(ref.dense(q, 20) @ ref.dense(p, 40))
        lex = lexical(ref.sparse(q, 20), ref.sparse(p, 40))
        mv = maxsim(ref.multivector(q, 20), ref.multivector(p, 40))
        assert s.dense[i] == pytest.approx(d, abs=1e-5)
        assert s.sparse[i] == pytest.approx(lex, rel=1e-4, abs=1e-5)
        assert s.multivector[i] == pytest.approx(mv, abs=1e-5)
        assert s.all[i] == pytest.approx((0.4 * d + 0.2 * lex + 0.4 * mv) / 1.0, rel=1e-4, abs=1e-5)
        assert s.sparse_dense is not None
        assert s.sparse_dense[i] == pytest.approx((0.4 * d + 0.2 * lex) / 0.6, rel=1e-4, abs=1e-5)
    keys = s.to_dict().keys()
    assert set(keys) == {"dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"}


def test_query_instruction_and_overrides(bge_named: Path) -> None:
    model = Embedder.from_pretrained(str(bge_named), engine=EXACT)
    assert model.info.known_as == "bge-small-en-v1.5"
    assert model.info.pooling == "cls" and model.info.query_instruction == EN_INSTRUCTION
    ref = PlainEncoder(bge_named)
    q = model.encode_queries(["cats and dogs"])
    d = model.encode_corpus(["cats and dogs"])
    assert q.dense is not None and d.dense is not None
    np.testing.assert_allclose(q.dense[0], ref.dense(EN_INSTRUCTION + "cats and dogs", 128), atol=1e-5)
    np.testing.assert_allclose(d.dense[0], ref.dense("cats and dogs", 128), atol=1e-5)
    own = model.encode_queries(["cats and dogs"], instruction="Find: ")
    assert own.dense is not None
    np.testing.assert_allclose(own.dense[0], ref.dense("Find: cats and dogs", 128), atol=1e-5)
    plain = Embedder.from_pretrained(
        str(bge_named), settings=EmbedderSettings(query_instruction="", pooling="mean"), engine=EXACT
    )
    assert plain.info.query_instruction == "" and plain.info.pooling == "mean"
    p = plain.encode_queries(["cats and dogs"])
    assert p.dense is not None
    np.testing.assert_allclose(p.dense[0], ref.dense("cats and dogs", 128, pooling="mean"), atol=1e-5)


def test_sentence_transformers_metadata_is_read(bert_st_mean: Path) -> None:
    model = Embedder.from_pretrained(str(bert_st_mean), engine=EXACT)
    assert (model.info.pooling, model.info.normalize, model.info.passage_max_length) == ("mean", True, 24)
    ref = PlainEncoder(bert_st_mean)
    long_text = "the quick brown fox jumps over the lazy dog " * 5
    out = model.encode([long_text, "cats"])
    assert out.dense is not None
    np.testing.assert_allclose(out.dense[0], ref.dense(long_text, 24, pooling="mean"), atol=1e-5)
    np.testing.assert_allclose(out.dense[1], ref.dense("cats", 24, pooling="mean"), atol=1e-5)


def test_missing_heads_are_named(bert_st_mean: Path) -> None:
    model = Embedder.from_pretrained(str(bert_st_mean))
    assert model.info.heads == ("dense",)
    with pytest.raises(MissingHeadError, match=r"no sparse head .*sparse_linear\.pt"):
        model.encode(["cats"], outputs=("dense", "sparse"))
    with pytest.raises(MissingHeadError, match="no multivector head"):
        model.encode(["cats"], outputs=("multivector",))
    scores = model.compute_score([("cats", "dogs")])
    assert scores.sparse is None and scores.all is None and scores.dense.shape == (1,)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["ok", None], r"texts\[1\] is NoneType"),
        (["ok", "fine", 3], r"texts\[2\] is int"),
        ("a single string", "not a single string"),
    ],
)
def test_bad_texts_name_the_position(bert_m3: Path, texts: object, message: str) -> None:
    model = Embedder.from_pretrained(str(bert_m3))
    with pytest.raises(InputError, match=message):
        model.encode(texts)  # type: ignore[arg-type]


def test_bad_options(bert_m3: Path) -> None:
    model = Embedder.from_pretrained(str(bert_m3))
    with pytest.raises(InputError, match="unknown output 'colbert'"):
        model.encode(["x"], outputs=("colbert",))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="kind must be"):
        model.encode(["x"], kind="passage")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="queries only"):
        model.encode(["x"], instruction="Find: ")
    with pytest.raises(InputError, match=r"pairs\[1\] must be a \(query, passage\) pair"):
        model.compute_score([("a", "b"), ("c",)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        Embedder.from_pretrained(str(bert_m3), poolling="mean")  # type: ignore[call-arg]
    with pytest.raises(ModelFormatError, match="pooling 'max'"):
        Embedder.from_pretrained(str(bert_m3), settings=EmbedderSettings(pooling="max"))
    with pytest.raises(ModelFormatError, match="outside"):
        Embedder.from_pretrained(str(bert_m3), settings=EmbedderSettings(passage_max_length=4096))


def test_empty_input_gives_empty_output(bert_m3: Path) -> None:
    model = Embedder.from_pretrained(str(bert_m3))
    out = model.encode([], outputs=ALL)
    assert out.dense is not None and out.dense.shape == (0, 32)
    assert out.sparse == [] and out.multivector == []
    assert model.compute_score([]).dense.shape == (0,)


def test_cross_encoder_folder_is_refused(bert_reranker: Path) -> None:
    with pytest.raises(ModelFormatError, match="load it with Reranker"):
        Embedder.from_pretrained(str(bert_reranker))


def test_sparse_tokens_are_readable(bert_m3: Path) -> None:
    model = Embedder.from_pretrained(str(bert_m3))
    text = "the quick brown fox jumps over the lazy dog while cats and dogs are popular pets"
    out = model.encode([text], outputs=("sparse",))
    assert out.sparse is not None and len(out.sparse[0]) > 0
    words = model.sparse_tokens(out.sparse[0])
    assert len(words) == len(out.sparse[0])
    assert all(w.removeprefix("##") in text for w in words)


def test_truncation_is_reported(bert_st_mean: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = Embedder.from_pretrained(str(bert_st_mean))
    with caplog.at_level("INFO", logger="bgekit"):
        model.encode(["cats", "the quick brown fox jumps over the lazy dog " * 5])
    assert "1 of 2 texts exceed 24 tokens and were truncated" in caplog.text


def test_empty_texts_encode_to_the_special_tokens_as_the_reference(
    m3_case: tuple[Path, Embedder, PlainEncoder],
) -> None:
    _, model, ref = m3_case
    out = model.encode(["", "   ", "cats"], outputs=ALL)
    assert out.dense is not None and out.sparse is not None and out.multivector is not None
    for i, text in enumerate(["", "   "]):
        np.testing.assert_allclose(out.dense[i], ref.dense(text, 40), atol=1e-5)
        got, expected = out.sparse[i].to_dict(), ref.sparse(text, 40)
        assert got.keys() == expected.keys()  # "" has no token but the specials, which carry no weight
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.multivector[i], ref.multivector(text, 40), atol=1e-5)
    assert out.sparse[0].to_dict() == {} and out.multivector[0].shape[0] == 1  # "": the end token alone
    scores = model.compute_score([("", "cats"), ("cats", " ")])
    assert np.isfinite(scores.dense).all() and scores.all is not None
