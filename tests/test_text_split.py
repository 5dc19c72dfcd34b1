"""Chunks that follow the text: headings kept with their sections, code never cut mid-line,
no word cut, budgets kept, overlap by whole pieces, heading paths as context."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, Index, IndexConfig
from bgekit.index import chunk_documents
from bgekit.index.text_split import break_points, heading_path, headings, split_text

ROOT = Path(__file__).resolve().parent.parent

GUIDE = """# Install

Download the package from the site. Unpack it into a folder of your choice. Then run the
installer, which asks a few questions about where to put things.

## Linux

Open a terminal. Type the command below and press enter; it takes a minute or two.

```bash
./configure --prefix=/usr/local --with-everything-enabled
make -j4 && make install
```

After that, the program is on your path. Check it with the version flag, which prints the
version and exits. If it prints nothing, your shell did not pick up the new path yet.

## Windows

Double-click the installer. Accept the licence. Choose a folder. Wait for the bar to fill.

# Use

Start the program from the menu. The first window shows the recent files. Pick one, or open
a new file from the toolbar. Save often: the program does not save on its own.
"""


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3))


def _word_edges_ok(text: str, chunk: str) -> bool:
    """The chunk starts and ends at word edges of the text (never inside a word)."""
    at = text.find(chunk)
    if at < 0:
        return False
    before = text[at - 1] if at > 0 else " "
    after = text[at + len(chunk)] if at + len(chunk) < len(text) else " "
    return before.isspace() and after.isspace()


def test_headings_breaks_and_paths() -> None:
    found = headings(GUIDE)
    assert [(h.level, h.text) for h in found] == [(1, "Install"), (2, "Linux"), (2, "Windows"), (1, "Use")]
    inside_code = GUIDE.index("make -j4")
    points = dict(break_points(GUIDE))
    code = GUIDE[GUIDE.index("```bash") : GUIDE.index("```\n\nAfter") + 3]
    start = GUIDE.index(code)
    # inside the fence only line starts break (strength 3, LINE), nothing mid-line
    inner = {p: s for p, s in points.items() if start < p < start + len(code)}
    assert inner and all(s == 3 and GUIDE[p - 1] == "\n" for p, s in inner.items())
    assert heading_path(found, inside_code) == ["Install", "Linux"]
    assert heading_path(found, GUIDE.index("Double-click")) == ["Install", "Windows"]
    assert heading_path(found, GUIDE.index("# Use"), inclusive=True) == ["Use"]


def test_chunks_follow_the_text(m3: Embedder) -> None:
    doc = Document("guide", GUIDE)
    tok = m3.tokenizer
    budget = 64  # the tiny test tokenizer takes 37 tokens for the longest code line
    chunks = chunk_documents([doc], tok, budget, 10, split="text", context=True)
    assert len(chunks) > 4
    spans = tok.spans([GUIDE])[0]
    for c in chunks:
        path, _, body = c.text.partition("\n\n") if not c.text.startswith("#") else ("", "", c.text)
        if not c.text.startswith("#"):  # begins with its heading path
            assert " > " in path or path in ("Install", "Use"), c.text
        assert len(tok.ids([c.text])[0]) <= budget, c.text  # the budget holds, path included
        assert _word_edges_ok(GUIDE, body), body
        for line in body.splitlines():  # code lines are whole
            if "make -j4" in line or "./configure" in line:
                assert line.strip() in {
                    "make -j4 && make install",
                    "./configure --prefix=/usr/local --with-everything-enabled",
                }
        lines = body.splitlines()
        assert not lines[-1].lstrip().startswith("#")  # a heading never ends a chunk
    # consecutive chunks overlap by whole pieces, or not at all
    for a, b in itertools.pairwise(chunks):
        body_a = a.text if a.text.startswith("#") else a.text.partition("\n\n")[2]
        body_b = b.text if b.text.startswith("#") else b.text.partition("\n\n")[2]
        end_a, start_b = GUIDE.index(body_a) + len(body_a), GUIDE.index(body_b)
        assert start_b <= end_a or not GUIDE[end_a:start_b].strip()  # nothing left out between
    assert len(spans) > 0
    # every word of the text is in some chunk, in order
    assert " ".join(GUIDE.split()).endswith(" ".join(chunks[-1].text.partition("\n\n")[2].split()))


def test_no_breaks_at_all_falls_back_to_tokens(m3: Embedder) -> None:
    text = "x" * 2000  # one "word": only token cuts are possible
    spans = np.asarray(m3.tokenizer.spans([text])[0])
    ranges = split_text(text, spans, 30, 5)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))  # contiguous
    starts = set(spans[:, 0].tolist())
    assert all(a in starts for a, _ in ranges)  # cut between tokens


def test_index_default_follows_the_text_and_old_indexes_keep_token_windows(
    m3: Embedder, tmp_path: Path
) -> None:
    index = Index(m3, IndexConfig(chunk_tokens=64, chunk_overlap=10))
    assert index.config.split == "text"
    index.add([Document("guide", GUIDE, "Guide")])
    assert all(
        _word_edges_ok(GUIDE, t if t.startswith("#") else t.partition("\n\n")[2]) for t in index._chunk_text
    )
    root = index.save(tmp_path / "idx")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config"]["split"] == "text"
    del manifest["config"]["split"]  # as saved before chunks could follow the text
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert Index.load(root, m3).config.split == "tokens"


def test_scifact_chunks_fit_and_start_at_words(m3: Embedder) -> None:
    """Real abstracts: every chunk within the budget and starting at a word edge."""
    docs = []
    with (ROOT / "data/scifact/corpus.jsonl").open(encoding="utf-8") as f:
        for line in itertools.islice(f, 40):
            r = json.loads(line)
            docs.append(Document(r["_id"], r["text"]))
    chunks = chunk_documents(docs, m3.tokenizer, 48, 12, split="text", context=True)
    assert len(chunks) > 2 * len(docs)
    for c in chunks:
        assert len(m3.tokenizer.ids([c.text])[0]) <= 48
        assert _word_edges_ok(docs[c.doc].text, c.text)
