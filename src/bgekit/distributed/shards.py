"""Encoded shards: Parquet files of one row per record — ``id``, the outputs (``dense`` a
fixed-size list; ``sparse_indices`` / ``sparse_values`` lists; ``multivector`` a list of
fixed-size lists, i.e. values + offsets), optionally ``title`` / ``text`` / ``metadata``
(JSON) — with the model fingerprint, outputs and kind in the file's schema metadata.

Shards of index rows (``encode --ray --as-index``) hold one row per chunk, as
:func:`bgekit.index.rows.chunk_rows` makes them: the document's ``id``, ``title`` and
``metadata`` on each of its rows (all in one shard), ``chunk`` (0, 1, ...), ``token_start`` /
``token_stop`` (among its text's tokens), ``text`` (the chunk's); the header records the
chunk settings (:class:`~bgekit.index.rows.ChunkSettings`).

A shard is named by a hash of its ids (a retried block writes the same name again) and
written atomically (a temporary file renamed into place), so a folder only ever holds whole
shards. The sha256 of its bytes goes first into ``<name>.sha256`` (``sha256sum -c`` reads
it), so every shard in a folder has its checksum beside it, even in a killed run. A finished
run adds ``manifest.json`` naming every shard with its sha256; :func:`read_shards` reads
finished folders only, and checks each shard's bytes, columns and ids (which must hash to its
name) before using it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bgekit.errors import InputError
from bgekit.index.rows import ChunkSettings
from bgekit.io import atomic_write
from bgekit.types import Encoded, OutputKind, SparseVec

FORMAT = 1
MANIFEST = "manifest.json"
PREFIX = "shard-"
SUM_SUFFIX = ".sha256"
META_KEY = b"bgekit"
# Bytes read at a time when hashing a shard.
HASH_CHUNK = 1 << 20
# The columns that place a row of an index-row shard within its document.
CHUNK_COLUMNS = {"chunk": pa.int32(), "token_start": pa.int64(), "token_stop": pa.int64()}


@dataclass(frozen=True)
class ShardHeader:
    """What every shard of one run shares; a resumed run must match it. ``chunking``: the
    chunk settings of shards of index rows (one row per chunk); ``None``: one row per record."""

    fingerprint: str
    model: str
    outputs: tuple[OutputKind, ...]
    kind: str
    long_input: str
    chunking: ChunkSettings | None = None

    @property
    def rows(self) -> str:
        """What a row is: ``"chunks"`` (an index's rows) or ``"records"``."""
        return "records" if self.chunking is None else "chunks"

    def to_json(self) -> str:
        body = {**asdict(self), "outputs": list(self.outputs), "format": FORMAT}
        if self.chunking is None:  # what bgekit wrote before index rows: older readers read it
            del body["chunking"]
        return json.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes | str, where: str) -> ShardHeader:
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT:
                raise InputError(f"{where}: shard format {d.get('format')}; this bgekit reads {FORMAT}")
            chunking = d.get("chunking")
            return cls(
                d["fingerprint"],
                d["model"],
                tuple(d["outputs"]),
                d["kind"],
                d["long_input"],
                None if chunking is None else ChunkSettings.from_dict(chunking, where),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{where}: not a bgekit shard ({e})") from None

    def differs(self, other: ShardHeader) -> str | None:
        """What makes ``other`` (a shard already written) unusable with this run, if anything."""
        for key in ("fingerprint", "outputs", "kind", "long_input"):
            if getattr(self, key) != getattr(other, key):
                return f"{key} {getattr(other, key)!r} (this run: {getattr(self, key)!r})"
        if self.rows != other.rows:
            return f"layout: one row per {other.rows[:-1]} (this run: one per {self.rows[:-1]})"
        if self.chunking is not None and other.chunking is not None:
            diff = self.chunking.difference(other.chunking)
            if diff is not None:
                return f"{diff[0]} {diff[2]!r} (this run: {diff[1]!r})"
        return None


def shard_name(ids: Sequence[str]) -> str:
    """``shard-<hash of the ids>.parquet``: the same rows always get the same name."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8") + b"\0")
    return f"{PREFIX}{h.hexdigest()[:20]}.parquet"


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """64-bit hashes of ids (for the set of finished ids a resumed run skips)."""
    out = np.empty(len(ids), dtype=np.uint64)
    for j, i in enumerate(ids):
        out[j] = int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little")
    return out


def _list_of(values: np.ndarray, counts: Sequence[int], type_: pa.DataType) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=type_))


def shard_table(
    header: ShardHeader,
    ids: Sequence[str],
    enc: Encoded,
    *,
    titles: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    metadata: Sequence[str] | None = None,
    chunks: Sequence[tuple[int, int, int]] | None = None,
) -> pa.Table:
    """One shard's table: ``ids[i]``'s outputs in row ``i``; ``chunks`` (shards of index
    rows): each row's (chunk number, first token, token past the last)."""
    cols: dict[str, pa.Array] = {"id": pa.array(list(ids), type=pa.string())}
    if chunks is not None:
        placed = np.asarray(chunks, dtype=np.int64).reshape(-1, 3)
        for j, (name, type_) in enumerate(CHUNK_COLUMNS.items()):
            cols[name] = pa.array(placed[:, j], type=type_)
    if enc.dense is not None:
        d = np.ascontiguousarray(enc.dense, dtype=np.float32)
        cols["dense"] = pa.FixedSizeListArray.from_arrays(pa.array(d.reshape(-1)), d.shape[1])
    if enc.sparse is not None:
        counts = [len(v) for v in enc.sparse]
        idx = np.concatenate([v.indices for v in enc.sparse] or [np.zeros(0)]).astype(np.int32)
        val = np.concatenate([v.values for v in enc.sparse] or [np.zeros(0)]).astype(np.float32)
        cols["sparse_indices"] = _list_of(idx, counts, pa.int32())
        cols["sparse_values"] = _list_of(val, counts, pa.float32())
    if enc.multivector is not None:
        width = enc.multivector[0].shape[1] if enc.multivector else 0
        flat = np.concatenate(enc.multivector).astype(np.float32) if enc.multivector else np.zeros((0, width))
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=pa.float32()), width)
        offsets = np.concatenate([[0], np.cumsum([m.shape[0] for m in enc.multivector])]).astype(np.int32)
        cols["multivector"] = pa.ListArray.from_arrays(pa.array(offsets), vectors)
    for name, col in (("title", titles), ("text", texts), ("metadata", metadata)):
        if col is not None:
            cols[name] = pa.array(list(col), type=pa.string())
    table = pa.table(cols)
    return table.replace_schema_metadata({META_KEY: header.to_json().encode()})


