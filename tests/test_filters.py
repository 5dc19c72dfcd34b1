"""Metadata filters: the condition language, the search core's filtered ranking (equal to
filtering the exact ranking, in every mode), the CLI's --where, /search's filter, folder
metadata, and the vector-database adapters' translations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, Index, IndexConfig, InputError
from bgekit.cli.main import main
from bgekit.index import read_source
from bgekit.retrieval import Condition, Filter, HybridConfig, parse_condition
from tests.test_eval import DOCS

ALL = ("dense", "sparse", "multivector")
QUERIES = ["cats and dogs at home", "stock market news", "fast brown fox", "search scores"]
EXACT = HybridConfig(candidates=None)


def documents() -> list[Document]:
    out = []
    for i, (doc_id, (title, text)) in enumerate(DOCS.items()):
        meta = {
            "n": i,
            "lang": "en" if i % 2 else "zh",
            "date": f"2024-0{i + 1}-15",
            "path": f"{'docs' if i < 3 else 'notes'}/{doc_id}.md",
            "score": i / 4,
        }
        if i == 0:
            meta.pop("lang")  # a document lacking the field
        out.append(Document(doc_id, text, title, meta))
    return out


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3))


@pytest.fixture(scope="module")
def index(m3: Embedder) -> Index:
    idx = Index(m3, IndexConfig(outputs=ALL, chunk_tokens=8, chunk_overlap=2))  # several chunks each
    idx.add(documents())
    assert idx.num_chunks > len(DOCS)
    return idx


def test_conditions_parse_and_match() -> None:
    assert parse_condition("year>=2020") == Condition("year", "ge", 2020)
    assert parse_condition("ext=.md") == Condition("ext", "eq", ".md")
    assert parse_condition("lang in en,zh") == Condition("lang", "in", ("en", "zh"))
    assert parse_condition("path^=docs/") == Condition("path", "prefix", "docs/")
    assert parse_condition("draft!=true") == Condition("draft", "ne", True)
    assert parse_condition("a=b>c") == Condition("a", "eq", "b>c")
    assert parse_condition("score<0.5") == Condition("score", "lt", 0.5)
    meta = {"year": 2021, "date": "2024-03-15", "when": "2024-03-15T10:00:00Z", "tag": "x", "draft": False}
    yes = [
        "year>=2020",
        "year=2021",
        "year in 2019,2021",
        "date<2024-06-01",
        "date>=2024-03-15T00:00:00+00:00",  # a date and a date-time compare as times
        "when>2024-03-15",
        "when<2024-03-15T11:00:00+01:00",  # 10:00 UTC is before 10:00 UTC (11:00 at +01:00)? no:
        "tag^=x",
        "draft!=true",
        "id^=doc-",
        "title=Notes",
    ]
    # "when<2024-03-15T11:00:00+01:00" is 10:00 UTC: not before 10:00 UTC
    assert not Filter.parse("when<2024-03-15T11:00:00+01:00").matches(meta)
    assert Filter.parse("when<=2024-03-15T11:00:00+01:00").matches(meta)
    yes.remove("when<2024-03-15T11:00:00+01:00")
    for text in yes:
        assert Filter.parse(text).matches(meta, "doc-1", "Notes"), text
    no = ["year>2021", "year in 2019,2020", "date>2024-06-01", "tag^=y", "draft=true", "missing!=1", "tag>5"]
    for text in no:
        assert not Filter.parse(text).matches(meta, "doc-1", "Notes"), text
    assert Filter.parse(["year>=2020", "tag=x"]).matches(meta) and not Filter.parse(
        ["year>=2020", "tag=y"]
    ).matches(meta)
    as_json = Filter.parse({"year": {"$gte": 2020, "$lt": 2022}, "tag": "x", "date": {"$in": ["2024-03-15"]}})
    assert as_json.matches(meta) and len(as_json.conditions) == 4
    for bad, message in [
        ("", "empty"),
        ("year", "cannot read the filter"),
        ("lang in ", "cannot read"),
        (123, "not int"),
    ]:
        with pytest.raises(InputError, match=message):
            Filter.parse(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown operator '\\$regex'"):
        Filter.parse({"tag": {"$regex": "x"}})
    with pytest.raises(InputError, match="has no order"):
        Filter.parse({"tag": {"$gt": True}})
    with pytest.raises(InputError, match=r"\$in takes a list"):
        Filter.parse({"tag": {"$in": "x"}})


@pytest.mark.parametrize("mode", ["dense", "sparse", "multivector", "bm25", "hybrid"])
@pytest.mark.parametrize("where", ["n>=2", "lang=en", "path^=docs/", "date<2024-04-01", "lang in en,zh"])
def test_filtered_search_equals_filtering_the_exact_ranking(index: Index, mode: str, where: str) -> None:
    f = Filter.parse(where)
    passing = {d.id for d in documents() if f.matches(d.metadata, d.id, d.title)}
    k = 3
    filtered = index.search(QUERIES, k, mode=mode, hybrid=EXACT, where=where)  # type: ignore[arg-type]
    full = index.search(QUERIES, len(DOCS), mode=mode, hybrid=EXACT)  # type: ignore[arg-type]
    for got, every in zip(filtered, full, strict=True):
        want = [h for h in every if h.id in passing][:k]
        if mode in ("sparse", "bm25"):  # lexical scorers leave out documents sharing no term
            want = [h for h in want if h.score > 0]
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-6, atol=1e-7)
        assert all(f.matches(h.metadata, h.id, h.title) for h in got)


def test_filters_with_candidates_hnsw_binary_and_nothing_passing(m3: Embedder) -> None:
    docs = documents()
    for config in (
        IndexConfig(outputs=ALL, dense_index="hnsw"),
        IndexConfig(outputs=ALL, dense_dtype="binary"),
    ):
        idx = Index(m3, config)
        idx.add(docs)
        for mode in ("dense", "hybrid"):
            got = idx.search(QUERIES, 2, mode=mode, where="n<3")  # type: ignore[arg-type]
            assert all(h.metadata["n"] < 3 for hits in got for h in hits) and all(len(h) == 2 for h in got)
    idx = Index(m3, IndexConfig(outputs=ALL))
    idx.add(docs)
    assert idx.search(QUERIES, 3, where="n>100") == [[], [], [], []]
    # hybrid with few candidates: still only passing documents, as many as asked for
    got = idx.search(QUERIES, 2, hybrid=HybridConfig(candidates=1), where="lang=en")
    assert all(len(hits) == 2 and all(h.metadata.get("lang") == "en" for h in hits) for hits in got)


def test_folder_sources_record_path_time_and_extension(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A\n\ntext")
    (tmp_path / "sub" / "b.txt").write_text("more text")
    docs = {d.id: d for d in read_source(tmp_path)}
    assert docs["a.md"].metadata["ext"] == ".md" and docs["sub/b.txt"].metadata["ext"] == ".txt"
    assert docs["sub/b.txt"].metadata["path"] == str(tmp_path / "sub" / "b.txt")
    assert Filter.parse("mtime>2000-01-01").matches(docs["a.md"].metadata)
    assert Filter.parse("id^=sub/").matches(docs["sub/b.txt"].metadata, "sub/b.txt")


def test_cli_where(tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "".join(json.dumps({"id": d.id, "text": d.text, "metadata": d.metadata}) + "\n" for d in documents())
    )
    root = tmp_path / "idx"
    assert main(["index", "build", str(source), "--index", str(root), "--model", str(bert_m3)]) == 0
    capsys.readouterr()
    assert (
        main(["search", str(root), "cats", "--where", "n>=3", "--where", "lang=en", "--json", "-k", "6"]) == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and {h["id"] for h in hits} <= {"d4", "d6"}
    assert main(["search", str(root), "cats", "--where", "n>>3"]) != 0
    err = capsys.readouterr().err
    assert "n>>3" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_http_search_filter(m3: Embedder, index: Index) -> None:
    pytest.importorskip("fastapi")
    from bgekit.server import ServerConfig, create_app
    from tests.test_server import run, serving

    app = create_app(ServerConfig(), embedder=m3, index=index)

    async def go() -> list:
        async with serving(app) as client:
            return [
                await client.post("/search", json={"query": "cats", "k": 6, "mode": "dense", "filter": f})
                for f in (
                    {"n": {"$gte": 2}, "path": {"$prefix": "notes/"}},
                    ["n>=2", "path^=notes/"],
                    {"n": {"$re": 1}},
                )
            ]

    as_json, as_text, bad = run(go)
    want = index.search(["cats"], 6, mode="dense", where={"n": {"$gte": 2}, "path": {"$prefix": "notes/"}})[0]
    assert (
        [h["id"] for h in as_json.json()["hits"]]
        == [h.id for h in want]
        == [h["id"] for h in as_text.json()["hits"]]
    )
    assert {h.id for h in want} == {"d4", "d5", "d6"}
    assert bad.status_code == 422 and "unknown operator" in bad.text


@pytest.fixture
def qdrant(m3: Embedder, tmp_path: Path) -> Iterator:
    from tests.test_adapters import opened

    with opened(m3, "qdrant", tmp_path, documents()) as ix:
        yield ix


@pytest.fixture
def milvus(m3: Embedder, tmp_path: Path) -> Iterator:
    from tests.test_adapters import opened

    with opened(m3, "milvus", tmp_path, documents()) as ix:
        yield ix


def _ids(hits: list[list]) -> list[list[str]]:
    return [[h.id for h in q] for q in hits]


def test_qdrant_filters_match_the_embedded_index(qdrant, m3: Embedder) -> None:  # type: ignore[no-untyped-def]
    local = Index(m3, IndexConfig(outputs=ALL))
    local.add(documents())
    for where in ("n>=2", "lang=en", "lang in en,zh", "date<2024-04-01T00:00:00Z", "score=0.25", "lang!=en"):
        for mode in ("dense", "sparse", "multivector"):
            assert _ids(qdrant.search(QUERIES, 3, mode=mode, where=where)) == _ids(
                local.search(QUERIES, 3, mode=mode, hybrid=EXACT, where=where)
            ), (where, mode)
    with pytest.raises(InputError, match="no prefix match"):
        qdrant.search(["cats"], 3, mode="dense", where="path^=docs/")


def test_milvus_filters_match_the_embedded_index(milvus, m3: Embedder) -> None:  # type: ignore[no-untyped-def]
    local = Index(m3, IndexConfig(outputs=("dense", "sparse")))
    local.add(documents())
    for where in ("n>=2", "lang=en", "lang in en,zh", "path^=docs/", "date<2024-04-01", "lang!=en", "id=d3"):
        for mode in ("dense", "sparse"):
            assert _ids(milvus.search(QUERIES, 3, mode=mode, where=where)) == _ids(
                local.search(QUERIES, 3, mode=mode, where=where)
            ), (where, mode)
    weighted = HybridConfig(weights=(0.4, 0.2, 0.0), candidates=None)
    assert _ids(milvus.search(QUERIES, 3, hybrid=weighted, where="n<4")) == _ids(
        local.search(QUERIES, 3, hybrid=weighted, where="n<4")
    )
