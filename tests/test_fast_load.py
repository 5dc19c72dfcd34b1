"""What makes a load fast must not change a number: the encoder built straight from its
weights file, the cached tokenizer, and BM25 saved with the index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bm25s
import numpy as np
import pytest
import Stemmer
import torch
from safetensors.torch import load_file, save_file

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig
from bgekit.errors import ModelFormatError
from bgekit.index.storage import IndexFormatError
from bgekit.models import embedder as embedder_module
from bgekit.models import tokenizer as tokenizer_module
from bgekit.models.backbones import PackedEncoder
from bgekit.retrieval import Bm25
from bgekit.retrieval.corpus import Corpus

TEXTS = ["what is bge m3", "cats and dogs", "the quick brown fox jumps over the lazy dog " * 20, "x"]
FP32 = EngineConfig(device="cpu", dtype="float32", max_batch_tokens=512)


def dense(path: Path, engine: EngineConfig = FP32) -> np.ndarray:
    out = Embedder.from_pretrained(str(path), engine=engine).encode(TEXTS).dense
    assert out is not None
    return out


def no_transformers_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the transformers model was loaded")

    monkeypatch.setattr(embedder_module, "load_transformers_model", refuse)


@pytest.mark.parametrize("which", ["bert_m3", "xlmr_m3", "minilm"])
def test_encoder_from_the_weights_file_equals_transformers(
    which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = request.getfixturevalue(which)
    ref = dense(
        path, EngineConfig(device="cpu", dtype="float32", max_batch_tokens=512, backend="transformers")
    )
    with monkeypatch.context() as m:
        no_transformers_model(m)
        model = Embedder.from_pretrained(str(path), engine=FP32)
        assert isinstance(model._replicas[0][0].backbone, PackedEncoder)
        got = model.encode(TEXTS).dense
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_prefixed_keys_and_old_layer_norm_names_load_the_same(
    bert_m3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task model's ``bert.`` prefix and the old ``gamma`` / ``beta`` names are read as
    transformers reads them; a ``.bin`` file works like safetensors."""
    ref = dense(bert_m3)
    state = load_file(str(bert_m3 / "model.safetensors"))
    renamed = {}
    for key, value in state.items():
        if key.endswith("LayerNorm.weight"):
            key = key[: -len("weight")] + "gamma"
        elif key.endswith("LayerNorm.bias"):
            key = key[: -len("bias")] + "beta"
        renamed["bert." + key] = value
    for name in ("safetensors", "bin"):
        folder = tmp_path / name
        shutil.copytree(bert_m3, folder)
        (folder / "model.safetensors").unlink()
        if name == "safetensors":
            save_file(renamed, str(folder / "model.safetensors"))
        else:
            torch.save(renamed, folder / "pytorch_model.bin")
        with monkeypatch.context() as m:
            no_transformers_model(m)
            np.testing.assert_allclose(dense(folder), ref, atol=1e-6)