class _Hashing:
    """A file being written that hashes the bytes passing through (no second read)."""

    closed = False

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.pos += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        self.f.flush()


def sum_path(path: Path) -> Path:
    """The checksum file of the shard at ``path``."""
    return path.with_name(path.name + SUM_SUFFIX)


def write_shard(root: Path, table: pa.Table) -> str:
    """Write ``table`` into ``root`` atomically under its ids' name, its checksum file first
    (renamed into place before the shard is); returns the name."""
    name = shard_name(table.column("id").to_pylist())
    with atomic_write(root / name) as f:
        out = _Hashing(f)
        pq.write_table(table, out)
        with atomic_write(sum_path(root / name)) as s:
            s.write(f"{out.sha.hexdigest()}  {name}\n".encode())
    return name


def read_sum(path: Path) -> str | None:
    """The sha256 recorded beside the shard at ``path`` (None: no checksum file)."""
    try:
        raw = sum_path(path).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InputError(f"{sum_path(path)} cannot be read ({e.strerror})") from None
    return (raw.split() or [""])[0]


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read a chunk at a time."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise InputError(f"{path} cannot be read ({e.strerror})") from None
    return h.hexdigest()


def shard_files(root: Path) -> list[Path]:
    """The whole shards in ``root`` (temporary files of unfinished writes are not listed)."""
    return sorted(root.glob(f"{PREFIX}*.parquet")) if root.is_dir() else []


def _unreadable(path: Path, e: Exception) -> InputError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"{path} is not a readable Parquet file ({first})")


def _header_in(path: Path, schema: pa.Schema) -> ShardHeader:
    meta = schema.metadata or {}
    if META_KEY not in meta:
        raise InputError(f"{path} is not a bgekit shard (no bgekit schema metadata)")
    return ShardHeader.from_json(meta[META_KEY], str(path))


def header_of(path: Path) -> ShardHeader:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None
    return _header_in(path, schema)


def dims_of(path: Path) -> dict[str, int]:
    """Vector sizes of a shard's dense and multi-vector columns, from its schema."""
    return _dims(pq.read_schema(path))


def _dims(schema: pa.Schema) -> dict[str, int]:
    """Vector sizes in ``schema`` (columns of other types are left out, for the caller to refuse)."""
    dims = {}
    if "dense" in schema.names and pa.types.is_fixed_size_list(schema.field("dense").type):
        dims["dense"] = int(schema.field("dense").type.list_size)
    if "multivector" in schema.names:
        t = schema.field("multivector").type
        if pa.types.is_list(t) and pa.types.is_fixed_size_list(t.value_type):
            dims["multivector"] = int(t.value_type.list_size)
    return dims


