from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Document, Embedder, Index, IndexConfig, InputError, Pipeline, Reranker
from bgekit.cli.main import main
from bgekit.index import IndexFormatError, IndexWriteError, chunk_documents, read_source, storage
from bgekit.retrieval import HybridConfig
from bgekit.scoring import maxsim_scores, sparse_scores, weighted_fusion
from tests.test_eval import DOCS

ALL = ("dense", "sparse", "multivector")


def documents() -> list[Document]:
    return [Document(d, text, title, {"n": i}) for i, (d, (title, text)) in enumerate(DOCS.items())]


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3))


@pytest.fixture
def index(m3: Embedder) -> Index:
    idx = Index(m3, IndexConfig(outputs=ALL))
    report = idx.add(documents())
    assert (report.documents, report.chunks, report.skipped) == (len(DOCS), len(DOCS), 0)
    return idx


def test_every_mode_matches_full_score_matrices(index: Index, m3: Embedder) -> None:
    texts = [f"{t} {x}".strip() for t, x in DOCS.values()]
    queries = ["cats and dogs at home", "stock market news", "fast brown fox"]
    q = m3.encode(queries, kind="query", outputs=ALL)
    d = m3.encode(texts, outputs=ALL)
    assert (
        q.dense is not None
        and d.dense is not None
        and q.sparse
        and d.sparse
        and q.multivector
        and d.multivector
    )
    full = {
        "dense": q.dense @ d.dense.T,
        "sparse": sparse_scores(q.sparse, d.sparse),
        "multivector": maxsim_scores(q.multivector, d.multivector),
    }
    full["hybrid"] = weighted_fusion(list(full.values()), (0.4, 0.2, 0.4))
    ids = list(DOCS)
    for mode, scores in full.items():
        got = index.search(queries, 4, mode=mode, hybrid=HybridConfig(candidates=None))  # type: ignore[arg-type]
        for row, g in zip(scores, got, strict=True):
            keep = [j for j in np.argsort(-row, kind="stable") if mode != "sparse" or row[j] > 0][:4]
            assert [h.id for h in g] == [ids[j] for j in keep], mode  # no shared token: no sparse hit
            np.testing.assert_allclose([h.score for h in g], row[keep], rtol=1e-5, atol=1e-6)
    hit = index.search(["cats"], 1, mode="hybrid")[0][0]
    assert set(hit.scores) == {"dense", "sparse", "multivector"} and hit.metadata == {
        "n": list(DOCS).index(hit.id)
    }


def test_exact_document_text_is_found_first_in_every_mode(index: Index) -> None:
    for did, (title, text) in DOCS.items():
        for mode in ("dense", "multivector", "hybrid"):
            assert index.search([f"{title} {text}".strip()], 1, mode=mode)[0][0].id == did  # type: ignore[arg-type]


def test_long_documents_are_chunked_with_overlap(m3: Embedder) -> None:
    words = [f"w{i}" for i in range(60)]
    long_doc = Document("long", " ".join(words))
    chunks = chunk_documents([long_doc], m3.tokenizer, chunk_tokens=20, overlap=5)
    spans = m3.tokenizer.spans([long_doc.text])[0]
    assert len(chunks) > 3 and [c.no for c in chunks] == list(range(len(chunks)))
    assert chunks[0].text.startswith("w0") and chunks[-1].text.endswith("w59")
    for a, b in itertools.pairwise(chunks):
        assert long_doc.text.index(b.text) < long_doc.text.index(a.text) + len(a.text)  # they overlap
    assert all(len(m3.tokenizer.spans([c.text])[0]) <= 20 for c in chunks) and len(spans) > 60
    idx = Index(m3, IndexConfig(outputs=("dense",), chunk_tokens=20, chunk_overlap=5, split="tokens"))
    idx.add([long_doc, Document("short", "cats and dogs")])
    assert idx.num_chunks == len(chunks) + 1 and len(idx) == 2
    hits = idx.search([chunks[2].text], 2, mode="dense")[0]
    assert [h.id for h in hits] == ["long", "short"]  # one hit per document
    assert hits[0].chunk == 2 and hits[0].text == chunks[2].text


