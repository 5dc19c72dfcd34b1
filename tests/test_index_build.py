"""Resumable builds: an interrupted build keeps its checkpoints, and the same build run again
encodes only what is missing and ends equal to an uninterrupted build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, InputError
from bgekit.cli.main import main
from bgekit.index import build, build_index

DOCS = [Document(f"d{i}", f"document number {i} talks about topic {i % 3}", f"T{i}") for i in range(9)]


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    # fp32: a resumed build encodes other batches than a whole one (exact parity pins fp32)
    return Embedder.from_pretrained(str(bert_m3), engine=EngineConfig(dtype="float32", progress=False))


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> list[int]:
    """Index.add raises KeyboardInterrupt (Ctrl-C) on its ``calls + 1``-th call."""
    real = Index.add
    seen: list[int] = []

    def add(self, documents, *, update=False):  # type: ignore[no-untyped-def]
        if len(seen) == calls:
            raise KeyboardInterrupt
        seen.append(len(documents))
        return real(self, documents, update=update)

    monkeypatch.setattr(Index, "add", add)
    return seen


def _same(a: Index, b: Index) -> None:
    assert a.ids() == b.ids() and a.chunk_texts() == b.chunk_texts()
    assert a._dense is not None and b._dense is not None
    np.testing.assert_allclose(np.asarray(a._dense.data), np.asarray(b._dense.data), atol=1e-6)


def test_an_interrupted_build_resumes_and_equals_a_whole_one(
    m3: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(build, "BATCH_DOCS", 2)
    monkeypatch.setattr(build, "PROGRESS_SECONDS", 0.0)
    root = tmp_path / "idx"
    config = IndexConfig(outputs=("dense", "sparse"))
    seen = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        build_index(root, DOCS, m3, config, checkpoint_seconds=0)
    assert seen == [2, 2]
    partial = Index.load(root, m3)
    assert partial.building and partial.ids() == ["d0", "d1", "d2", "d3"]
    assert Index.inspect(root).building
    monkeypatch.undo()
    monkeypatch.setattr(build, "BATCH_DOCS", 2)
    encoded: list[int] = []
    real = Index.add

    def counting(self, documents, *, update=False):  # type: ignore[no-untyped-def]
        encoded.append(len(documents))
        return real(self, documents, update=update)

    monkeypatch.setattr(Index, "add", counting)
    monkeypatch.setattr(build, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level("INFO", logger="bgekit"):
        index, report = build_index(root, DOCS, m3, config, checkpoint_seconds=0)
    assert (report.resumed, report.documents) == (4, 5) and sum(encoded) == 5  # only the rest encoded
    assert "resuming an interrupted build: 4 of 9 documents already encoded" in caplog.messages
    assert any(m.startswith("indexed 2 of 5 documents") for m in caplog.messages)  # progress lines
    assert not index.building and not Index.inspect(root).building
    whole = Index(m3, config)
    whole.add(DOCS)
    _same(Index.load(root, m3), whole)


def test_resume_checks_settings_and_follows_the_source(
    m3: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "BATCH_DOCS", 3)
    root = tmp_path / "idx"
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        build_index(root, DOCS, m3, IndexConfig(), checkpoint_seconds=0)
    monkeypatch.undo()
    with pytest.raises(InputError, match="interrupted build with chunk_overlap=64, not 8"):
        build_index(root, DOCS, m3, IndexConfig(chunk_overlap=8))
    # the source lost d1 and changed d2 since: the resumed build follows it
    changed = [d for d in DOCS if d.id != "d1"]
    changed[1] = Document("d2", "a changed text for two", "T2")
    index, report = build_index(root, changed, m3, IndexConfig())
    assert report.resumed == 1 and "d1" not in index.ids()  # d0 kept; d2 encoded again
    whole = Index(m3)
    whole.add(changed)
    _same(Index.load(root, m3), whole)
    with pytest.raises(InputError, match="already holds an index"):
        build_index(root, DOCS, m3, IndexConfig())
    index, report = build_index(root, DOCS, m3, IndexConfig(), overwrite=True)
    assert report.resumed == 0 and report.documents == len(DOCS)


def test_cli_build_interrupted_then_resumed(
    tmp_path: Path, bert_m3: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "".join(json.dumps({"id": d.id, "text": d.text, "title": d.title}) + "\n" for d in DOCS)
    )
    root = tmp_path / "idx"
    args = [
        "index",
        "build",
        str(source),
        "--index",
        str(root),
        "--model",
        str(bert_m3),
        "--checkpoint-seconds",
        "0",
    ]
    monkeypatch.setattr(build, "BATCH_DOCS", 4)
    _interrupt_after(monkeypatch, 1)
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["index", "info", str(root)]) == 0
    assert "an interrupted build" in capsys.readouterr().out
    assert main(["search", str(root), "topic", "-k", "1"]) == 0
    assert "interrupted build (4 documents so far)" in capsys.readouterr().err
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "indexed 5 documents" in out and "4 already there from the interrupted build" in out
    assert "now 9 documents" in out
    assert main(args) == 2  # finished: a build again is refused
    assert "already holds an index" in capsys.readouterr().err


def test_two_builds_at_once_one_wins_and_nothing_is_mixed(tmp_path: Path, bert_m3: Path) -> None:
    """Two processes build the same folder at once: the first to save keeps it, the other is
    refused (its build does not overwrite an index it did not see), with checkpoints on."""
    import subprocess
    import sys

    root = tmp_path / "idx"
    sources = []
    for name in ("a", "b"):
        src = tmp_path / f"{name}.jsonl"
        src.write_text(
            "".join(json.dumps({"id": f"{name}{i}", "text": f"text {name} {i}"}) + "\n" for i in range(6))
        )
        sources.append(src)
    cmd = [sys.executable, "-m", "bgekit.cli.main", "index", "build"]
    procs = [
        subprocess.Popen(
            [*cmd, str(s), "--index", str(root), "--model", str(bert_m3), "--checkpoint-seconds", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in sources
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = next(o for p, o in zip(procs, outs, strict=True) if p.returncode == 2)
    assert "already holds an index" in loser[1]
    winner = next(name for p, name in zip(procs, "ab", strict=True) if p.returncode == 0)
    index = Index.load(root)
    assert index.ids() == [f"{winner}{i}" for i in range(6)] and not index.building
