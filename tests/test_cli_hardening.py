"""Files and the command line against damage and mistakes (issue 13): every one is a
single line on stderr and a non-zero exit, naming the file."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig
from bgekit.cli.main import main
from bgekit.index import IndexFormatError, storage

DOCS = [
    ("d1", "cats and dogs are popular pets in many homes"),
    ("d2", "the stock market fell sharply on monday"),
    ("d3", "hybrid search mixes lexical and semantic scores"),
]


@pytest.fixture(scope="module")
def built(bert_m3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    emb = Embedder.from_pretrained(str(bert_m3), engine=EngineConfig(dtype="float32", progress=False))
    index = Index(emb, IndexConfig(outputs=("dense", "sparse")))
    index.add([Document(i, t) for i, t in DOCS])
    root = tmp_path_factory.mktemp("idx") / "index"
    index.save(root)
    return root


def _gen(root: Path) -> Path:
    return root / json.loads((root / "manifest.json").read_text())["generation"]


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        f = _gen(root) / name
        f.write_bytes(f.read_bytes()[:keep])

    return damage


def _shorten(name: str, by: int) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        f = _gen(root) / name
        f.write_bytes(f.read_bytes()[:-by])

    return damage


def _manifest(raw: bytes) -> Callable[[Path], None]:
    return lambda root: (root / "manifest.json").write_bytes(raw)


def _delete(name: str) -> Callable[[Path], None]:
    return lambda root: (_gen(root) / name).unlink()


CORRUPTIONS = [
    ("dense.npy truncated", _truncate("dense.npy", 200), "dense.npy"),
    ("dense.npy header cut", _truncate("dense.npy", 20), "dense.npy"),
    ("chunk_doc.npy emptied", _truncate("chunk_doc.npy", 0), "chunk_doc.npy"),
    ("chunks.jsonl cut mid-line", _truncate("chunks.jsonl", 30), "chunks.jsonl"),
    ("manifest not UTF-8", _manifest(b'{"format": 1, "x": "\xff\xfe"}'), "manifest.json"),
    ("manifest format only", _manifest(b'{"format": 1}'), "manifest.json"),
    ("manifest a list", _manifest(b"[]"), "manifest.json"),
    ("manifest cut", _manifest(b'{"format": 1, "gen'), "manifest.json"),
    ("dense.npy deleted", _delete("dense.npy"), "dense.npy"),
    ("sparse_indptr.npy deleted", _delete("sparse_indptr.npy"), "sparse_indptr.npy"),
    ("bm25_data.npy short", _shorten("bm25_data.npy", 4), "bm25_data.npy"),
    ("bm25_vocab.jsonl cut mid-line", _shorten("bm25_vocab.jsonl", 2), "bm25_vocab.jsonl"),
]


@pytest.mark.parametrize(("what", "damage", "named"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_damaged_indexes_are_one_line_naming_the_file(
    built: Path,
    tmp_path: Path,
    what: str,
    damage: Callable[[Path], None],
    named: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(built, root)
    damage(root)
    with pytest.raises(IndexFormatError, match=named.replace(".", r"\.")):
        Index.inspect(root)
    for argv in (["index", "info", str(root)], ["search", str(root), "cats"]):
        assert main(argv) == 2, (what, argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err and "Traceback" not in err, (what, err)


def test_an_interrupted_save_leaves_the_previous_index_and_its_leftovers_go(
    built: Path, tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(built, root)
    (root / ".manifest.json.abc123.tmp").write_text("{half a manif")  # a save killed mid-write
    (root / "gen-999999.tmp").mkdir()  # a save killed while writing its generation
    index = Index.load(root)
    assert len(index) == 3
    index.add([Document("d4", "a new document about whales")])
    index.save()
    assert not list(root.glob(".manifest.json.*.tmp")) and not (root / "gen-999999.tmp").exists()
    assert len(Index.load(root)) == 4


def test_written_files_get_the_users_umask(built: Path, tmp_path: Path, bert_m3: Path) -> None:
    old = os.umask(0o022)
    try:
        root = tmp_path / "idx"
        Index.load(built).save(root)
        src = tmp_path / "t.txt"
        src.write_text("cats\ndogs\n")
        out = tmp_path / "v.npz"
        assert main(["encode", "--model", str(bert_m3), "--input", str(src), "--output", str(out)]) == 0
    finally:
        os.umask(old)
    for f in (root / "manifest.json", out, *(_gen(root)).iterdir()):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_text_that_is_not_utf8_names_the_file_and_byte(
    bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\nna\xefve\n".encode("latin-1"))
    out = tmp_path / "v.npz"
    assert main(["encode", "--model", str(bert_m3), "--input", str(latin), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "latin1.txt" in err and "byte 3" in err and "--encoding" in err and err.count("\n") == 1
    assert not out.exists()
    assert (
        main(
            [
                "encode",
                "--model",
                str(bert_m3),
                "--input",
                str(latin),
                "--output",
                str(out),
                "--encoding",
                "latin-1",
            ]
        )
        == 0
    )
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(latin, folder / "a.txt")
    assert (
        main(["index", "build", str(folder), "--index", str(tmp_path / "ix"), "--model", str(bert_m3)]) == 2
    )
    assert "a.txt" in capsys.readouterr().err


def test_binary_files_are_skipped_with_a_count_and_empty_sources_refused(
    bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "real.txt").write_text("cats and dogs")
    (folder / "ls.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    (folder / "notes.md").write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00")
    ix = tmp_path / "ix"
    assert main(["index", "build", str(folder), "--index", str(ix), "--model", str(bert_m3)]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 files that are not text" in captured.err and "indexed 1 document (" in captured.out
    assert [h.id for h in Index.load(ix).search(["cats"], 5)[0]] == ["real.txt"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for argv in (
        ["index", "build", str(empty), "--index", str(tmp_path / "ix2"), "--model", str(bert_m3)],
        ["encode", "--model", str(bert_m3), "--input", str(empty), "--output", str(tmp_path / "e.npz")],
        ["index", "build", str(folder), "--index", str(tmp_path / "ix3"), "--chunk-tokens", "0"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert ("nothing to" in err or "chunk_tokens must be at least 8" in err) and err.count("\n") == 1


def test_cli_manners(built: Path, tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["search", str(built), "cats", "--bogus"])
    assert "usage: bgekit search" in capsys.readouterr().err  # the command's usage, not the top level's
    for bad, says in (
        ("--candidates=0", "at least 1, or 'all'"),
        ("--weights=1,1", "(dense, lexical, multivector)"),
    ):
        with pytest.raises(SystemExit):
            main(["search", str(built), "cats", bad])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert "``" not in help_text and "(default: 127.0.0.1)" in help_text and "(default: 8080)" in help_text
    root = tmp_path / "copy"
    shutil.copytree(built, root)
    one = tmp_path / "single.txt"
    one.write_text("whales are large marine mammals")
    assert main(["index", "add", str(one), "--index", str(root)]) == 0  # a single file is a source
    again = tmp_path / "again.jsonl"
    again.write_text("".join(json.dumps({"id": i, "text": t + " again"}) + "\n" for i, t in DOCS))
    assert main(["index", "add", str(again), "--index", str(root)]) == 2
    assert "3 document ids ('d1', 'd2', 'd3') are already in the index" in capsys.readouterr().err
    assert main(["index", "add", str(again), "--index", str(root), "--update"]) == 0
    texts = {h.id: h.text for h in Index.load(root).search(["again"], 10, mode="bm25")[0]}
    assert texts["d1"].endswith("again") and len(Index.load(root)) == 4
    assert main(["index", "delete", "d2", "single.txt", "--index", str(root)]) == 0
    assert sorted(d.id for d in Index.load(root)._docs) == ["d1", "d3"]
    assert main(["index", "delete", "nope", "--index", str(root)]) == 2
    capsys.readouterr()


def test_serve_checks_model_and_index_before_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    import uvicorn

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server started listening")

    monkeypatch.setattr(uvicorn, "run", never)
    for argv in (
        ["serve", "--model", str(tmp_path / "no-such-folder")],
        ["serve", "--index", str(tmp_path / "nope")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (err.count("\n") == 1 and "Traceback" not in err and "nope" in err) or "no-such-folder" in err


def test_serve_passes_body_limits_and_sets_the_allocator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bert_m3: Path
) -> None:
    pytest.importorskip("uvicorn")
    import uvicorn

    from bgekit.server import memory

    seen: dict[str, object] = {}

    def capture(app: object, **kwargs: object) -> None:
        seen["config"] = app.state.bgekit.config  # type: ignore[attr-defined]

    monkeypatch.setattr(uvicorn, "run", capture)
    monkeypatch.setattr(memory, "limit_arenas", lambda arenas=2: seen.setdefault("arenas", arenas))
    argv = ["serve", "--model", str(bert_m3), "--max-body-bytes", "1000", "--body-timeout", "2.5"]
    assert main(argv) == 0
    config = seen["config"]
    assert (config.max_body_bytes, config.body_timeout) == (1000, 2.5)  # type: ignore[attr-defined]
    assert seen["arenas"] == 2
    assert main(["serve", "--model", str(bert_m3), "--body-timeout", "0"]) == 2
    assert "body_timeout must be positive" in capsys.readouterr().err


def test_ctrl_c_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import bgekit.index as index_pkg

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(index_pkg, "read_source", interrupted)
    src = tmp_path / "d.jsonl"
    src.write_text('{"id": "1", "text": "x"}\n')
    assert main(["index", "build", str(src), "--index", str(tmp_path / "ix")]) == 130
    assert capsys.readouterr().err == "bgekit: interrupted\n"
    assert not (tmp_path / "ix").exists()


def test_index_files_hold_what_the_manifest_says(built: Path) -> None:
    manifest = storage.read_manifest(built)
    for name, want in storage.expected_files(manifest).items():
        path = _gen(built) / name
        if isinstance(want, int):
            assert path.read_text().count("\n") == want
        else:
            arr = np.load(path)
            assert all(w in (-1, s) for w, s in zip(want, arr.shape, strict=True)), name
