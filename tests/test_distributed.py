"""Distributed encoding on a real local Ray cluster (2 CPUs, loopback only): shards equal to
the one-process encode, a worker killed mid-run, a killed run resumed, and indexes (embedded,
Qdrant, Milvus) built from the shards returning what an index built directly returns."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, EngineConfig, Index, IndexConfig, InputError
from bgekit.cli.main import main
from bgekit.distributed import RayEncodeConfig, encode_on_ray, read_shards
from bgekit.distributed.load import load_shards
from bgekit.distributed.ray_encode import ShardEncoder, finish_folder, prepare_folder, shard_header
from bgekit.distributed.shards import MANIFEST, shard_files
from bgekit.index.adapters import MilvusBackend, QdrantBackend, VectorDBIndex
from bgekit.retrieval import HybridConfig

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parent.parent
N_DOCS = 300
FP32 = EngineConfig(dtype="float32", progress=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster on this machine's 2 CPUs, reachable on loopback only."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def scifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The first N_DOCS SciFact abstracts as JSONL."""
    rows = []
    with (ROOT / "data/scifact/corpus.jsonl").open(encoding="utf-8") as f:
        for line in itertools.islice(f, N_DOCS):
            r = json.loads(line)
            rows.append({"_id": r["_id"], "title": r["title"], "text": r["text"]})
    path = tmp_path_factory.mktemp("scifact") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


@pytest.fixture(scope="module")
def reference(minilm: Path, scifact: tuple[Path, list[dict]]) -> dict[str, np.ndarray]:
    """The one-process encode of the same records (what ``bgekit encode`` writes)."""
    _, rows = scifact
    emb = Embedder.from_pretrained(str(minilm), engine=FP32)
    dense = emb.encode([f"{r['title']} {r['text']}".strip() for r in rows]).dense
    assert dense is not None
    return {r["_id"]: dense[i] for i, r in enumerate(rows)}


def _config(minilm: Path, **kw: object) -> RayEncodeConfig:
    return RayEncodeConfig(model=str(minilm), engine=FP32, **kw)  # type: ignore[arg-type]


def _assert_matches(root: Path, reference: dict[str, np.ndarray]) -> None:
    shards = read_shards(root)
    assert sorted(shards.ids) == sorted(reference)  # every record once: none lost, none twice
    assert shards.encoded.dense is not None
    for i, row in zip(shards.ids, shards.encoded.dense, strict=True):
        np.testing.assert_allclose(row, reference[i], atol=1e-6, rtol=0)