def test_an_incomplete_weights_file_is_refused_by_the_checked_load(
    bert_m3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(bert_m3, folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["encoder.layer.0.output.dense.bias"]
    save_file(state, str(folder / "model.safetensors"))
    calls = []
    real = embedder_module.load_transformers_model

    def counting(path: Path, *, cross_encoder: bool, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        calls.append(path)
        return real(path, cross_encoder=cross_encoder, dtype=dtype)

    monkeypatch.setattr(embedder_module, "load_transformers_model", counting)
    # handed to transformers, whose load report the checked load turns into an error
    with pytest.raises(
        ModelFormatError,
        match=r"model\.safetensors does not fit .*missing encoder\.layer\.0\.output\.dense\.bias$",
    ):
        Embedder.from_pretrained(str(folder), engine=FP32)
    assert calls == [folder]


def test_tokenizer_is_cached_and_the_cache_gives_the_same_ids(
    xlmr_m3: Path, bgekit_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Embedder.from_pretrained(str(xlmr_m3), engine=FP32).tokenizer
    cache = tokenizer_module.tokenizer_cache(xlmr_m3)
    assert cache is not None and cache.is_file() and cache.is_relative_to(bgekit_cache)

    def refuse(path: Path) -> None:
        raise AssertionError("transformers built the tokenizer again")

    with monkeypatch.context() as m:
        m.setattr(tokenizer_module, "_from_transformers", refuse)
        second = Embedder.from_pretrained(str(xlmr_m3), engine=FP32).tokenizer
    assert second.encode(TEXTS, 64) == first.encode(TEXTS, 64)
    assert (second.pad_id, second.special_ids, second.bos_id) == (
        first.pad_id,
        first.special_ids,
        first.bos_id,
    )

    cache.write_text('{"backend": "damaged')  # a damaged entry is rebuilt, not an error
    third = Embedder.from_pretrained(str(xlmr_m3), engine=FP32).tokenizer
    assert third.encode(TEXTS, 64) == first.encode(TEXTS, 64)
    assert json.loads(cache.read_text())["pad_id"] == first.pad_id


def test_tokenizer_cache_follows_the_files_and_can_be_off(
    bert_m3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(bert_m3, folder)
    before = tokenizer_module.tokenizer_cache(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["do_lower_case"] = not config.get("do_lower_case", True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_module.tokenizer_cache(folder) != before
    monkeypatch.setenv("BGEKIT_CACHE", "off")
    assert tokenizer_module.tokenizer_cache(folder) is None
    Embedder.from_pretrained(str(folder), engine=FP32)  # loads without a cache


DOCS = [
    "Vitamin D and fractures in older adults.",
    "Cats and dogs are common pets; cats sleep a lot.",
    "The stock market fell on Monday.",
    "Protein binding in cells and cells signalling.",
    "",
]


def test_bm25_scores_equal_bm25s_own() -> None:
    """An independent computation: bm25s's own scoring of the same tokens."""
    ours = Bm25(DOCS)
    stem = Stemmer.Stemmer("english").stemWords
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    ref.index(bm25s.tokenize(DOCS, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    for query in ("cats cats", "cells protein", "fractures Monday", "the", "unknownword"):
        terms = [
            t
            for t in bm25s.tokenize(
                [query], stopwords="en", stemmer=stem, return_ids=False, show_progress=False
            )[0]
            if t in ref.vocab_dict
        ]
        expected = ref.get_scores(terms) if terms else np.zeros(len(DOCS))
        np.testing.assert_array_equal(ours.scores(query), expected.astype(np.float32))
    hits = ours.search(["cats", "zzz"], 3)
    assert hits[0].indices.tolist() == [1] and len(hits[1].indices) == 0


def test_bm25_is_saved_with_the_index(
    bert_st_mean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Embedder.from_pretrained(str(bert_st_mean), engine=FP32)
    index = Index(model, IndexConfig(outputs=("dense",)))
    index.add([Document(str(i), t or "empty") for i, t in enumerate(DOCS)])
    queries = ["cats", "market fell", "vitamin"]
    before = index.search(queries, 3)
    index.save(tmp_path / "ix")

    def refuse(self: Bm25, *args: object, **kwargs: object) -> None:
        raise AssertionError("BM25 was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(Bm25, "__init__", refuse)
        loaded = Index.load(tmp_path / "ix", model)
        after = loaded.search(queries, 3)
        bm25_only = loaded.search(queries, 3, mode="bm25")
    assert [[(h.id, h.scores) for h in q] for q in after] == [[(h.id, h.scores) for h in q] for q in before]
    assert [h.id for h in bm25_only[0]] == ["1"]

    # an index saved before BM25 was stored still builds it on first use
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    manifest.pop("bm25")
    gen = tmp_path / "ix" / manifest["generation"]
    for name in ("bm25_data.npy", "bm25_indices.npy", "bm25_indptr.npy", "bm25_vocab.jsonl"):
        (gen / name).unlink()
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    old = Index.load(tmp_path / "ix", model)
    assert [[h.id for h in q] for q in old.search(queries, 3)] == [[h.id for h in q] for q in before]


def test_damaged_bm25_files_are_named(bert_st_mean: Path, tmp_path: Path) -> None:
    model = Embedder.from_pretrained(str(bert_st_mean), engine=FP32)
    index = Index(model, IndexConfig(outputs=("dense",)))
    index.add([Document(str(i), t or "empty") for i, t in enumerate(DOCS)])
    root = index.save(tmp_path / "ix")
    gen = root / json.loads((root / "manifest.json").read_text())["generation"]
    data = gen / "bm25_data.npy"
    data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match=r"bm25_data\.npy .*truncated"):
        Index.load(root, model)
    root = index.save(root)  # a new generation, undamaged
    gen = root / json.loads((root / "manifest.json").read_text())["generation"]
    vocab = gen / "bm25_vocab.jsonl"
    vocab.write_bytes(b"\n".join(vocab.read_bytes().splitlines()[:-1]) + b"\n")
    with pytest.raises(IndexFormatError, match=r"bm25_vocab\.jsonl holds"):
        Index.inspect(root)


def test_corpus_refuses_a_bm25_of_other_rows() -> None:
    with pytest.raises(ValueError, match="BM25 index holds 5 rows"):
        Corpus(dense=np.zeros((3, 2), np.float32), bm25=Bm25(DOCS))


@pytest.mark.parametrize("which", ["bert_m3", "xlmr_m3"])
def test_wrapped_token_ids_equal_the_encoded_text(which: str, request: pytest.FixtureRequest) -> None:
    tok = Embedder.from_pretrained(str(request.getfixturevalue(which)), engine=FP32).tokenizer
    for limit in (64, 6):  # 6: the long texts are cut
        assert tok.wrap_ids(tok.ids(TEXTS), limit) == tok.encode(TEXTS, limit)
