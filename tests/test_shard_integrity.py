"""Encoded shards against damage (issue 22, item 4): a changed byte anywhere in a shard, rows
of other ids under a shard's name, a truncated or unreadable shard, or a file of another
schema is refused on build with one line naming the file; a resumed encode removes such a
shard (a log line names it) and encodes its records again."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bgekit import Embedder, EngineConfig, Index, IndexConfig, InputError
from bgekit.cli.main import main
from bgekit.distributed import RayEncodeConfig, read_shards
from bgekit.distributed.load import load_shards
from bgekit.distributed.ray_encode import ShardEncoder, finish_folder, prepare_folder, shard_header
from bgekit.distributed.shards import (
    MANIFEST,
    ShardHeader,
    file_sha256,
    iter_shards,
    shard_files,
    shard_ids,
    shard_table,
    sum_path,
    verify_shards,
    write_shard,
)
from bgekit.types import Encoded, SparseVec

HAS_RAY = importlib.util.find_spec("ray") is not None
if HAS_RAY:  # the Ray test reuses test_distributed's local cluster and SciFact records
    from tests import test_distributed as td

    cluster, scifact, reference = td.cluster, td.scifact, td.reference

ALL = ("dense", "sparse", "multivector")
HEADER = ShardHeader("fp-test", "test-model", ALL, "document", "truncate")


def _encoded(rng: np.random.Generator, n: int) -> Encoded:
    sparse = []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        sparse.append(SparseVec(np.sort(rng.choice(100, k, replace=False)), rng.random(k).astype(np.float32)))
    multi = [rng.standard_normal((int(rng.integers(1, 5)), 4)).astype(np.float32) for _ in range(n)]
    return Encoded(rng.standard_normal((n, 8)).astype(np.float32), sparse, multi)


def _folder(root: Path, shards: int = 3, rows: int = 5) -> dict[str, np.ndarray]:
    """A finished folder written as an encode run writes it; returns each id's dense vector."""
    rng = np.random.default_rng(0)
    dense: dict[str, np.ndarray] = {}
    for s in range(shards):
        ids = [f"doc{s}-{i}" for i in range(rows)]
        enc = _encoded(rng, rows)
        assert enc.dense is not None
        texts = [f"text of {i}" for i in ids]
        meta = [json.dumps({"n": i}) for i in range(rows)]
        write_shard(root, shard_table(HEADER, ids, enc, titles=ids, texts=texts, metadata=meta))
        dense.update(zip(ids, enc.dense, strict=True))
    finish_folder(root, HEADER)
    return dense


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "shards"
    return root, _folder(root)


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def _forge_sum(root: Path, path: Path) -> None:
    """Record ``path``'s present bytes as its checksum (beside it and in the manifest), as if
    its writer had written them: only the checks past the checksum are left."""
    digest = file_sha256(path)
    sum_path(path).write_text(f"{digest}  {path.name}\n")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["sha256"][path.name] = digest
    (root / MANIFEST).write_text(json.dumps(manifest))


def _refused(root: Path, match: str) -> None:
    """Every reader refuses the folder with one line matching ``match``."""
    for read in (read_shards, verify_shards, lambda r: list(iter_shards(r))):
        with pytest.raises(InputError, match=match) as e:
            read(root)
        assert "\n" not in str(e.value)