def shard_ids(path: Path) -> list[str]:
    try:
        return [str(i) for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None


def _columns(
    header: ShardHeader, dims: Mapping[str, int] | None, schema: pa.Schema
) -> dict[str, pa.DataType]:
    """The columns a shard of ``header``'s run holds, by type (vector sizes from ``dims``, or
    from ``schema`` where ``dims`` is None; 0 where neither knows), text columns too where
    ``schema`` has them (shards of index rows always have them)."""
    outputs = header.outputs
    sizes = _dims(schema) if dims is None else dims
    want: dict[str, pa.DataType] = {"id": pa.string()}
    if header.chunking is not None:
        want |= CHUNK_COLUMNS | {n: pa.string() for n in ("title", "text", "metadata")}
    if "dense" in outputs:
        want["dense"] = pa.list_(pa.float32(), sizes.get("dense", 0))
    if "sparse" in outputs:
        want["sparse_indices"] = pa.list_(pa.int32())
        want["sparse_values"] = pa.list_(pa.float32())
    if "multivector" in outputs:
        want["multivector"] = pa.list_(pa.list_(pa.float32(), sizes.get("multivector", 0)))
    want.update({n: pa.string() for n in ("title", "text", "metadata") if n in schema.names})
    return want


def _check_schema(path: Path, schema: pa.Schema, header: ShardHeader, dims: Mapping[str, int] | None) -> None:
    """``schema`` is that of a shard of ``header``'s run with vector sizes ``dims``."""
    why = header.differs(_header_in(path, schema))
    if why:
        raise InputError(f"{path} was made with another {why}")
    for name, type_ in _columns(header, dims, schema).items():
        if name not in schema.names:
            raise InputError(f"{path} is not a shard of this folder: it has no column {name!r}")
        if schema.field(name).type != type_:
            want = str(type_).replace("[0]", "[n]")  # size 0: not known (see _columns)
            raise InputError(
                f"{path} is not a shard of this folder: its column {name!r} is "
                f"{schema.field(name).type}, not {want}"
            )


def read_checked(
    path: Path,
    sha256: str | None,
    header: ShardHeader,
    dims: Mapping[str, int] | None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """A shard's rows (``columns`` of them), once checked: its bytes hash to ``sha256``
    (unless None), its columns are those of ``header``'s outputs with vector sizes ``dims``
    (None: any), and its ids hash to its name; else an :class:`InputError` naming the file."""
    if sha256 is not None and file_sha256(path) != sha256:
        raise InputError(f"{path} has changed since it was written (its sha256 is not the one recorded)")
    try:
        with pq.ParquetFile(path) as f:
            schema = f.schema_arrow
            _check_schema(path, schema, header, dims)
            table = f.read(columns=None if columns is None else ["id", *(c for c in columns if c != "id")])
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None
    if shard_name([str(i) for i in table.column("id").to_pylist()]) != path.name:
        raise InputError(f"{path} holds ids that do not hash to its name (rows of another shard)")
    return table


def write_manifest(
    root: Path, header: ShardHeader, shards: Mapping[str, str], rows: int, dims: dict[str, int]
) -> None:
    """The manifest of a finished folder: ``shards`` maps each shard's name to its sha256."""
    body = {"format": FORMAT, "header": json.loads(header.to_json()), "rows": rows, "dims": dims}
    body["shards"] = sorted(shards)
    body["sha256"] = dict(sorted(shards.items()))
    with atomic_write(root / MANIFEST) as f:
        f.write((json.dumps(body, indent=2) + "\n").encode())


@dataclass(frozen=True)
class EncodedShards:
    """Every row of a finished shard folder, in shard-name order. Shards of index rows
    (``header.chunking``) also give each row's ``chunks``: (chunk number, first token,
    token past the last), and their ``texts`` are the chunks'."""

    header: ShardHeader
    ids: list[str]
    encoded: Encoded
    titles: list[str] | None
    texts: list[str] | None
    metadata: list[dict[str, Any]] | None
    dims: dict[str, int]
    chunks: list[tuple[int, int, int]] | None = None


def _lists(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """A list column as (offsets, flat values)."""
    arr = col.combine_chunks()
    offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return offsets - offsets[0], values


def _finished_folder(root: Path) -> tuple[ShardHeader, dict[str, str], int, dict[str, int]]:
    """A finished folder's header, shard names (with their sha256), row count and dims."""
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise InputError(f"no encoded shards at {root} (no such folder)")
    if not manifest_path.is_file():
        if shard_files(root):
            raise InputError(f"{root} holds an unfinished encode run (no {MANIFEST}); rerun it to finish")
        raise InputError(f"{root} holds no encoded shards")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        header = ShardHeader.from_json(json.dumps(manifest["header"]), str(manifest_path))
        names = [str(n) for n in manifest["shards"]]
        dims = {str(k): int(v) for k, v in manifest["dims"].items()}
        rows = int(manifest["rows"])
        recorded = manifest.get("sha256")
        sums = {str(n): str(recorded[n]) for n in names} if recorded is not None else {}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{manifest_path} is damaged ({e})") from None
    if recorded is None:
        raise InputError(
            f"{manifest_path} records no shard checksums (an older bgekit wrote it); rerun the "
            "encode into this folder: shards it cannot check are encoded again"
        )
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise InputError(
            f"{root}: {len(missing)} shard(s) named by {MANIFEST} are missing, e.g. {missing[0]}"
        )
    return header, sums, rows, dims


def read_header(root: str | Path) -> ShardHeader:
    """A finished folder's header (model, outputs, kind), checked."""
    return _finished_folder(Path(root))[0]


def _rows(header: ShardHeader, table: pa.Table, dims: dict[str, int]) -> EncodedShards:
    ids = [str(i) for i in table.column("id").to_pylist()]
    texts = table.column("text").to_pylist() if "text" in table.column_names else None
    titles = table.column("title").to_pylist() if "title" in table.column_names else None
    meta = None
    if "metadata" in table.column_names:
        meta = [json.loads(m) if m else {} for m in table.column("metadata").to_pylist()]
    chunks = None
    if header.chunking is not None:
        chunks = list(zip(*(table.column(n).to_pylist() for n in CHUNK_COLUMNS), strict=True))
    enc = _encoded(table, header.outputs, dims)
    return EncodedShards(header, ids, enc, titles, texts, meta, dims, chunks)


def read_shards(root: str | Path) -> EncodedShards:
    """Every row of a finished folder (its manifest names the shards), in shard-name order,
    each shard checked (:func:`read_checked`); errors name what is wrong."""
    root = Path(root)
    header, sums, rows, dims = _finished_folder(root)
    tables = [read_checked(root / n, s, header, dims) for n, s in sums.items()]
    table = pa.concat_tables(tables) if tables else pa.table({"id": pa.array([], type=pa.string())})
    if table.num_rows != rows:
        raise InputError(f"{root}: the shards hold {table.num_rows} rows, {MANIFEST} says {rows}")
    return _rows(header, table, dims)


def iter_shards(root: str | Path) -> Iterator[EncodedShards]:
    """A finished folder one shard at a time (for bulk loads that need not hold it all),
    each shard checked as it is read (:func:`verify_shards` checks them all first)."""
    root = Path(root)
    header, sums, _, dims = _finished_folder(root)
    for n, s in sums.items():
        yield _rows(header, read_checked(root / n, s, header, dims), dims)


def verify_shards(root: str | Path) -> int:
    """Check every shard of a finished folder (bytes, columns, ids) without decoding its
    vectors; returns the row count. Hashing reads every byte once."""
    root = Path(root)
    header, sums, rows, dims = _finished_folder(root)
    got = sum(read_checked(root / n, s, header, dims, columns=["id"]).num_rows for n, s in sums.items())
    if got != rows:
        raise InputError(f"{root}: the shards hold {got} rows, {MANIFEST} says {rows}")
    return rows


def _encoded(table: pa.Table, outputs: Sequence[OutputKind], dims: dict[str, int]) -> Encoded:
    n = table.num_rows
    dense = sparse = multi = None
    if "dense" in outputs:
        flat = table.column("dense").combine_chunks().flatten().to_numpy()
        dense = np.asarray(flat, dtype=np.float32).reshape(n, dims["dense"])
    if "sparse" in outputs:
        off, idx = _lists(table.column("sparse_indices"))
        _, val = _lists(table.column("sparse_values"))
        idx_np = np.asarray(idx.to_numpy(), dtype=np.int64)
        val_np = np.asarray(val.to_numpy(), dtype=np.float32)
        sparse = [SparseVec(idx_np[a:b], val_np[a:b]) for a, b in itertools.pairwise(off)]
    if "multivector" in outputs:
        off, vectors = _lists(table.column("multivector"))
        width = dims["multivector"]
        flat = np.asarray(vectors.flatten().to_numpy(), dtype=np.float32).reshape(-1, width)
        multi = [flat[a:b] for a, b in itertools.pairwise(off)]
    return Encoded(dense=dense, sparse=sparse, multivector=multi)