def _encoder_pids() -> list[int]:
    """Live processes of encoder actors (Ray titles them after the actor class)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if b"ShardEncoder" in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


def _wait_for_shards(root: Path, n: int, done: threading.Event | None = None, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while len(shard_files(root)) < n:
        if time.monotonic() > end or (done is not None and done.is_set()):
            raise AssertionError(f"{root}: fewer than {n} shards appeared")
        time.sleep(0.02)


def test_worker_killed_mid_run_loses_and_repeats_nothing(
    cluster: str,
    minilm: Path,
    scifact: tuple[Path, list[dict]],
    reference: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    src, _ = scifact
    out = tmp_path / "shards"
    result: dict[str, object] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            result["report"] = encode_on_ray(
                str(src), out, _config(minilm, replicas=2, cpus_per_replica=0.9, shard_rows=10)
            )
        except BaseException as e:  # handed to the test thread
            result["error"] = e
        finally:
            finished.set()

    thread = threading.Thread(target=run)
    thread.start()
    _wait_for_shards(out, 3, finished)
    pids = _encoder_pids()
    assert pids, "no encoder actor is alive"
    os.kill(pids[0], signal.SIGKILL)  # a worker dies in the middle of the run
    written_at_kill = len(shard_files(out))
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert written_at_kill < N_DOCS // 10  # the kill came before the end
    assert report.rows == N_DOCS and report.new_rows == N_DOCS and report.resumed_rows == 0  # type: ignore[attr-defined]
    assert pids[0] not in _encoder_pids()
    _assert_matches(out, reference)


def test_killed_run_resumes_and_skips_finished_shards(
    cluster: str,
    minilm: Path,
    scifact: tuple[Path, list[dict]],
    reference: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    src, _ = scifact
    out = tmp_path / "shards"
    script = (
        "import sys\n"
        "from bgekit import EngineConfig\n"
        "from bgekit.distributed import RayEncodeConfig, encode_on_ray\n"
        "cfg = RayEncodeConfig(model=sys.argv[1], engine=EngineConfig(dtype='float32', progress=False), "
        "shard_rows=10, address=sys.argv[4])\n"
        "encode_on_ray(sys.argv[2], sys.argv[3], cfg)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script, str(minilm), str(src), str(out), cluster],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_shards(out, 4)
    finally:
        driver.send_signal(signal.SIGKILL)  # the whole run dies: driver, then its actors
        driver.wait()
    time.sleep(2)  # let Ray reap the dead job's actors
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard_files(out)}
    assert 4 <= len(before) < N_DOCS // 10 and not (out / MANIFEST).exists()
    report = encode_on_ray(str(src), out, _config(minilm, shard_rows=10))
    kept = sum(len(read_shard_ids(out / n)) for n in before)
    assert report.resumed_rows == kept and report.new_rows == N_DOCS - kept and report.rows == N_DOCS
    for name, (mtime, data) in before.items():  # finished shards were not redone
        assert (out / name).stat().st_mtime_ns == mtime and (out / name).read_bytes() == data
    _assert_matches(out, reference)
    # a finished folder run again encodes nothing
    again = encode_on_ray(str(src), out, _config(minilm, shard_rows=10))
    assert (again.new_rows, again.resumed_rows, again.rows) == (0, N_DOCS, N_DOCS)


def read_shard_ids(path: Path) -> list[str]:
    from bgekit.distributed.shards import shard_ids

    return shard_ids(path)


def test_cli_encode_ray_parquet_and_errors(
    cluster: str,
    minilm: Path,
    scifact: tuple[Path, list[dict]],
    reference: dict[str, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, rows = scifact
    src = tmp_path / "in"
    src.mkdir()
    for n in range(2):  # a folder of Parquet files
        part = rows[n * 20 : (n + 1) * 20]
        pq.write_table(
            pa.table({k: [r[k] for r in part] for k in ("_id", "title", "text")}), src / f"p{n}.parquet"
        )
    out = tmp_path / "shards"
    code = main(
        [
            "encode",
            "--ray",
            "--input",
            str(src),
            "--output",
            str(out),
            "--model",
            str(minilm),
            "--shard-rows",
            "16",
            "--dtype",
            "float32",
        ]
    )
    assert code == 0 and "encoded 40 records" in capsys.readouterr().out
    shards = read_shards(out)
    assert sorted(shards.ids) == sorted(r["_id"] for r in rows[:40])
    assert shards.encoded.dense is not None
    for i, row in zip(shards.ids, shards.encoded.dense, strict=True):
        np.testing.assert_allclose(row, reference[i], atol=1e-6, rtol=0)
    # another model's run may not add to this folder
    with pytest.raises(InputError, match="holds shards made with another kind 'document'"):
        encode_on_ray(str(src), out, _config(minilm, kind="query"))
    # records without ids: one line naming the problem
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no id here"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="need an id"):
        encode_on_ray(str(bad), tmp_path / "bad-out", _config(minilm))
    with pytest.raises(InputError, match="missing input"):
        encode_on_ray(str(tmp_path / "nope.jsonl"), tmp_path / "x", _config(minilm))
    with pytest.raises(InputError, match="cannot tell the input format"):
        encode_on_ray(str(_touch(tmp_path / "a.csv")), tmp_path / "y", _config(minilm))


def _touch(p: Path) -> Path:
    p.write_text("x\n")
    return p


# -- shards to indexes (no Ray needed: the actor class run in this process) ----------------


ALL = ("dense", "sparse", "multivector")


def _docs() -> list[Document]:
    from tests.test_eval import DOCS

    return [Document(d, text, title, {"n": i}) for i, (d, (title, text)) in enumerate(DOCS.items())]


def _local_shards(model: Path, docs: list[Document], root: Path, rows: int = 3) -> None:
    """Shards written by the Ray actor class, called here batch by batch."""
    config = RayEncodeConfig(model=str(model), outputs=ALL, shard_rows=rows)
    header = shard_header(config)
    prepare_folder(root, header)
    actor = ShardEncoder(config, header, str(root), np.zeros(0, np.uint64))
    for start in range(0, len(docs), rows):
        part = docs[start : start + rows]
        actor(
            {
                "_id": np.array([d.id for d in part], dtype=object),
                "title": np.array([d.title for d in part], dtype=object),
                "text": np.array([d.text for d in part], dtype=object),
                "metadata": np.array([d.metadata for d in part], dtype=object),
            }
        )
    finish_folder(root, header)


QUERIES = ["cats and dogs at home", "stock market news", "fast brown fox"]


def _hits(index: object, mode: str) -> list[list[tuple[str, float]]]:
    got = index.search(QUERIES, 4, mode=mode, hybrid=HybridConfig(candidates=None))  # type: ignore[attr-defined]
    return [[(h.id, round(h.score, 5)) for h in r] for r in got]


def test_index_from_shards_returns_the_hits_of_a_direct_build(
    bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m3 = Embedder.from_pretrained(str(bert_m3))
    docs = _docs()
    _local_shards(bert_m3, docs, tmp_path / "shards")
    direct = Index(m3, IndexConfig(outputs=ALL))
    direct.add(docs)
    built = Index(m3, IndexConfig(outputs=ALL))
    report = load_shards(built, tmp_path / "shards")
    assert (report.documents, report.chunks) == (len(docs), len(docs))
    for mode in ("dense", "sparse", "multivector", "hybrid"):
        assert _hits(built, mode) == _hits(direct, mode)
    assert [built._docs[built._doc_pos[d.id]].metadata for d in docs] == [d.metadata for d in docs]
    # the CLI: index build --from-encoded, then search it
    code = main(
        [
            "index",
            "build",
            "--from-encoded",
            str(tmp_path / "shards"),
            "--index",
            str(tmp_path / "ix"),
            "--model",
            str(bert_m3),
            "--dense-dtype",
            "int8",
        ]
    )
    assert code == 0
    loaded = Index.load(tmp_path / "ix", m3)
    assert loaded.outputs == ALL and loaded._dense is not None and loaded._dense.dtype == "int8"
    assert [h[0] for h in _hits(loaded, "sparse")[0]] == [h[0] for h in _hits(direct, "sparse")[0]]
    assert (
        main(
            [
                "index",
                "build",
                "src",
                "--from-encoded",
                str(tmp_path / "shards"),
                "--index",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "give either a source to index or --from-encoded" in capsys.readouterr().err


def test_bulk_load_into_qdrant_and_milvus_from_shards(bert_m3: Path, tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    pytest.importorskip("pymilvus")
    m3 = Embedder.from_pretrained(str(bert_m3))
    docs = _docs()
    _local_shards(bert_m3, docs, tmp_path / "shards", rows=2)
    for name, backend, outputs in (
        ("qdrant", QdrantBackend(str(tmp_path / "qdrant")), ALL),
        ("milvus", MilvusBackend(str(tmp_path / "milvus.db")), ("dense", "sparse")),
    ):
        direct_backend = (
            QdrantBackend(str(tmp_path / f"{name}-direct"))
            if name == "qdrant"
            else MilvusBackend(str(tmp_path / f"{name}-direct.db"))
        )
        with (
            VectorDBIndex(m3, backend, IndexConfig(outputs=outputs)) as loaded,
            VectorDBIndex(m3, direct_backend, IndexConfig(outputs=outputs)) as direct,
        ):
            report = load_shards(loaded, tmp_path / "shards", streaming=True)
            direct.add(docs)
            assert report.documents == len(docs)
            for mode in ("dense", "sparse"):
                got = [[h.id for h in r] for r in loaded.search(QUERIES, 4, mode=mode)]  # type: ignore[arg-type]
                want = [[h.id for h in r] for r in direct.search(QUERIES, 4, mode=mode)]  # type: ignore[arg-type]
                assert got == want, (name, mode)
            with pytest.raises(InputError, match="already in the index"):
                load_shards(loaded, tmp_path / "shards", streaming=True)


def test_shard_folder_errors(bert_m3: Path, xlmr_m3: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    _local_shards(bert_m3, _docs(), root)
    with pytest.raises(InputError, match=r"was encoded with .* is a different model"):
        load_shards(Index(Embedder.from_pretrained(str(xlmr_m3)), IndexConfig(outputs=ALL)), root)
    # the same id in two batches (the input repeats it): refused when the run ends
    config = RayEncodeConfig(model=str(bert_m3), outputs=ALL)
    header = shard_header(config)
    actor = ShardEncoder(config, header, str(root), np.zeros(0, np.uint64))
    actor({"id": np.array(["d0-again", "x"], dtype=object), "text": np.array(["a", "b"], dtype=object)})
    actor({"id": np.array(["d0-again"], dtype=object), "text": np.array(["c"], dtype=object)})
    with pytest.raises(InputError, match=r"1 ids occur twice .* 'd0-again'"):
        finish_folder(root, header)
    (root / MANIFEST).unlink(missing_ok=True)
    with pytest.raises(InputError, match="unfinished encode run"):
        read_shards(root)
    with pytest.raises(InputError, match="holds no encoded shards"):
        read_shards(_mkdir(tmp_path / "empty"))
    with pytest.raises(InputError, match="no such folder"):
        read_shards(tmp_path / "missing")


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def test_importing_bgekit_or_its_shard_reader_does_not_import_ray() -> None:
    code = (
        "import sys, bgekit, bgekit.distributed, bgekit.distributed.load\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "import bgekit.cli.main\n"
        "assert 'ray' not in sys.modules, 'the CLI imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
