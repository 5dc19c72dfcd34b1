"""Shards of index rows (issue 23, item 6): ``encode --ray --as-index`` writes the chunks an
index holds (by the function ``Index.add`` calls), and an index built from them holds the
chunks a direct build makes and returns its hits — ids equal, scores within 1e-5 — in every
mode; shards of other chunk settings are refused with one line naming the setting."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, InputError
from bgekit.cli.main import main
from bgekit.distributed import RayEncodeConfig, read_shards
from bgekit.distributed.load import load_shards
from bgekit.distributed.ray_encode import ShardEncoder, finish_folder, prepare_folder, shard_header
from bgekit.index.rows import ChunkSettings, encoded_chunk_rows
from bgekit.retrieval import HybridConfig
from bgekit.types import Encoded

HAS_RAY = importlib.util.find_spec("ray") is not None
if HAS_RAY:  # the Ray test reuses test_distributed's local cluster
    from tests import test_distributed as td

    cluster = td.cluster

ROOT = Path(__file__).resolve().parent.parent
ALL = ("dense", "sparse", "multivector")
MODES = ("dense", "sparse", "multivector", "hybrid")
FP32 = EngineConfig(dtype="float32", progress=False)
N_DOCS = 16


def _scifact() -> tuple[list[Document], list[str], int]:
    """The first SciFact abstracts with their titles (long: many chunks each), one record with
    no text and one over the size limit (both skipped); the queries; the size limit."""
    docs = []
    with (ROOT / "data/scifact/corpus.jsonl").open(encoding="utf-8") as f:
        for n, line in enumerate(itertools.islice(f, N_DOCS)):
            r = json.loads(line)
            docs.append(Document(r["_id"], r["text"], r["title"], {"n": n}))
    limit = max(len(d.text) for d in docs) + 1
    docs += [Document("empty", "  ", "no text"), Document("huge", "cells " * limit, "too long")]
    with (ROOT / "data/scifact/queries.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in itertools.islice(f, 6)]
    return docs, queries, limit


def _config(limit: int, chunking: str = "independent", **kw: Any) -> IndexConfig:
    settings: dict[str, Any] = {"chunk_tokens": 48, "chunk_overlap": 12, "chunking": chunking}
    settings |= {"max_document_chars": limit, "oversize": "skip"}
    return IndexConfig(outputs=ALL, **(settings | kw))


def _encode_rows(model: Path, docs: list[Document], root: Path, config: IndexConfig) -> dict[str, int]:
    """Shards of index rows written by the Ray actor class, called here batch by batch (5
    records a batch: a shard's documents are whole); returns the summed summaries."""
    ray_config = RayEncodeConfig(model=str(model), outputs=ALL, engine=FP32, index_config=config)
    header = shard_header(ray_config)
    prepare_folder(root, header)
    actor = ShardEncoder(ray_config, header, str(root), np.zeros(0, np.uint64))
    sums: dict[str, int] = {}
    for start in range(0, len(docs), 5):
        part = docs[start : start + 5]
        out = actor(
            {
                "_id": np.array([d.id for d in part], dtype=object),
                "title": np.array([d.title for d in part], dtype=object),
                "text": np.array([d.text for d in part], dtype=object),
                "metadata": np.array([d.metadata for d in part], dtype=object),
            }
        )
        for key in ("rows", "chunks", "empty", "oversized"):
            sums[key] = sums.get(key, 0) + int(out[key][0])
    finish_folder(root, header)
    return sums


def _rows(index: Index) -> list[tuple[str, int, str, str, dict[str, Any]]]:
    """The index's chunk rows: (document id, chunk number, chunk text, title, metadata)."""
    docs = [index._docs[int(d)] for d in index._chunk_doc]
    return sorted(
        (d.id, int(no), text, d.title, d.metadata)
        for d, no, text in zip(docs, index._chunk_no, index._chunk_text, strict=True)
    )


def _assert_same_hits(got: Index, want: Index, queries: list[str]) -> None:
    for mode in MODES:
        a = got.search(queries, 5, mode=mode, hybrid=HybridConfig(candidates=None))  # type: ignore[arg-type]
        b = want.search(queries, 5, mode=mode, hybrid=HybridConfig(candidates=None))  # type: ignore[arg-type]
        for ra, rb in zip(a, b, strict=True):
            # (not the chunk shown: a document whose long title fills the model's window has
            # chunks of one encoding, tied, and which of them shows follows the row order)
            assert [h.id for h in ra] == [h.id for h in rb], mode
            np.testing.assert_allclose([h.score for h in ra], [h.score for h in rb], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("chunking", "split"),
    [("independent", "tokens"), ("late", "tokens"), ("independent", "text"), ("late", "text")],
)
def test_index_rows_from_shards_are_a_direct_builds_chunks_and_hits(
    bert_m3: Path, tmp_path: Path, chunking: str, split: str
) -> None:
    m3 = Embedder.from_pretrained(str(bert_m3), engine=FP32)
    docs, queries, limit = _scifact()
    config = _config(limit, chunking, split=split)
    sums = _encode_rows(bert_m3, docs, tmp_path / "shards", config)
    direct = Index(m3, config)
    want = direct.add(docs)
    assert (want.skipped, want.oversized) == (1, 1) and want.chunks > 5 * N_DOCS  # long texts: chunked
    assert sums == {"rows": N_DOCS, "chunks": want.chunks, "empty": 1, "oversized": 1}

    shards = read_shards(tmp_path / "shards")
    assert shards.header.chunking == ChunkSettings.of(config) and shards.chunks is not None
    assert len(shards.ids) == want.chunks
    # chunk boundaries follow the settings: windows of one size (48 tokens, less where a long
    # title takes room), 12 tokens shared (half a window under 12 tokens + 12), the first from
    # the text's first token, the last to its last
    text_of = {d.id: d.text for d in docs}
    small = 0
    for doc_id, rows in (
        []
        if split == "text"
        else itertools.groupby(zip(shards.ids, shards.chunks, strict=True), key=lambda r: r[0])
    ):
        placed = [c for _, c in rows]
        assert [no for no, _, _ in placed] == list(range(len(placed))) and len(placed) > 1
        n_tokens = len(m3.tokenizer.spans([text_of[doc_id]])[0])
        assert placed[0][1] == 0 and placed[-1][2] == n_tokens
        sizes = {b - a for _, a, b in placed[:-1]}
        assert len(sizes) == 1 and 8 <= min(sizes) <= 48
        size = sizes.pop()
        small += size < 48
        assert {prev[2] - nxt[1] for prev, nxt in itertools.pairwise(placed)} == {
            12 if size > 12 else size // 2
        }
    if split == "tokens":  # late chunking: titles are not in the chunks' budgets
        assert small == (0 if chunking == "late" else 4)

    built = Index(m3, config)
    report = load_shards(built, tmp_path / "shards")
    assert (report.documents, report.chunks) == (want.documents, want.chunks)
    assert _rows(built) == _rows(direct)  # ids, chunk numbers, texts, titles, metadata
    _assert_same_hits(built, direct, queries)
    # saved and loaded, it is still the direct build
    built.save(tmp_path / "ix")
    _assert_same_hits(Index.load(tmp_path / "ix", m3), direct, queries)


def test_index_rows_are_encoded_with_the_index_task(bert_m3: Path, tmp_path: Path) -> None:
    """A model with a task table (the tiny BERT under llm-embedder's name): the shards' chunks
    carry the task's passage instruction, as a direct build's do."""
    model = tmp_path / "llm-embedder"
    shutil.copytree(bert_m3, model)
    emb = Embedder.from_pretrained(str(model), engine=FP32)
    docs, queries, limit = _scifact()
    config = _config(limit, task="icl")
    _encode_rows(model, docs[:8], tmp_path / "shards", config)
    direct, other = Index(emb, config), Index(emb, _config(limit, task="qa"))
    direct.add(docs[:8])
    other.add(docs[:8])
    built = Index(emb, config)
    load_shards(built, tmp_path / "shards")
    assert _rows(built) == _rows(direct)
    _assert_same_hits(built, direct, queries)
    with pytest.raises(AssertionError):  # another task's instruction: other vectors
        _assert_same_hits(built, other, queries)


def test_shards_of_other_chunk_settings_are_refused_in_one_line(
    bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m3 = Embedder.from_pretrained(str(bert_m3), engine=FP32)
    docs, _, limit = _scifact()
    root = tmp_path / "shards"
    _encode_rows(bert_m3, docs[:6], root, _config(limit))
    with pytest.raises(
        InputError, match=r"was chunked with chunk_tokens=48, not the index's chunk_tokens=64"
    ):
        load_shards(Index(m3, _config(limit, chunk_tokens=64)), root)
    with pytest.raises(
        InputError, match=r"was chunked with oversize='skip', not the index's oversize='error'"
    ):
        load_shards(Index(m3, _config(limit, oversize="error")), root)

    def build(*extra: str) -> tuple[int, str]:
        argv = ["index", "build", "--from-encoded", str(root), "--index", str(tmp_path / "ix")]
        code = main([*argv, "--model", str(bert_m3), "--overwrite", *extra])
        return code, capsys.readouterr().err

    code, err = build("--chunk-overlap", "8")
    assert code == 2 and err.count("\n") == 1
    assert "was chunked with chunk_overlap=12, not the index's chunk_overlap=8" in err
    assert not (tmp_path / "ix").exists()
    code, err = build("--task", "qa")  # documents are encoded with a task's passage instruction
    assert code == 2 and "was chunked with task=None, not the index's task='qa'" in err
    # the settings the shards record, given or not, build the index; the index keeps them
    assert build("--chunk-tokens", "48")[0] == 0
    assert Index.inspect(tmp_path / "ix").config["chunk_tokens"] == 48
    assert build()[0] == 0
    saved = Index.inspect(tmp_path / "ix").config
    assert ChunkSettings.of(IndexConfig(**{**saved, "outputs": tuple(saved["outputs"])})) == ChunkSettings.of(
        _config(limit)
    )
    # a run of other settings (or of records) may not add to the folder
    other = shard_header(
        RayEncodeConfig(
            model=str(bert_m3), outputs=ALL, engine=FP32, index_config=_config(limit, chunk_tokens=64)
        )
    )
    with pytest.raises(InputError, match=r"holds shards made with another chunk_tokens 48 \(this run: 64\)"):
        prepare_folder(root, other)
    records = shard_header(RayEncodeConfig(model=str(bert_m3), outputs=ALL, engine=FP32))
    with pytest.raises(InputError, match="another layout: one row per chunk \\(this run: one per record\\)"):
        prepare_folder(root, records)


def test_record_shards_and_bad_index_row_options_are_one_line_errors(
    bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_distributed import _local_shards

    docs, _, _ = _scifact()
    _local_shards(bert_m3, docs[:4], tmp_path / "records")  # one row per record (no --as-index)
    argv = ["index", "build", "--from-encoded", str(tmp_path / "records"), "--index", str(tmp_path / "ix")]
    assert main([*argv, "--model", str(bert_m3), "--chunk-tokens", "48"]) == 2
    err = capsys.readouterr().err
    assert "holds one row per record (encoded without --as-index), so --chunk-tokens cannot apply" in err
    assert main([*argv, "--model", str(bert_m3)]) == 0  # without chunk options: one chunk each, as before
    assert "(one chunk each: encoded without --as-index)" in capsys.readouterr().out
    encode = ["encode", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]
    assert main([*encode, "--as-index"]) == 2
    assert "they need --ray" in capsys.readouterr().err
    assert main([*encode, "--ray", "--chunk-tokens", "48"]) == 2
    assert "--chunk-tokens chunks documents for an index: give it with --as-index" in capsys.readouterr().err
    with pytest.raises(InputError, match="keep_text on"):
        RayEncodeConfig(model=str(bert_m3), keep_text=False, index_config=IndexConfig())
    # chunk rows handed to an index are checked: numbered 0, 1, ... per document
    rng = np.random.default_rng(0)
    enc = Encoded(dense=rng.standard_normal((2, 4)).astype(np.float32))
    from bgekit.index import Chunk

    with pytest.raises(InputError, match=r"document 'a' has chunks 1, 0; they must be 0, 1, \.\.\. in order"):
        encoded_chunk_rows([Document("a", "")], [Chunk(0, 1, "x"), Chunk(0, 0, "y")], enc, ("dense",))
    with pytest.raises(InputError, match="2 chunks but 1 encoded rows"):
        encoded_chunk_rows(
            [Document("a", "")], [Chunk(0, 0, "x"), Chunk(0, 1, "y")], enc.select([0]), ("dense",)
        )


@pytest.mark.skipif(not HAS_RAY, reason="needs ray")
def test_cli_encode_ray_as_index_then_build_is_the_direct_index(
    cluster: str, bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs, queries, limit = _scifact()
    src = tmp_path / "corpus.jsonl"
    records = [
        {"_id": d.id, "title": d.title, "text": d.text, "metadata": {"n": i}} for i, d in enumerate(docs)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    chunk_opts = ["--chunk-tokens", "48", "--chunk-overlap", "12", "--max-document-chars", str(limit)]
    common = ["--model", str(bert_m3), "--dtype", "float32", *chunk_opts, "--oversize", "skip"]
    out = tmp_path / "shards"
    argv = ["encode", "--ray", "--as-index", "--input", str(src), "--output", str(out), "--shard-rows", "6"]
    assert main([*argv, "--outputs", ",".join(ALL), *common]) == 0
    said = capsys.readouterr().out
    assert "(1 with no text, 1 over the size limit skipped)" in said
    assert f"holds {N_DOCS} records as " in said
    build = ["index", "build", "--from-encoded", str(out), "--index", str(tmp_path / "ix")]
    assert main([*build, "--model", str(bert_m3), "--dtype", "float32"]) == 0
    built = Index.load(tmp_path / "ix", Embedder.from_pretrained(str(bert_m3), engine=FP32))

    direct = Index(Embedder.from_pretrained(str(bert_m3), engine=FP32), _config(limit))
    from bgekit.index import read_source

    report = direct.add(read_source(src))  # what `bgekit index build corpus.jsonl` indexes
    assert f"holds {N_DOCS} records as {report.chunks} chunks" in said
    assert built.num_chunks == report.chunks and sorted(built.ids()) == sorted(direct.ids())
    assert _rows(built) == _rows(direct)
    _assert_same_hits(built, direct, queries)