def test_delete_and_add_equal_a_fresh_build(index: Index, m3: Embedder) -> None:
    assert index.delete(["d2", "d4"]) == 2
    assert len(index) == 4 and all(h.id not in ("d2", "d4") for h in index.search(["stock market"], 6)[0])
    index.add([Document("d9", "stock market news every monday", "Markets")])
    fresh = Index(m3, IndexConfig(outputs=ALL))
    fresh.add(
        [d for d in documents() if d.id not in ("d2", "d4")]
        + [Document("d9", "stock market news every monday", "Markets")]
    )
    for mode in ("dense", "sparse", "multivector", "hybrid"):
        a = index.search(["stock market", "cats"], 5, mode=mode)  # type: ignore[arg-type]
        b = fresh.search(["stock market", "cats"], 5, mode=mode)  # type: ignore[arg-type]
        assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
        np.testing.assert_allclose([h.score for h in a[0]], [h.score for h in b[0]], rtol=1e-5)
    with pytest.raises(InputError, match="not in the index: 'nope'"):
        index.delete(["nope"])


def test_save_load_round_trip_memory_maps(index: Index, tmp_path: Path, m3: Embedder) -> None:
    root = index.save(tmp_path / "idx")
    loaded = Index.load(root, m3)
    assert isinstance(loaded._dense.data, np.memmap) and isinstance(loaded._mv, np.memmap)
    for mode in ("dense", "sparse", "multivector", "hybrid", "bm25"):
        a = index.search(["cats and dogs", "fox"], 3, mode=mode)  # type: ignore[arg-type]
        b = loaded.search(["cats and dogs", "fox"], 3, mode=mode)  # type: ignore[arg-type]
        assert [[(h.id, round(h.score, 5), h.text) for h in r] for r in a] == [
            [(h.id, round(h.score, 5), h.text) for h in r] for r in b
        ]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["counts"] == {"documents": 6, "chunks": 6} and manifest["outputs"] == list(ALL)
    assert (
        manifest["dims"] == {"dense": 32, "multivector": 16} and manifest["format"] == storage.FORMAT_VERSION
    )
    loaded.add([Document("d10", "a new document about pets")])
    loaded.save()
    assert Index.load(root, m3).search(["a new document about pets"], 1, mode="dense")[0][0].id == "d10"
    assert sorted(p.name for p in root.iterdir()) == [".bgekit-write.lock", "gen-000002", "manifest.json"]


