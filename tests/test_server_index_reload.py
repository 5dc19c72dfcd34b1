"""The server serves the index as it is on disk (issue 22): another process's add or delete
is served within the poll interval, with no failed request during the switch; a damaged new
generation is refused and the old one kept; /info reports the generation served."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig
from bgekit.server import ServerConfig, create_app
from tests.live_server import live

ENGINE = EngineConfig(dtype="float32", progress=False)
KEY = "reload-key"


def _docs(n: int) -> list[Document]:
    return [Document(f"d{i}", f"document number {i} about subject {i % 4}") for i in range(n)]


@pytest.fixture
def served(bert_m3: Path, tmp_path: Path) -> tuple[Embedder, Path]:
    emb = Embedder.from_pretrained(str(bert_m3), engine=ENGINE)
    index = Index(emb, IndexConfig(outputs=("dense", "sparse")))
    index.add(_docs(12))
    index.save(tmp_path / "idx")
    return emb, tmp_path / "idx"


def _ids(client: httpx.Client, url: str, query: str, k: int = 50) -> list[str]:
    """The served documents: dense search with k above the index's size lists every one
    (sparse search on the tiny random model listed only those whose weights for the query's
    tokens stayed above zero, which fp32 kernel rounding flips run to run: two CI failures)."""
    resp = client.post(f"{url}/search", json={"query": query, "k": k, "mode": "dense"})
    assert resp.status_code == 200, resp.text
    return [h["id"] for h in resp.json()["hits"]]


def _wait_for(check: object, seconds: float = 30) -> float:
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < seconds, "the server did not switch"
        time.sleep(0.05)
    return time.monotonic() - start


def test_changes_by_another_process_are_served_under_load(served: tuple[Embedder, Path]) -> None:
    emb, root = served
    app = create_app(ServerConfig(api_key=KEY, index_poll=0.2), embedder=emb, index=Index.load(root, emb))
    headers = {"Authorization": f"Bearer {KEY}"}
    with live(app) as url, httpx.Client(headers=headers, timeout=60) as client:
        info = client.get(f"{url}/info").json()["index"]
        assert (info["generation"], info["documents"]) == ("gen-000001", 12)
        stop, statuses, lock = threading.Event(), [], threading.Lock()

        def hammer() -> None:
            with httpx.Client(headers=headers, timeout=60) as c:
                while not stop.is_set():
                    r = c.post(f"{url}/search", json={"query": "document subject", "k": 5})
                    with lock:
                        statuses.append(r.status_code)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        # another process changes the index: the CLI's delete, then an add
        subprocess.run(
            [sys.executable, "-m", "bgekit.cli.main", "index", "delete", "d3", "--index", str(root)],
            check=True,
            capture_output=True,
        )
        _wait_for(lambda: "d3" not in _ids(client, url, "document number 3"))
        with Index.edit(root, emb) as index:
            index.add([Document("new", "a brand new zebra document")])
        _wait_for(lambda: "new" in _ids(client, url, "zebra"))
        stop.set()
        for t in threads:
            t.join()
        info = client.get(f"{url}/info").json()["index"]
        assert (info["generation"], info["documents"], info["reload_error"]) == ("gen-000003", 12, None)
        assert sum(info["disk_bytes"].values()) > 0
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {sorted(set(statuses))}"


def test_a_damaged_generation_is_refused_and_the_old_one_served(served: tuple[Embedder, Path]) -> None:
    emb, root = served
    app = create_app(ServerConfig(index_poll=0), embedder=emb, index=Index.load(root, emb))
    with live(app) as url, httpx.Client(timeout=60) as client:
        before = _ids(client, url, "document")
        with Index.edit(root, emb) as index:
            index.delete(["d0"])
        manifest = json.loads((root / "manifest.json").read_text())
        (root / manifest["generation"] / "chunk_doc.npy").write_bytes(b"junk")
        resp = client.post(f"{url}/admin/reload")
        assert resp.status_code == 422
        message = resp.json()["error"]["message"]
        assert "gen-000002/chunk_doc.npy" in message and message.endswith("(still serving gen-000001)")
        assert _ids(client, url, "document") == before
        info = client.get(f"{url}/info").json()["index"]
        assert info["generation"] == "gen-000001" and info["reload_error"] == message
        # a junk manifest: /info still answers, the old generation is still served
        (root / "manifest.json").write_text("[]")
        assert client.post(f"{url}/admin/reload").status_code == 422
        assert client.get(f"{url}/info").status_code == 200
        assert _ids(client, url, "document") == before
        # repaired (a new save): served on the next look
        index = Index(emb, IndexConfig(outputs=("dense", "sparse")))
        index.add(_docs(5))
        index.save(root)
        resp = client.post(f"{url}/admin/reload")
        assert resp.status_code == 200 and resp.json() == {
            "generation": "gen-000003",
            "reloaded": True,
            "documents": 5,
        }
        assert sorted(_ids(client, url, "document")) == [f"d{i}" for i in range(5)]
        assert client.post(f"{url}/admin/reload").json()["reloaded"] is False


def test_reload_needs_the_key_and_a_saved_index(served: tuple[Embedder, Path]) -> None:
    emb, root = served
    app = create_app(ServerConfig(api_key=KEY, index_poll=0), embedder=emb, index=Index.load(root, emb))
    with live(app) as url:
        assert httpx.post(f"{url}/admin/reload").status_code == 401
    unsaved = Index(emb)
    unsaved.add(_docs(2))
    with live(create_app(ServerConfig(), embedder=emb, index=unsaved)) as url:
        resp = httpx.post(f"{url}/admin/reload")
        assert resp.status_code == 404 and "no saved index" in resp.json()["error"]["message"]


def test_the_poll_interval_comes_from_the_command_line_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bgekit.cli.main import build_parser

    assert build_parser().parse_args(["serve", "--index-poll", "0.5"]).index_poll == 0.5
    monkeypatch.setenv("BGEKIT_INDEX_POLL", "0")
    assert build_parser().parse_args(["serve"]).index_poll == 0.0
    with pytest.raises(Exception, match="index_poll must be 0"):
        ServerConfig(index_poll=-1)
