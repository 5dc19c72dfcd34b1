"""What a new user trips on in the first hour (issue 27's list), each answered."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from bgekit import Document, Embedder, Index, __version__
from bgekit.cli.main import main
from bgekit.io import load_encoded


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"bgekit {__version__}"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["encode", "--help"], "--kind"),
        (["eval", "retrieval", "--help"], "--split"),
        (["search", "--help"], "--rerank-top"),
        (["serve", "--help"], "--max-inputs-per-request"),
    ],
)
def test_help_shows_each_default_once_as_typed(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "('" not in text and "(default: None)" not in text  # no Python tuples, no None
    after = text.split(option, 2)[-1][:300]  # the option's own help
    assert "default" in after, after
    for line in re.split(r"\s(?=--?[a-zA-Z])", text):  # one option's help each
        assert line.count("default") <= 1, line
    if argv[0] == "encode":
        assert "(default: dense)" in text


def test_encode_txt_keeps_line_numbers_as_ids(tmp_path: Path, bert_m3: Path) -> None:
    src = tmp_path / "lines.txt"
    src.write_text("first line\n\nthird line\n   \nfifth line\n")
    out = tmp_path / "out.npz"
    assert main(["encode", "--model", str(bert_m3), "--input", str(src), "--output", str(out)]) == 0
    enc, ids, _ = load_encoded(out)
    assert ids == ["1", "3", "5"] and enc.dense is not None and len(enc.dense) == 3
    direct = Embedder.from_pretrained(str(bert_m3)).encode(["first line", "third line", "fifth line"])
    assert direct.dense is not None
    assert abs(enc.dense - direct.dense).max() < 1e-6


def test_eval_without_pytrec_eval_says_so_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pytrec_eval", None)  # import fails as when not installed
    # the data folder does not exist: the missing extra is said first, before anything is read
    assert main(["eval", "retrieval", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'bgekit[eval]'" in err and "none" not in err and len(err.strip().splitlines()) == 1


def test_index_messages(tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text('{"id": "a", "text": "cats sleep on the sofa"}\n')
    root = tmp_path / "idx"
    assert main(["index", "build", str(one), "--index", str(root), "--model", str(bert_m3)]) == 0
    assert "indexed 1 document (1 chunk)" in capsys.readouterr().out
    two = tmp_path / "two.jsonl"
    two.write_text('{"id": "a", "text": "cats sleep all day"}\n{"id": "b", "text": "dogs bark"}\n')
    assert main(["index", "add", str(two), "--index", str(root), "--update"]) == 0
    assert "added 1 document, replaced 1 (2 chunks)" in capsys.readouterr().out
    assert main(["index", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "(dimensions: dense 32)" in out and "{" not in out
    # add to a folder with no index: said before the (missing) source is read
    assert main(["index", "add", str(tmp_path / "no-such.jsonl"), "--index", str(tmp_path / "nothing")]) == 2
    assert "no index at" in capsys.readouterr().err
    long_query = "why " * 30_000
    assert main(["search", str(root), long_query, "-k", "1"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert len(header) < 400 and "(120,000 characters)" in header


def test_server_lists_models_refuses_empty_input_once_and_logs_plainly(
    bert_m3: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("fastapi")
    from bgekit.server import ServerConfig, create_app
    from tests.test_server import run, serving

    m3 = Embedder.from_pretrained(str(bert_m3))
    index = Index(m3)
    index.add([Document("a", "text")])
    app = create_app(ServerConfig(), embedder=m3, index=index)

    async def go() -> list:
        async with serving(app) as client:
            return [
                await client.get("/v1/models"),
                await client.get(f"/v1/models/{m3.info.name}"),
                await client.get("/v1/models/other"),
                await client.post("/v1/embeddings", json={"input": ""}),
                await client.post("/v1/embeddings", json={"input": ["ok", " "]}),
            ]

    with caplog.at_level(logging.INFO, logger="bgekit"):
        listed, one, other, empty, blank = run(go)
    assert listed.json() == {
        "object": "list",
        "data": [{"id": m3.info.name, "object": "model", "created": 0, "owned_by": "bgekit"}],
    }
    assert one.json()["id"] == m3.info.name and other.status_code == 404
    for response, where in ((empty, "is an empty text"), (blank, "item 1 is an empty text")):
        assert response.status_code == 422
        message = response.json()["error"]["message"]
        assert where in message and message.count("empty text") == 1 and ";" not in message, message
    assert "server ready" in caplog.messages and not any("bgekit server" in m for m in caplog.messages)


def test_models_lists_the_catalog_and_what_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import constants

    from bgekit.models.catalog import CATALOG

    # a hub cache holding bge-m3's config, in the layout huggingface_hub writes
    repo = tmp_path / "models--BAAI--bge-m3"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1 : len(CATALOG) + 1]}
    assert set(rows) == {e.hub_id for e in CATALOG}
    assert rows["BAAI/bge-m3"].split()[-1] == "yes" and rows["BAAI/bge-small-en-v1.5"].split()[-1] == "no"
    assert "dense,sparse,multivector" in rows["BAAI/bge-m3"] and "8192" in rows["BAAI/bge-m3"]
    assert main(["models", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["BAAI/bge-m3"]["cached"] is True and listed["BAAI/bge-m3"]["dim"] == 1024


def test_download_offline_and_unknown_names_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert main(["download", "bge-m3"]) == 2
    err = capsys.readouterr().err
    assert "cannot download BAAI/bge-m3" in err and len(err.strip().splitlines()) == 1
    assert main(["download", "bge-m5"]) == 2
    err = capsys.readouterr().err
    assert "not a known BGE model" in err and "bge-m3" not in err.split("model")[0]


def test_index_delete_loads_no_model(
    tmp_path: Path, bert_m3: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgekit import InputError

    m3 = Embedder.from_pretrained(str(bert_m3))
    index = Index(m3)
    index.add([Document(f"d{i}", f"text number {i}") for i in range(4)])
    root = index.save(tmp_path / "idx")
    before = json.loads((root / "manifest.json").read_text())["model"]

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("index delete loaded a model")

    monkeypatch.setattr(Embedder, "from_pretrained", no_model)
    assert main(["index", "delete", "d1", "d2", "--index", str(root)]) == 0
    assert "deleted 2 documents (2 chunks); now 2 documents" in capsys.readouterr().out
    detached = Index.load(root, load_model=False)
    with pytest.raises(InputError, match="opened without its model"):
        detached.search(["text"], 1)
    monkeypatch.undo()
    assert json.loads((root / "manifest.json").read_text())["model"] == before
    again = Index.load(root)
    assert again.ids() == ["d0", "d3"]
    fresh = Index(m3)
    fresh.add([Document("d0", "text number 0"), Document("d3", "text number 3")])
    assert [h.id for h in again.search(["text number 3"], 2)[0]] == [
        h.id for h in fresh.search(["text number 3"], 2)[0]
    ]