def test_interrupted_save_keeps_the_previous_index(
    index: Index, tmp_path: Path, m3: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = index.save(tmp_path / "idx")
    before = [h.id for h in Index.load(root, m3).search(["cats"], 6, mode="dense")[0]]
    index.delete(["d1"])
    real_save = np.save
    calls = {"n": 0}

    def failing_save(f: Any, arr: np.ndarray, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(b"half an array")
            raise OSError("61824 requested and 35808 written")  # what numpy says on a full disk
        real_save(f, arr, **kw)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(IndexWriteError, match=r"^no space left on device while writing .*gen-000002\.tmp/"):
        index.save(root)
    # removed at once, not at the next save; the index is the one before
    assert sorted(p.name for p in root.iterdir()) == [".bgekit-write.lock", "gen-000001", "manifest.json"]
    monkeypatch.setattr(np, "save", real_save)
    again = Index.load(root, m3)
    assert len(again) == 6 and [h.id for h in again.search(["cats"], 6, mode="dense")[0]] == before
    index.save(root)
    assert len(Index.load(root, m3)) == 5


def test_wrong_model_or_format_is_refused(index: Index, tmp_path: Path, bert_st_mean: Path) -> None:
    root = index.save(tmp_path / "idx")
    with pytest.raises(InputError, match="was built with"):
        Index.load(root, Embedder.from_pretrained(str(bert_st_mean)))
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(manifest | {"format": 99}))
    with pytest.raises(IndexFormatError, match="format 99"):
        Index.load(root)
    with pytest.raises(IndexFormatError, match="no such folder"):
        Index.load(tmp_path / "missing")
    with pytest.raises(IndexFormatError, match="not a bgekit index"):
        Index.load(tmp_path)


def test_bad_input(index: Index, m3: Embedder, bert_st_mean: Path) -> None:
    with pytest.raises(InputError, match=r"queries\[0\] is NoneType"):
        index.search([None], 3)  # type: ignore[list-item]
    with pytest.raises(InputError, match="k must be at least 1"):
        index.search(["cats"], 0)
    # documents with no text are skipped and counted; the rest are added
    report = index.add([Document("x", "  "), Document("z", ""), Document("w", "whales swim")])
    assert (report.documents, report.skipped) == (1, 2) and "x" not in index._doc_pos
    index.delete(["w"])
    with pytest.raises(InputError, match="'d1' is already in the index"):
        index.add([Document("d1", "again")])
    with pytest.raises(InputError, match="'y' is given twice"):
        index.add([Document("y", "one"), Document("y", "two")])
    assert len(index) == 6
    with pytest.raises(InputError, match="cannot give sparse"):
        Index(Embedder.from_pretrained(str(bert_st_mean)), IndexConfig(outputs=("dense", "sparse")))
    dense_only = Index(m3, IndexConfig(outputs=("dense",)))
    dense_only.add(documents())
    with pytest.raises(InputError, match="holds no sparse vectors"):
        dense_only.search(["cats"], 3, mode="sparse")
    assert dense_only.search(["cats and dogs"], 1, mode="hybrid")[0][0].scores.keys() == {"dense", "bm25"}


def test_pipeline_reranks(index: Index, m3: Embedder, bert_reranker: Path) -> None:
    rr = Reranker.from_pretrained(str(bert_reranker))
    hits = Pipeline(m3, index, rr, retrieve=4).search(["cats and dogs"], k=3)[0]
    first = index.search(["cats and dogs"], 4)[0]
    expected = rr.score([("cats and dogs", f"{h.title} {h.text}".strip()) for h in first])
    order = np.argsort(-expected, kind="stable")[:3]
    assert [h.id for h in hits] == [first[i].id for i in order]
    assert all({"retrieval", "rerank"} <= h.scores.keys() for h in hits)


def test_read_source(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first note")
    (folder / "sub" / "b.md").write_text("# second\nnote")
    (folder / "skip.bin").write_bytes(b"\0")
    docs = read_source(folder)
    assert [(d.id, d.title) for d in docs] == [("a.txt", "a"), ("sub/b.md", "b")]
    jl = tmp_path / "docs.jsonl"
    jl.write_text('{"id": "1", "text": "x", "title": "T", "metadata": {"k": 1}}\n{"_id": 2, "text": "y"}\n')
    assert read_source(jl) == [Document("1", "x", "T", {"k": 1}), Document("2", "y")]
    jl.write_text('{"id": "1", "text": "x"}\n{"id": "1", "text": "y"}\n')
    with pytest.raises(InputError, match=r"docs\.jsonl:2: document id '1' was already given on line 1$"):
        read_source(jl)
    jl.write_text('{"id": "1", "text": ""}\n{"id": "2"}\n')
    with pytest.raises(InputError, match=r"docs\.jsonl:2: expected"):
        read_source(jl)
    jl.write_text('{"id": "1", "text": ""}\n')
    assert read_source(jl) == [Document("1", "")]  # read as it is; Index.add skips it
    with pytest.raises(InputError, match="no such file or folder"):
        read_source(tmp_path / "nope")


def test_cli_build_add_info_search(tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in documents()[:4])
    )
    root = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "build",
                str(src),
                "--model",
                str(bert_m3),
                "--index",
                str(root),
                "--outputs",
                "dense,sparse,multivector",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["index", "build", str(src), "--model", str(bert_m3), "--index", str(root)]) == 2
    assert "already holds an index" in capsys.readouterr().err
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "d6", "text": DOCS["d6"][1]}) + "\n")
    assert main(["index", "add", str(more), "--index", str(root)]) == 0
    assert main(["index", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["documents"] == 5 and info["outputs"] == list(ALL) and info["disk_bytes"]
    assert main(["search", str(root), DOCS["d6"][1], "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hits"][0]["id"] == "d6" and len(out["hits"]) == 2
    assert main(["search", str(root), DOCS["d1"][1], "--mode", "sparse"]) == 0
    assert "1. [" in capsys.readouterr().out
    assert main(["search", str(root), "  "]) == 2
    assert main(["search", str(root), "cats", "-k", "0"]) == 2
    assert main(["search", str(tmp_path / "none"), "cats"]) == 2
    err = capsys.readouterr().err
    assert "query is empty" in err and "-k must be at least 1" in err and "no such folder" in err
