"""Loaders: folders of text, Markdown, HTML and PDF files with include / exclude patterns and
unreadable files skipped (or stopped at with strict); tables as JSONL, CSV and Parquet."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bgekit import Document, InputError
from bgekit.cli.main import main
from bgekit.index import SourceOptions, read_source
from bgekit.index.loaders import html_text

PAGE = """<!doctype html><html><head><title>The  Page &amp; Title</title>
<style>body { color: red }</style><script>var hidden = "script text";</script></head>
<body><nav><a href="/">Home</a> | <a href="/x">Menu item</a></nav>
<header>Site banner</header>
<main><h1>Heading one</h1><p>First   paragraph
 spans lines &mdash; with an entity.</p>
<h2>Sub heading</h2><ul><li>item a</li><li>item b</li></ul>
<pre>code  line 1
code  line 2</pre></main>
<footer>Copyright footer</footer></body></html>"""


def pdf_bytes(pages: list[str], title: str | None = None) -> bytes:
    """A minimal PDF with one line of Helvetica text per page, written by hand (offsets and
    cross-reference table included), so the test does not use the reader to make its input."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info = None
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
        info = len(objects)
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R" + (f" /Info {info} 0 R" if info else "") + " >>"
    out += b"trailer\n" + trailer.encode() + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    return out


def test_html_main_text() -> None:
    page = html_text(PAGE)
    assert page.title == "The Page & Title"
    assert page.text == (
        "# Heading one\n\nFirst paragraph spans lines — with an entity.\n\n## Sub heading\n\n"
        "- item a\n\n- item b\n\ncode  line 1\ncode  line 2"
    )
    for gone in ("script text", "color", "Menu item", "Site banner", "Copyright"):
        assert gone not in page.text
    # no <main>: the body, still without navigation
    assert html_text("<body><nav>menu</nav><p>just a body</p></body>").text == "just a body"


def test_folder_of_every_kind_with_patterns_and_unreadable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("pypdf")
    (tmp_path / "notes.md").write_text("# Notes\n\nSome notes.")
    (tmp_path / "page.html").write_text(PAGE)
    (tmp_path / "paper.pdf").write_bytes(pdf_bytes(["Hello PDF world", "Second page text"], title="A Paper"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / "wip.md").write_text("draft")
    (tmp_path / "data.csv").write_text("id,text\n1,x\n")  # a table inside a folder: not a document
    with caplog.at_level(logging.WARNING, logger="bgekit"):
        docs = {d.id: d for d in read_source(tmp_path, SourceOptions(exclude=("drafts/*",)))}
    assert sorted(docs) == ["notes.md", "page.html", "paper.pdf"]
    assert docs["paper.pdf"].text == "Hello PDF world\n\nSecond page text"
    assert docs["paper.pdf"].title == "A Paper" and docs["paper.pdf"].metadata["pages"] == 2
    assert docs["page.html"].title == "The Page & Title" and docs["page.html"].text.startswith(
        "# Heading one"
    )
    assert docs["notes.md"].metadata["ext"] == ".md"
    warning = next(m for m in caplog.messages if "could not be read" in m)
    assert "skipped 2 files" in warning and "broken.pdf" in warning and "latin.txt" in warning
    with pytest.raises(InputError, match=r"latin\.txt: not valid utf-8 at byte 3"):
        read_source(tmp_path, SourceOptions(strict=True, include=("*.txt",)))
    assert [d.id for d in read_source(tmp_path, SourceOptions(include=("*.txt",), encoding="latin-1"))] == [
        "latin.txt"
    ]
    only = read_source(tmp_path, SourceOptions(include=("*.md",)))
    assert [d.id for d in only] == ["drafts/wip.md", "notes.md"]
    with pytest.raises(InputError, match="that the include / exclude patterns let through"):
        read_source(tmp_path, SourceOptions(include=("*.docx",)))
    with pytest.raises(InputError, match="not a readable PDF"):
        read_source(tmp_path / "broken.pdf")


def test_tables_jsonl_csv_parquet(tmp_path: Path) -> None:
    csv_file = tmp_path / "docs.csv"
    csv_file.write_text('doc,body,title,year\nd1,"first, with a comma",One,2020\nd2,second,,2021\n')
    docs = read_source(csv_file, SourceOptions(id_field="doc", text_field="body"))
    assert docs == [
        Document("d1", "first, with a comma", "One", {"year": "2020"}),
        Document("d2", "second", "", {"year": "2021"}),
    ]
    with pytest.raises(InputError, match=r"docs.csv:2: expected 'id' or '_id' and a 'text' string"):
        read_source(csv_file)
    pa = pytest.importorskip("pyarrow")
    import datetime as dt

    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": ["p1", "p2"],
            "text": ["alpha", "beta"],
            "year": [2020, 2024],
            "day": [dt.date(2024, 1, 2), dt.date(2024, 3, 4)],
        }
    )
    pq.write_table(table, tmp_path / "docs.parquet")
    docs = read_source(tmp_path / "docs.parquet")
    assert docs[1] == Document("p2", "beta", "", {"year": 2024, "day": "2024-03-04"})
    jl = tmp_path / "docs.jsonl"
    jl.write_text(json.dumps({"key": "j1", "content": "x", "metadata": {"a": 1}}) + "\n")
    assert read_source(jl, SourceOptions(id_field="key", text_field="content")) == [
        Document("j1", "x", "", {"a": 1})
    ]
    dup = tmp_path / "dup.csv"
    dup.write_text("id,text\na,x\na,y\n")
    with pytest.raises(InputError, match=r"dup\.csv:3: document id .a. was already given on row 2"):
        read_source(dup)


def test_cli_build_with_patterns_fields_and_strict(
    tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "a.html").write_text(PAGE)
    (folder / "b.md").write_text("# B\n\ntext b")
    (folder / "bad.txt").write_bytes(b"\xff\xfe broken")
    root = tmp_path / "idx"
    args = ["index", "build", str(folder), "--index", str(root), "--model", str(bert_m3)]
    assert main([*args, "--exclude", "*.md"]) == 0
    captured = capsys.readouterr()
    assert "indexed 1 document" in captured.out and "skipped 1 files that could not be read" in captured.err
    assert main([*args, "--overwrite", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "bad.txt: not valid utf-8" in err and len(err.strip().splitlines()) == 1
    table = tmp_path / "t.csv"
    table.write_text("ref,body,year\nr1,hello there,2020\nr2,general kenobi,2024\n")
    assert (
        main(
            [
                "index",
                "build",
                str(table),
                "--index",
                str(tmp_path / "t"),
                "--model",
                str(bert_m3),
                "--id-field",
                "ref",
                "--text-field",
                "body",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["search", str(tmp_path / "t"), "hello", "--where", "year=2024", "--json"]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]] == ["r2"]