def test_a_finished_folder_reads_back_and_records_each_shards_sha256(
    folder: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, dense = folder
    got = read_shards(root)
    assert got.encoded.dense is not None and sorted(got.ids) == sorted(dense)
    for i, row in zip(got.ids, got.encoded.dense, strict=True):
        np.testing.assert_array_equal(row, dense[i])
    manifest = json.loads((root / MANIFEST).read_text())
    files = shard_files(root)
    assert manifest["sha256"] == {p.name: file_sha256(p) for p in files}
    # the checksum file beside each shard is in ``sha256sum -c``'s format
    assert all(sum_path(p).read_text() == f"{file_sha256(p)}  {p.name}\n" for p in files)
    assert verify_shards(root) == len(dense)


def test_a_byte_changed_anywhere_in_a_shard_is_refused_naming_the_file(
    folder: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, _ = folder
    name = shard_files(root)[1].name
    size = (root / name).stat().st_size
    for pos in sorted(
        {0, 1, size // 3, size // 2, size - 9, size - 5, size - 1, *range(4, size, size // 12)}
    ):
        copy = tmp_path / f"flip-{pos}"
        shutil.copytree(root, copy)
        _flip(copy / name, pos)
        _refused(copy, f"{name} has changed since it was written")


def test_a_truncated_shard_is_refused(folder: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder
    path = shard_files(root)[0]
    path.write_bytes(path.read_bytes()[:100])
    _refused(root, f"{path.name} has changed since it was written")
    _forge_sum(root, path)  # even with a matching checksum: one line, not pyarrow's error
    _refused(root, f"{path.name} is not a readable Parquet file")


def test_a_shard_rewritten_with_other_ids_is_refused(folder: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder
    path = shard_files(root)[0]
    table = pq.read_table(path)
    other = table.set_column(0, "id", pa.array([f"foreign-{i}" for i in range(table.num_rows)]))
    pq.write_table(other.replace_schema_metadata(table.schema.metadata), path)
    _refused(root, f"{path.name} has changed since it was written")
    _forge_sum(root, path)
    _refused(root, f"{path.name} holds ids that do not hash to its name")


@pytest.mark.parametrize(
    ("what", "change", "says"),
    [
        ("a missing column", lambda t: t.drop_columns(["sparse_values"]), "it has no column 'sparse_values'"),
        (
            "dense as a list of doubles",
            lambda t: t.set_column(
                t.schema.get_field_index("dense"),
                "dense",
                pa.array(t.column("dense").to_pylist(), type=pa.list_(pa.float64())),
            ),
            r"its column 'dense' is list<.*double>, not fixed_size_list<.*float>\[8\]",
        ),
        (
            "dense of another size",
            lambda t: t.set_column(
                t.schema.get_field_index("dense"),
                "dense",
                pa.array([v[:4] for v in t.column("dense").to_pylist()], type=pa.list_(pa.float32(), 4)),
            ),
            r"its column 'dense' is fixed_size_list<.*float>\[4\], not fixed_size_list<.*float>\[8\]",
        ),
        (
            "text as numbers",
            lambda t: t.set_column(t.schema.get_field_index("text"), "text", pa.array(range(5))),
            "its column 'text' is int64",
        ),
    ],
)
def test_a_shard_of_another_schema_is_one_line_naming_the_file(
    folder: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, what: str, change: object, says: str
) -> None:
    root, _ = folder
    path = shard_files(root)[0]
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)  # type: ignore[operator]
    _forge_sum(root, path)  # bgekit's metadata, a matching checksum: only the columns are wrong
    _refused(root, f"{path.name} is not a shard of this folder: {says}")
    # written by an encode run's writer, it is refused when the run ends
    unfinished = tmp_path / "unfinished"
    shutil.copytree(root, unfinished)
    (unfinished / MANIFEST).unlink()
    with pytest.raises(InputError, match=r"shard-\w+\.parquet is not a shard of this folder"):
        finish_folder(unfinished, HEADER)  # (of two sizes, the one read second is named)


def test_a_manifest_of_an_older_bgekit_is_refused(folder: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder
    manifest = json.loads((root / MANIFEST).read_text())
    del manifest["sha256"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    _refused(root, "records no shard checksums .* rerun the encode into this folder")


def test_resume_removes_damaged_shards_and_their_records_are_encoded_again(
    bert_m3: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The encode run's own steps (prepare, the actor's batches, finish) without Ray."""
    config = RayEncodeConfig(
        model=str(bert_m3), outputs=ALL, shard_rows=4, engine=EngineConfig(dtype="float32", progress=False)
    )
    header = shard_header(config)
    records = [(f"r{i}", f"record {i} about cats, dogs and the stock market {i * 13}") for i in range(20)]

    def run(root: Path) -> tuple[int, int]:
        done = prepare_folder(root, header)
        actor = ShardEncoder(config, header, str(root), done)
        new = 0
        for start in range(0, len(records), 4):
            part = records[start : start + 4]
            ids = np.array([r[0] for r in part], dtype=object)
            out = actor({"id": ids, "text": np.array([r[1] for r in part], dtype=object)})
            new += int(out["rows"][0])
        finish_folder(root, header)
        return len(done), new

    root = tmp_path / "shards"
    assert run(root) == (0, 20)
    want = read_shards(root)
    files = shard_files(root)
    flipped, truncated, unsummed = files[0], files[1], files[2]
    _flip(flipped, flipped.stat().st_size // 2)
    truncated.write_bytes(truncated.read_bytes()[:50])
    sum_path(unsummed).unlink()  # as a shard of a bgekit without checksum files
    (root / "shard-0000.parquet.sha256").write_text("0" * 64)  # its shard never renamed in
    kept = {p.name: p.read_bytes() for p in files[3:]}
    with caplog.at_level(logging.WARNING, logger="bgekit"):
        assert run(root) == (8, 12)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 3 and all("removed, its records are encoded again" in s for s in said)
    assert any(f"{flipped.name} has changed since it was written" in s for s in said)
    assert any(f"{truncated.name} has changed since it was written" in s for s in said)
    assert any(f"{unsummed.name} has no checksum file" in s for s in said)
    assert not (root / "shard-0000.parquet.sha256").exists()
    assert all((root / n).read_bytes() == b for n, b in kept.items())  # intact shards were kept as they were
    got = read_shards(root)  # the whole folder verifies
    assert sorted(got.ids) == sorted(want.ids) == sorted(r[0] for r in records)  # every id once
    assert got.encoded.dense is not None and want.encoded.dense is not None
    order = {i: k for k, i in enumerate(want.ids)}
    for k, i in enumerate(got.ids):
        np.testing.assert_allclose(got.encoded.dense[k], want.encoded.dense[order[i]], atol=1e-6, rtol=0)


def test_resume_refuses_and_keeps_a_folder_of_another_run(bert_m3: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    _folder(root)
    (root / MANIFEST).unlink()
    sum_path(shard_files(root)[0]).unlink()  # no checksum: still another run's, never removed
    before = sorted(p.name for p in root.iterdir())
    header = shard_header(RayEncodeConfig(model=str(bert_m3), outputs=ALL))
    with pytest.raises(InputError, match="holds shards made with another fingerprint"):
        prepare_folder(root, header)
    assert sorted(p.name for p in root.iterdir()) == before


def test_streaming_load_checks_every_shard_before_adding_any(
    folder: tuple[Path, dict[str, np.ndarray]], bert_m3: Path
) -> None:
    root, _ = folder
    last = shard_files(root)[-1]
    _flip(last, last.stat().st_size // 2)
    index = Index(Embedder.from_pretrained(str(bert_m3)), IndexConfig(outputs=ALL))
    with pytest.raises(InputError, match=f"{last.name} has changed"):
        load_shards(index, root, streaming=True)
    assert len(index._docs) == 0


def test_cli_index_build_from_a_damaged_folder_is_one_line(
    folder: tuple[Path, dict[str, np.ndarray]],
    bert_m3: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = folder
    path = shard_files(root)[1]
    _flip(path, path.stat().st_size // 2)
    argv = [
        "index",
        "build",
        "--from-encoded",
        str(root),
        "--index",
        str(tmp_path / "ix"),
        "--model",
        str(bert_m3),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "Traceback" not in err
        and f"{path.name} has changed since it was written" in err
    )
    assert not (tmp_path / "ix").exists()


@pytest.mark.skipif(not HAS_RAY, reason="needs ray")
def test_ray_resume_reencodes_a_corrupted_and_a_truncated_shard(
    cluster: str,
    minilm: Path,
    scifact: tuple[Path, list[dict]],
    reference: dict[str, np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bgekit.distributed import encode_on_ray

    src, _ = scifact
    out = tmp_path / "shards"
    assert encode_on_ray(str(src), out, td._config(minilm, shard_rows=50)).rows == td.N_DOCS
    files = shard_files(out)
    damaged = len(shard_ids(files[0])) + len(shard_ids(files[1]))
    _flip(files[0], files[0].stat().st_size // 2)
    files[1].write_bytes(files[1].read_bytes()[: files[1].stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="bgekit"):
        report = encode_on_ray(str(src), out, td._config(minilm, shard_rows=50))
    assert (report.resumed_rows, report.new_rows, report.rows) == (td.N_DOCS - damaged, damaged, td.N_DOCS)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert files[0].name in said and files[1].name in said
    td._assert_matches(out, reference)  # every id once, vectors of the one-process encode
