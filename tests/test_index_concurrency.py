"""Several processes writing one index at once (issue 22): every acknowledged change lands,
the index always loads, readers never see a half-switched generation, and a writer that
must wait says whom it waits for."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig
from bgekit.cli.main import main
from bgekit.index import IndexBusyError, IndexConflictError
from bgekit.index.lock import LOCK_FILE, WriteLock

ENGINE = EngineConfig(dtype="float32", progress=False)
OUTPUTS = ("dense", "sparse", "multivector")
BASE = 8


def _doc(i: str, text: str) -> Document:
    return Document(i, text, "", {"by": i})


def _base_docs(n: int = BASE) -> list[Document]:
    return [_doc(f"b{i}", f"base document {i} about topic {i % 3}") for i in range(n)]


def _build(model: str, root: Path, n: int = BASE) -> None:
    index = Index(Embedder.from_pretrained(model, engine=ENGINE), IndexConfig(outputs=OUTPUTS))
    index.add(_base_docs(n))
    index.save(root)


def _editor(model: str, root: str, p: int, ops: int, start: Any, out: Any) -> None:
    """Process ``p``: ``ops`` edits through Index.edit (add, update its own base document,
    delete what it added), each acknowledged only once the edit returned."""
    emb = Embedder.from_pretrained(model, engine=ENGINE)
    start.wait()
    done: list[tuple[str, str, str]] = []
    added: list[str] = []
    for j in range(ops):
        kind = ("add", "update", "add", "delete")[j % 4]
        with Index.edit(root, emb) as index:
            if kind == "add":
                new = f"p{p}-{j}"
                index.add([_doc(new, f"added by writer {p} in step {j}")])
                added.append(new)
                done.append((kind, new, ""))
            elif kind == "update":
                text = f"updated by writer {p} in step {j}"
                index.add([_doc(f"b{p}", text)], update=True)
                done.append((kind, f"b{p}", text))
            else:
                gone = added.pop(0)
                index.delete([gone])
                done.append((kind, gone, ""))
    out.put((p, done))


def _saver(model: str, root: str, p: int, ops: int, start: Any, out: Any) -> None:
    """Process ``p``: load once, then add and save ``ops`` times with plain ``save()``; a save
    refused as stale reloads and repeats the change."""
    emb = Embedder.from_pretrained(model, engine=ENGINE)
    start.wait()
    index = Index.load(root, emb)
    acked: list[str] = []
    conflicts = 0
    for j in range(ops):
        new = f"s{p}-{j}"
        while True:
            index.add([_doc(new, f"saved by writer {p} in step {j}")])
            try:
                index.save()
                break
            except IndexConflictError:
                conflicts += 1
                index = Index.load(root, emb)
        acked.append(new)
    out.put((p, acked, conflicts))


def _reader(model: str, root: str, stop: Any, out: Any) -> None:
    """Loads and searches the index until told to stop; reports loads and any error."""
    emb = Embedder.from_pretrained(model, engine=ENGINE)
    loads, errors = 0, []
    while not stop.is_set():
        try:
            index = Index.load(root, emb)
            index.search(["topic"], 3)
            loads += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    out.put((loads, errors))


def _expected(done: list[list[tuple[str, str, str]]]) -> tuple[set[str], dict[str, str]]:
    ids = {d.id for d in _base_docs()}
    texts = {d.id: d.text for d in _base_docs()}
    for log in done:
        for kind, i, text in log:
            if kind == "add":
                ids.add(i)
            elif kind == "delete":
                ids.discard(i)
            else:
                texts[i] = text
    return ids, texts


def test_concurrent_edits_all_land_and_readers_always_load(bert_m3: Path, tmp_path: Path) -> None:
    root = tmp_path / "idx"
    _build(str(bert_m3), root)
    ctx = mp.get_context("spawn")
    start, stop, out, reads = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    writers = [
        ctx.Process(target=_editor, args=(str(bert_m3), str(root), p, 6, start, out)) for p in range(4)
    ]
    reader = ctx.Process(target=_reader, args=(str(bert_m3), str(root), stop, reads))
    for proc in [*writers, reader]:
        proc.start()
    start.set()
    logs = [out.get(timeout=300) for _ in writers]
    stop.set()
    loads, errors = reads.get(timeout=120)
    for proc in [*writers, reader]:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert errors == [] and loads > 0
    ids, texts = _expected([log for _, log in logs])
    index = Index.load(root, Embedder.from_pretrained(str(bert_m3), engine=ENGINE))
    assert sorted(index.ids()) == sorted(ids)  # the base + 4 x (3 adds - 1 delete)
    assert len(index) == BASE + 8 and index.num_chunks == len(index)
    stored = dict(zip(index.ids(), index.chunk_texts(), strict=True))
    for p in range(4):
        assert stored[f"b{p}"] == texts[f"b{p}"] == f"updated by writer {p} in step 5"
    # what is left on disk: one generation, the manifest and the lock
    assert sorted(x.name for x in root.iterdir()) == sorted(
        [LOCK_FILE, "manifest.json", str(index.info().generation)]
    )
    # every stored row belongs to its document: the same search as an index built afresh
    fresh = Index(index.embedder, IndexConfig(outputs=OUTPUTS))
    fresh.add([_doc(i, stored[i]) for i in index.ids()])
    queries = ["updated by writer 2", "added by writer 1 in step 4", "base document topic 2"]
    for mode in ("dense", "sparse", "multivector", "hybrid"):
        got, want = index.search(queries, 5, mode=mode), fresh.search(queries, 5, mode=mode)  # type: ignore[arg-type]
        assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want]
        # (a sparse search can find fewer than k documents: compare the scores flat)
        scores = [h.score for r in got for h in r], [h.score for r in want for h in r]
        np.testing.assert_allclose(*scores, atol=1e-5)


def test_concurrent_plain_saves_refuse_a_stale_base_and_lose_nothing(bert_m3: Path, tmp_path: Path) -> None:
    root = tmp_path / "idx"
    _build(str(bert_m3), root)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_saver, args=(str(bert_m3), str(root), p, 5, start, out)) for p in range(3)]
    for proc in procs:
        proc.start()
    start.set()
    results = [out.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    acked = {i for _, ids, _ in results for i in ids}
    assert len(acked) == 15
    index = Index.load(root, Embedder.from_pretrained(str(bert_m3), engine=ENGINE))
    assert set(index.ids()) == acked | {d.id for d in _base_docs()}


def test_stale_save_is_refused_in_one_process(bert_m3: Path, tmp_path: Path) -> None:
    root = tmp_path / "idx"
    _build(str(bert_m3), root)
    emb = Embedder.from_pretrained(str(bert_m3), engine=ENGINE)
    first, second = Index.load(root, emb), Index.load(root, emb)
    first.add([_doc("x", "first writer")])
    first.save()
    second.add([_doc("y", "second writer")])
    with pytest.raises(IndexConflictError, match=r"saved by another process after this index was loaded"):
        second.save()
    assert sorted(Index.load(root, emb).ids()) == sorted([*(d.id for d in _base_docs()), "x"])
    with pytest.raises(Exception, match="already holds an index"):
        second.save(root.parent / "idx", exist_ok=False)


def test_a_busy_index_waits_or_fails_naming_the_writer(bert_m3: Path, tmp_path: Path) -> None:
    root = tmp_path / "idx"
    _build(str(bert_m3), root)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bgekit.index.lock import WriteLock; "
            "lock = WriteLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexBusyError, match=rf"is being written by PID {holder.pid}"):
            WriteLock(root, wait=0).acquire()
        src = tmp_path / "more.jsonl"
        src.write_text('{"id": "m1", "text": "more"}\n')
        code = main(["index", "add", str(src), "--index", str(root), "--wait", "0.2"])
        assert code == 2
    finally:
        holder.kill()
        holder.wait()
    # killed holder: the operating system released its lock
    assert main(["index", "add", str(src), "--index", str(root), "--wait", "0"]) == 0


def test_the_waiting_writer_says_whom_it_waits_for(
    bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "idx"
    _build(str(bert_m3), root)
    src = tmp_path / "more.jsonl"
    src.write_text('{"id": "m1", "text": "more"}\n')
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bgekit.index.lock import WriteLock; "
            "lock = WriteLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); "
            "sys.stdin.readline()",
            str(root),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "locked"
    cli = subprocess.Popen(
        [sys.executable, "-m", "bgekit.cli.main", "index", "add", str(src), "--index", str(root)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert cli.stderr is not None
    lines = iter(cli.stderr.readline, "")  # the add waits, and says whom for
    said = next((line for line in lines if "waiting" in line), "")
    assert said.strip() == f"bgekit: waiting for PID {holder.pid}, which is writing {root}"
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)
    out, _ = cli.communicate(timeout=120)
    assert cli.returncode == 0 and "now 9" in out


def test_cli_writers_at_once_lose_nothing(bert_m3: Path, tmp_path: Path) -> None:
    """The filer's reproduction: add A, add B, add --update, delete — started together."""
    root = tmp_path / "idx"
    _build(str(bert_m3), root, n=20)
    a, b, upd = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "upd.jsonl"
    a.write_text("".join(f'{{"id": "a{i}", "text": "alpha document {i}"}}\n' for i in range(6)))
    b.write_text("".join(f'{{"id": "x{i}", "text": "beta document {i}"}}\n' for i in range(6)))
    upd.write_text("".join(f'{{"id": "b{i}", "text": "changed base {i}"}}\n' for i in range(5, 10)))
    cli = [sys.executable, "-m", "bgekit.cli.main", "index"]
    commands = [
        [*cli, "add", str(a), "--index", str(root)],
        [*cli, "add", str(b), "--index", str(root)],
        [*cli, "add", str(upd), "--index", str(root), "--update"],
        [*cli, "delete", "b0", "b1", "b2", "--index", str(root)],
    ]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    index = Index.load(root, Embedder.from_pretrained(str(bert_m3), engine=ENGINE))
    want = {f"b{i}" for i in range(3, 20)} | {f"a{i}" for i in range(6)} | {f"x{i}" for i in range(6)}
    assert set(index.ids()) == want and len(index) == 29
    stored = dict(zip(index.ids(), index.chunk_texts(), strict=True))
    assert all(stored[f"b{i}"] == f"changed base {i}" for i in range(5, 10))
