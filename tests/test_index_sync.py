"""Incremental sync: unchanged documents are not encoded again, changed ones are replaced,
removed ones deleted — in the library, across a save and load, from the CLI over a folder,
and with another writer at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig
from bgekit.cli.main import main

OUTPUTS = ("dense", "sparse", "multivector")


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    # fp32: a sync encodes other batches than a fresh build, and bf16 rounding follows the batch
    return Embedder.from_pretrained(str(bert_m3), engine=EngineConfig(dtype="float32", progress=False))


def _docs(**texts: str) -> list[Document]:
    return [Document(k, v, metadata={"v": 1}) for k, v in texts.items()]


def _same_ranking(a: Index, b: Index, mode: str) -> None:
    queries = ["cats on the sofa", "market news", "the dog"]
    for x, y in zip(a.search(queries, 10, mode=mode), b.search(queries, 10, mode=mode), strict=True):  # type: ignore[arg-type]
        assert [h.id for h in x] == [h.id for h in y], mode
        np.testing.assert_allclose([h.score for h in x], [h.score for h in y], rtol=1e-5, atol=1e-6)


def test_sync_encodes_only_what_changed_and_equals_a_fresh_build(
    m3: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = IndexConfig(outputs=OUTPUTS, chunk_tokens=16, chunk_overlap=4)
    index = Index(m3, cfg)
    index.add(_docs(a="Cats sleep on the sofa all day.", b="Markets fell.", c="A dog barks at night."))
    assert index.search(["cats"], 3, where="v=2") == [[]]  # a filter's row mask, cached until a change
    encoded: list[str] = []
    real = m3.encode_tokens

    def counting(seqs, **kw):  # type: ignore[no-untyped-def]
        encoded.extend(str(len(s)) for s in seqs)
        return real(seqs, **kw)

    monkeypatch.setattr(m3, "encode_tokens", counting)
    new_b = "The stock market fell sharply on Monday after the news, and again on Tuesday morning."
    source = [
        Document("a", "Cats sleep on the sofa all day.", metadata={"v": 2}),  # metadata only
        Document("b", new_b, metadata={"v": 1}),  # changed
        Document("d", "Dogs and cats together.", metadata={"v": 1}),  # new
        Document("e", "   ", metadata={"v": 1}),  # empty: skipped
    ]  # c is gone
    report = index.sync(source)
    assert (report.added, report.updated, report.unchanged, report.removed, report.skipped) == (1, 1, 1, 1, 1)
    encoded_by_sync = len(encoded)
    fresh = Index(m3, cfg)
    fresh_report = fresh.add([source[0], source[1], source[2]])
    # only b's and d's chunks were encoded; a was not
    assert report.chunks == fresh_report.chunks - 1 and encoded_by_sync == report.chunks
    assert sorted(index.ids()) == ["a", "b", "d"]
    for mode in ("dense", "sparse", "multivector", "hybrid"):
        _same_ranking(index, fresh, mode)
    assert {h.id: h.metadata for h in index.search(["cats"], 3, mode="dense")[0]}["a"] == {"v": 2}
    assert [h.id for h in index.search(["cats"], 3, where="v=2")[0]] == ["a"]  # the new metadata

    # a document that became empty is removed, not left at its old text
    report = index.sync([source[0], Document("b", ""), source[2]])
    assert (report.added, report.updated, report.unchanged, report.removed) == (0, 0, 2, 1)
    assert sorted(index.ids()) == ["a", "d"]


def test_hashes_survive_a_save_and_nothing_is_encoded_when_nothing_changed(
    m3: Embedder, tmp_path: Path
) -> None:
    index = Index(m3)
    docs = _docs(a="one text here", b="another text", c="a third text")
    index.add(docs)
    root = index.save(tmp_path / "idx")
    again = Index.load(root, m3)
    before = np.asarray(again.corpus().dense.data).copy()  # type: ignore[union-attr]
    report = again.sync(docs)
    assert (report.added, report.updated, report.unchanged, report.removed, report.chunks) == (0, 0, 3, 0, 0)
    assert np.array_equal(np.asarray(again.corpus().dense.data), before)  # type: ignore[union-attr]


def test_cli_sync_of_a_folder(tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in {
        "a.md": "# Cats\n\nThey sleep.",
        "b.txt": "Markets fell.",
        "c.txt": "Dogs bark.",
    }.items():
        (folder / name).write_text(text)
    root = tmp_path / "idx"
    assert main(["index", "build", str(folder), "--index", str(root), "--model", str(bert_m3)]) == 0
    capsys.readouterr()
    assert main(["index", "sync", str(folder), "--index", str(root)]) == 0
    assert "0 added, 0 updated, 3 unchanged, 0 removed (0 chunks encoded)" in capsys.readouterr().out
    (folder / "b.txt").write_text("Markets rose.")
    (folder / "c.txt").unlink()
    (folder / "d.txt").write_text("Birds sing.")
    assert main(["index", "sync", str(folder), "--index", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 added, 1 updated, 1 unchanged, 1 removed (2 chunks encoded)" in out and "now 3 documents" in out
    index = Index.load(root)
    assert dict(zip(index.ids(), index.chunk_texts(), strict=True))["b.txt"].endswith("Markets rose.")
    # no index there: said before the source is read
    assert main(["index", "sync", str(tmp_path / "missing-source"), "--index", str(tmp_path / "none")]) != 0
    assert "no index at" in capsys.readouterr().err


def test_sync_and_add_at_once_end_in_one_of_their_orders(tmp_path: Path, bert_m3: Path) -> None:
    """Two writers at once: the result is one of the two serial orders, never a mix
    (sync then add keeps the added documents; add then sync removes them: the source is what
    the index must hold)."""
    root = tmp_path / "idx"
    base = tmp_path / "base.jsonl"
    base.write_text("".join(f'{{"id": "b{i}", "text": "base document {i}"}}\n' for i in range(8)))
    assert main(["index", "build", str(base), "--index", str(root), "--model", str(bert_m3)]) == 0
    source = tmp_path / "source.jsonl"
    source.write_text(
        "".join(f'{{"id": "b{i}", "text": "changed document {i}"}}\n' for i in range(4))
        + "".join(f'{{"id": "b{i}", "text": "base document {i}"}}\n' for i in range(4, 6))
    )
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(f'{{"id": "x{i}", "text": "extra document {i}"}}\n' for i in range(3)))
    cli = [sys.executable, "-m", "bgekit.cli.main", "index"]
    procs = [
        subprocess.Popen([*cli, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in (["sync", str(source), "--index", str(root)], ["add", str(extra), "--index", str(root)])
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    index = Index.load(root)
    synced = {f"b{i}" for i in range(6)}
    assert set(index.ids()) in (synced, synced | {"x0", "x1", "x2"})
    stored = dict(zip(index.ids(), index.chunk_texts(), strict=True))
    assert all(stored[f"b{i}"] == f"changed document {i}" for i in range(4))
    assert all(stored[f"b{i}"] == f"base document {i}" for i in range(4, 6))
    sync_out = outs[0][0]
    assert "4 updated, 2 unchanged" in sync_out
    assert ("5 removed" in sync_out) == (set(index.ids()) == synced)  # it removed the extras too
