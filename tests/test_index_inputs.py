"""Hostile and damaged index inputs (issue 22): each is refused at read time with one line
naming the file and line (or the document), before any encoding — never a traceback, and
nothing left on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, InputError
from bgekit.cli.main import main
from bgekit.index import read_source
from bgekit.index.chunking import SPAN_PIECE_CHARS, token_spans
from bgekit.index.documents import MAX_METADATA_DEPTH

ENGINE = EngineConfig(dtype="float32", progress=False)


def _jsonl(path: Path, *rows: str) -> Path:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


DEEP = '{"a":' * 988 + "1" + "}" * 988
NESTED_40 = '{"a":' * 40 + "1" + "}" * 40
CASES = {
    "text": (
        '{"id": "b", "text": "bad \\ud800 text"}',
        r":2: the text holds a lone surrogate at character 4",
    ),
    "title": ('{"id": "b", "text": "t", "title": "x\\udc00"}', r":2: the title holds a lone surrogate"),
    "id": ('{"id": "b\\ud800", "text": "t"}', r":2: the id holds a lone surrogate at character 1"),
    "metadata value": (
        '{"id": "b", "text": "t", "metadata": {"k": ["\\ud801"]}}',
        r":2: metadata\.k\[0\] holds a lone surrogate",
    ),
    "metadata key": (
        '{"id": "b", "text": "t", "metadata": {"\\ud801": 1}}',
        r":2: metadata key '\\ud801' holds a lone surrogate",
    ),
    "988 deep": ('{"id": "b", "text": "t", "metadata": ' + DEEP + "}", r":2: the JSON is nested too deeply"),
    "40 deep": (
        '{"id": "b", "text": "t", "metadata": ' + NESTED_40 + "}",
        rf":2: metadata(\.a)+ is nested deeper than {MAX_METADATA_DEPTH} levels",
    ),
    "repeated long id": (
        json.dumps({"id": "a" * 300, "text": "again"}),
        r":2: document id 'a{60}'\.\.\. \(300 characters\) was already given on line 1$",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_jsonl_lines_are_named_before_any_encoding(
    case: str, tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row, message = CASES[case]
    first = json.dumps({"id": "a" * 300 if case == "repeated long id" else "a", "text": "fine"})
    src = _jsonl(tmp_path / "docs.jsonl", first, row)
    with pytest.raises(InputError, match=message):
        read_source(src)
    code = main(["index", "build", str(src), "--index", str(tmp_path / "idx"), "--model", str(bert_m3)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"bgekit: error: {src}:2: ")
    assert not (tmp_path / "idx").exists()


def test_documents_from_the_api_are_checked_too(bert_m3: Path) -> None:
    index = Index(Embedder.from_pretrained(str(bert_m3), engine=ENGINE))
    bad = {
        "documents[1] ('b'): the text holds a lone surrogate at character 2": Document("b", "ab\ud800"),
        "documents[1]: the id holds a lone surrogate": Document("\udc80", "x"),
        "documents[1] ('b'): metadata.k holds a set, which is not JSON data": Document(
            "b", "x", "", {"k": {1}}
        ),
        "documents[1] ('b'): the title is a int, not a string": Document("b", "x", 3),  # type: ignore[arg-type]
        "documents[1]: the id is empty": Document("", "x"),
    }
    for message, doc in bad.items():
        with pytest.raises(
            InputError, match="^" + message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
        ):
            index.add([Document("a", "fine"), doc])
        assert len(index) == 0


def test_a_file_name_that_is_not_utf8_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.txt").write_text("fine")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "w") as f:
        f.write("text")
    with pytest.raises(InputError, match=r"the file name b'caf\\xe9\.txt' is not valid UTF-8"):
        read_source(folder)
    assert main(["index", "build", str(folder), "--index", str(tmp_path / "idx")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_documents_over_the_size_limit_are_refused_or_skipped(
    tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = "word " * 2000
    src = _jsonl(
        tmp_path / "docs.jsonl",
        json.dumps({"id": "small", "text": "a short one"}),
        json.dumps({"id": "big", "text": big}),
        json.dumps({"id": "big2", "text": big + "more"}),
    )
    root = tmp_path / "idx"
    args = ["index", "build", str(src), "--index", str(root), "--model", str(bert_m3)]
    assert main([*args, "--max-document-chars", "5000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "bgekit: error: document 'big' has 10,000 characters (and 1 more), over the index's limit of 5,000 "
        "(max_document_chars): split it, raise the limit (--max-document-chars) or skip such documents "
        "(--oversize skip)"
    )
    assert not root.exists()
    assert main([*args, "--max-document-chars", "5000", "--oversize", "skip"]) == 0
    assert "indexed 1 document (1 chunk; 2 over the size limit skipped)" in capsys.readouterr().out
    # the limit is the index's: later adds follow it
    more = _jsonl(tmp_path / "more.jsonl", json.dumps({"id": "big3", "text": big}))
    assert main(["index", "add", str(more), "--index", str(root)]) == 0
    assert "added 0 documents (0 chunks; 1 over the size limit skipped)" in capsys.readouterr().out
    assert main([*args, "--max-document-chars", "0", "--overwrite"]) == 0  # 0: no limit
    assert len(Index.load(root)) == 3
    with pytest.raises(InputError, match="oversize must be one of error, skip"):
        IndexConfig(oversize="truncate")  # type: ignore[arg-type]


def test_long_texts_are_tokenised_in_pieces_with_the_same_spans(bert_m3: Path) -> None:
    tok = Embedder.from_pretrained(str(bert_m3), engine=ENGINE).tokenizer
    words = [f"w{i % 89}x{i % 7}" for i in range(40_000)]
    text = " ".join(words)
    blob = "z" * (SPAN_PIECE_CHARS + 100)  # no whitespace to cut at: a hard cut
    assert len(text) > 3 * SPAN_PIECE_CHARS
    got = token_spans(tok, [text, "short text", "", blob])
    whole = tok.spans([text, "short text", ""])
    for g, w in zip(got, whole, strict=False):
        assert g.tolist() == [list(s) for s in w]
    covered = got[3]  # cut hard at the piece size: spans in order, from the start to the end
    assert covered[0, 0] == 0 and covered[-1, 1] == len(blob) and (covered[1:, 0] >= covered[:-1, 1]).all()


def test_plain_search_output_escapes_control_characters(
    tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = "\x1b[2J\x1b]0;owned\x07 vitamin d \x9b31m"
    src = _jsonl(tmp_path / "docs.jsonl", json.dumps({"id": "e\x1b1", "title": "T\x1b[1m", "text": evil}))
    root = tmp_path / "idx"
    assert main(["index", "build", str(src), "--index", str(root), "--model", str(bert_m3)]) == 0
    capsys.readouterr()
    assert main(["search", str(root), "vitamin d", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert not any((ord(c) < 32 and c != "\n") or 127 <= ord(c) < 160 for c in out)
    assert "[e\\x1b1] T\\x1b[1m" in out and "\\x1b[2J\\x1b]0;owned\\x07 vitamin d \\x9b31m" in out
    assert main(["search", str(root), "vitamin d", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["text"] == evil  # JSON keeps the text exact
