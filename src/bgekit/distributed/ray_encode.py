"""Encoding on a Ray cluster: Ray Data reads JSONL or Parquet records (local paths or any
URI Ray reads), an actor pool runs bgekit's engine (one model replica per actor: per GPU,
or per ``cpus_per_replica`` CPU slots), and each actor writes its batches as shards
(:mod:`bgekit.distributed.shards`) and returns one summary row per shard. With an
``index_config`` the shards hold an index's rows: each record is checked, filtered, chunked
and encoded by :func:`bgekit.index.rows.chunk_rows`, the function ``Index.add`` calls.

Nothing is lost or written twice: a shard appears whole or not at all, and is named by its
ids, so a block Ray retries after a worker dies rewrites the same file. A run started on a
folder that already holds shards of the same model and settings skips the ids they hold
(a resumed run) once they check out: a shard whose bytes are not those its checksum file
records (or that has none), or whose columns or ids are wrong, is removed with a log line and
its records are encoded again. The run ends by checking that no id was written twice and
writing the folder's manifest with every shard's sha256.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bgekit.distributed import shards as sh
from bgekit.engine import EngineConfig
from bgekit.errors import InputError
from bgekit.index.documents import Document
from bgekit.index.rows import ChunkSettings, chunk_rows
from bgekit.inputs import passage_text
from bgekit.types import OUTPUT_KINDS, OutputKind

if TYPE_CHECKING:
    from bgekit.index import IndexConfig

logger = logging.getLogger(__name__)

InputFormat = Literal["auto", "jsonl", "parquet"]
# Log a line at most this often while shards arrive (seconds).
LOG_EVERY = 10.0
# CPU slots a read task asks for.
READ_CPUS = 0.1


@dataclass(frozen=True, kw_only=True)
class RayEncodeConfig:
    """One distributed encode. ``model``: hub id or folder every worker can read.
    ``replicas``: model copies (actors); each takes ``cpus_per_replica`` CPUs (rounded, its torch
    threads) and ``gpus_per_replica`` GPUs. ``shard_rows``: records per shard (and per
    encode call). ``keep_text``: store title / text / metadata beside the vectors (what
    ``bgekit index build --from-encoded`` needs). ``address``: the cluster to join
    (``ray.init(address)``); ``None`` uses the one this process joined, else starts a local one.
    ``index_config``: write an index's rows (one per chunk) instead of one row per record,
    made with its chunk settings (:class:`~bgekit.index.rows.ChunkSettings`: chunk tokens,
    overlap, chunking, max_document_chars, oversize) by the function ``Index.add`` calls; an
    index built from them with the same settings holds the chunks a direct build makes. Its
    outputs and storage settings are not used (the shards hold ``outputs``)."""

    model: str
    outputs: tuple[OutputKind, ...] = ("dense",)
    kind: Literal["query", "document"] = "document"
    settings: Any = None  # bgekit.models.EmbedderSettings (kept untyped: pickled to workers)
    engine: EngineConfig = field(default_factory=EngineConfig)
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    shard_rows: int = 1024
    keep_text: bool = True
    input_format: InputFormat = "auto"
    address: str | None = None
    index_config: IndexConfig | None = None

    def __post_init__(self) -> None:
        bad = [o for o in self.outputs if o not in OUTPUT_KINDS]
        if bad or not self.outputs:
            raise InputError(f"outputs must be from {', '.join(OUTPUT_KINDS)}, got {list(self.outputs)}")
        if self.kind not in ("query", "document"):
            raise InputError(f"kind must be 'query' or 'document', got {self.kind!r}")
        if self.replicas < 1:
            raise InputError(f"replicas must be at least 1, got {self.replicas}")
        if self.cpus_per_replica <= 0 or self.gpus_per_replica < 0:
            raise InputError("cpus_per_replica must be positive and gpus_per_replica not negative")
        if self.shard_rows < 1:
            raise InputError(f"shard_rows must be at least 1, got {self.shard_rows}")
        if self.input_format not in ("auto", "jsonl", "parquet"):
            raise InputError(f"input_format must be 'auto', 'jsonl' or 'parquet', got {self.input_format!r}")
        if self.index_config is not None and (self.kind != "document" or not self.keep_text):
            raise InputError("index rows are documents with their texts: kind 'document', keep_text on")


@dataclass(frozen=True)
class RayEncodeReport:
    """What a run did: records (documents) and shards in the folder now, those this run
    wrote, the records it skipped as already encoded (a resumed run), and its wall time.
    Index rows: ``chunks`` in the folder now, and the records this run left out for holding
    no text (``empty``) or for being over ``max_document_chars`` (``oversized``)."""

    rows: int
    shards: int
    new_rows: int
    new_shards: int
    resumed_rows: int
    seconds: float
    truncated: int = 0
    chunked: int = 0
    chunks: int = 0
    empty: int = 0
    oversized: int = 0


class ShardEncoder:
    """The Ray Data actor: loads the model once, then encodes and writes one shard per batch."""

    def __init__(self, config: RayEncodeConfig, header: sh.ShardHeader, root: str, done: Any) -> None:
        import torch

        from bgekit.models import Embedder

        torch.set_num_threads(max(1, round(config.cpus_per_replica)))
        self.config, self.header, self.root = config, header, Path(root)
        self.embedder = Embedder.from_pretrained(config.model, settings=config.settings, engine=config.engine)
        if type(done).__name__ == "ObjectRef":  # ids finished earlier, shared by every actor
            import ray

            done = ray.get(done)
        self.done = np.asarray(done)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, titles, texts, metadata = _records(batch)
        if len(self.done):
            keep = ~np.isin(sh.id_hashes(ids), self.done)
            skipped = int((~keep).sum())
            pick = np.nonzero(keep)[0].tolist()
            ids, titles, texts = [ids[i] for i in pick], [titles[i] for i in pick], [texts[i] for i in pick]
            metadata = [metadata[i] for i in pick]
        else:
            skipped = 0
        if not ids:
            return _summary("", 0, skipped)
        if self.config.index_config is not None:
            return self._index_rows(ids, titles, texts, metadata, skipped)
        encoded_texts = [passage_text(t, x) for t, x in zip(titles, texts, strict=True)]
        enc = self.embedder.encode(encoded_texts, kind=self.config.kind, outputs=self.config.outputs)
        keep_text = self.config.keep_text
        table = sh.shard_table(
            self.header,
            ids,
            enc,
            titles=titles if keep_text else None,
            texts=texts if keep_text else None,
            metadata=metadata if keep_text else None,
        )
        name = sh.write_shard(self.root, table)
        return _summary(name, len(ids), skipped, truncated=enc.truncated, chunked=enc.chunked)

    def _index_rows(
        self, ids: list[str], titles: list[str], texts: list[str], metadata: list[str], skipped: int
    ) -> dict[str, np.ndarray]:
        """The records as an index's rows (documents checked and chunked as ``Index.add`` does)."""
        assert self.config.index_config is not None
        docs = [
            Document(i, x, t, json.loads(m) if m else {})
            for i, t, x, m in zip(ids, titles, texts, metadata, strict=True)
        ]
        settings = ChunkSettings.of(self.config.index_config)
        rows = chunk_rows(docs, self.embedder, settings, self.config.outputs)
        left = {"empty": rows.skipped, "oversized": rows.oversized}
        if not rows.docs:
            return _summary("", 0, skipped, **left)
        kept = rows.docs
        meta = [json.dumps(d.metadata, ensure_ascii=False) if d.metadata else "" for d in kept]
        table = sh.shard_table(
            self.header,
            [kept[c.doc].id for c in rows.chunks],
            rows.enc,
            titles=[kept[c.doc].title for c in rows.chunks],
            texts=[c.text for c in rows.chunks],
            metadata=[meta[c.doc] for c in rows.chunks],
            chunks=[(c.no, *c.tokens) for c in rows.chunks],
        )
        name = sh.write_shard(self.root, table)
        counts = {"truncated": rows.enc.truncated, "chunked": rows.enc.chunked, "chunks": len(rows.chunks)}
        return _summary(name, len(kept), skipped, **counts, **left)


# What each summary row counts (besides the shard's name); one row per batch.
SUMMARY = ("rows", "skipped", "truncated", "chunked", "chunks", "empty", "oversized")


def _summary(name: str, rows: int, skipped: int, **counts: int) -> dict[str, np.ndarray]:
    """A batch's summary row: its shard (\"\" when it wrote none), the records it wrote and
    skipped as done, and ``counts`` (the others of :data:`SUMMARY`; 0 where not given)."""
    out = {"shard": np.array([name])}
    given = {"rows": rows, "skipped": skipped, **counts}
    for key in SUMMARY:
        out[key] = np.array([given.get(key, 0)], dtype=np.int64)
    return out


def _records(batch: dict[str, np.ndarray]) -> tuple[list[str], list[str], list[str], list[str]]:
    """ids, titles, texts and metadata (JSON) of one batch of input records."""
    key = "id" if "id" in batch else "_id" if "_id" in batch else None
    if key is None or "text" not in batch:
        raise InputError(f"records need an id (or _id) and a text; these have {', '.join(sorted(batch))}")
    n = len(batch[key])
    ids = [str(i) for i in batch[key].tolist()]
    texts = ["" if t is None else str(t) for t in batch["text"].tolist()]
    raw_titles = batch["title"].tolist() if "title" in batch else [""] * n
    titles = [t if isinstance(t, str) else "" for t in raw_titles]
    raw_meta = batch["metadata"].tolist() if "metadata" in batch else [None] * n
    metadata = [json.dumps(_plain(m), ensure_ascii=False) if m else "" for m in raw_meta]
    return ids, titles, texts, metadata


def _plain(value: Any) -> Any:
    """JSON-ready copy of a value Ray hands over (numpy scalars and arrays inside)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _format_of(inputs: Sequence[str], chosen: InputFormat) -> Literal["jsonl", "parquet"]:
    if chosen != "auto":
        return chosen
    suffixes = set()
    for raw in inputs:
        p = Path(raw)
        if "://" not in raw and p.is_dir():
            suffixes |= {f.suffix.lower() for f in p.rglob("*") if f.is_file()}
        else:
            suffixes.add(p.suffix.lower())
    if suffixes <= {".jsonl", ".json"} and suffixes:
        return "jsonl"
    if suffixes <= {".parquet"} and suffixes:
        return "parquet"
    raise InputError(
        f"cannot tell the input format from {', '.join(sorted(suffixes)) or 'no files'}: "
        "give --input-format jsonl or parquet"
    )


def _check_inputs(inputs: Sequence[str]) -> None:
    for raw in inputs:
        if "://" not in raw and not Path(raw).exists():
            raise InputError(f"missing input {raw}")


def _refuse_other_run(root: Path, path: Path, header: sh.ShardHeader) -> None:
    """A folder with a shard of another model or settings is not this run's to add to."""
    why = header.differs(sh.header_of(path))
    if why:
        raise InputError(
            f"{root} holds shards made with another {why}; choose another folder or overwrite it"
        )


def _finished(root: Path, header: sh.ShardHeader, *, resume: bool) -> tuple[dict[str, str], np.ndarray, int]:
    """Shards already in ``root`` (all made with ``header``'s settings) with their sha256, the
    64-bit hashes of their records' ids (8 bytes an id: 800 MB for 100 million, where Python
    strings would take several GB on the driver; a document of index rows counts once, by
    its chunk 0), and their rows. Each shard's columns and ids are checked; with
    ``resume`` its bytes are hashed too (every byte of the folder is read) and a shard that does
    not check out is removed, to be encoded again; without, the checksum its writer recorded is
    taken (the build checks it) and a shard that does not check out is an error."""
    sums: dict[str, str] = {}
    hashes = []
    rows = 0
    dims: dict[str, int] | None = None
    columns = ["id"] if header.chunking is None else ["id", "chunk"]
    for path in sh.shard_files(root):
        recorded = sh.read_sum(path)
        intact = recorded is not None and (not resume or sh.file_sha256(path) == recorded)
        if intact or recorded is None:  # its header is its writer's: never remove another run's shards
            _refuse_other_run(root, path, header)
        try:
            if recorded is None:
                raise InputError(f"{path} has no checksum file ({sh.sum_path(path).name})")
            if not intact:
                raise InputError(
                    f"{path} has changed since it was written (its sha256 is not the one recorded)"
                )
            table = sh.read_checked(path, None, header, dims, columns=columns)
        except InputError as e:
            if not resume:
                raise
            logger.warning("%s; removed, its records are encoded again", e)
            path.unlink(missing_ok=True)
            sh.sum_path(path).unlink(missing_ok=True)
            continue
        dims = sh.dims_of(path) if dims is None else dims
        sums[path.name] = recorded
        ids = table.column("id").to_pylist()
        if header.chunking is not None:
            ids = [i for i, no in zip(ids, table.column("chunk").to_pylist(), strict=True) if no == 0]
        hashes.append(sh.id_hashes([str(i) for i in ids]))
        rows += table.num_rows
    return sums, np.concatenate(hashes) if hashes else np.zeros(0, np.uint64), rows


def shard_header(config: RayEncodeConfig) -> sh.ShardHeader:
    """The header of this run's shards, from the model loaded once on this machine's CPU
    (which also checks that it has the outputs asked for)."""
    from bgekit.models import Embedder, model_fingerprint

    local = Embedder.from_pretrained(
        config.model, settings=config.settings, engine=EngineConfig(device="cpu")
    )
    missing = [o for o in config.outputs if o not in local.info.heads]
    if missing:
        raise InputError(
            f"{local.info.name} cannot give {', '.join(missing)} (it has: {', '.join(local.info.heads)})"
        )
    chunking = None if config.index_config is None else ChunkSettings.of(config.index_config)
    if chunking is not None:
        local.prompts.pick(chunking.task)  # an unknown task: an error naming the model's, before Ray starts
    return sh.ShardHeader(
        model_fingerprint(local),
        local.info.name,
        tuple(config.outputs),
        config.kind,
        local.long.policy,
        chunking,
    )


def prepare_folder(root: Path, header: sh.ShardHeader) -> np.ndarray:
    """Make ``root`` ready for shards of ``header``: the sorted id hashes of the shards
    already there (of the same model and settings, else an error; damaged ones are removed,
    see :func:`_finished`); unfinished writes are removed."""
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; the shards go in a folder")
    root.mkdir(parents=True, exist_ok=True)
    _, hashes, _ = _finished(root, header, resume=True)
    (root / sh.MANIFEST).unlink(missing_ok=True)  # the folder is being added to: not finished
    for left in root.glob(f".{sh.PREFIX}*.tmp"):  # writes of a killed earlier run
        left.unlink(missing_ok=True)
    for left in root.glob(f"{sh.PREFIX}*.parquet{sh.SUM_SUFFIX}"):  # its shard was never renamed in
        if not left.with_name(left.name.removesuffix(sh.SUM_SUFFIX)).exists():
            left.unlink(missing_ok=True)
    return np.sort(hashes)


def finish_folder(root: Path, header: sh.ShardHeader) -> tuple[int, int, int]:
    """Check the folder (every id once; each shard's columns and ids) and write its manifest
    with every shard's sha256; returns (records, shards, rows): rows are chunks for shards
    of index rows, else the records."""
    sums, hashes, rows = _finished(root, header, resume=False)
    names = list(sums)
    values, counts = np.unique(hashes, return_counts=True)
    if len(values) < len(hashes):
        repeated = set(values[counts > 1].tolist())
        example = next(
            i for n in names for i in sh.shard_ids(root / n) if int(sh.id_hashes([i])[0]) in repeated
        )
        raise InputError(
            f"{len(hashes) - len(values)} ids occur twice in {root} (e.g. {example!r}): the input "
            "repeats ids; make them unique and encode into an empty folder"
        )
    dims = sh.dims_of(root / names[0]) if names else {}
    sh.write_manifest(root, header, sums, rows, dims)
    return len(hashes), len(names), rows


def _user_error(e: BaseException) -> InputError | None:
    """The bgekit input error behind a failure Ray reports, if that is what it was."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, InputError):
            return InputError(str(seen).splitlines()[0] if str(seen) else "bad input")
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    if "InputError: " in text:
        return InputError(text.split("InputError: ", 1)[1].splitlines()[0])
    return None


def encode_on_ray(
    inputs: str | Sequence[str], output: str | Path, config: RayEncodeConfig
) -> RayEncodeReport:
    """Encode every record of ``inputs`` (JSONL or Parquet with ``id`` or ``_id``, ``text``
    and optionally ``title`` and ``metadata``) into shards in ``output`` on a Ray cluster
    (see the module docstring); a folder with shards of an earlier, unfinished run of the
    same model and settings is resumed."""
    try:
        import ray
    except ImportError:
        raise InputError("distributed encoding needs Ray: pip install 'bgekit[ray]'") from None

    paths = [inputs] if isinstance(inputs, str) else list(inputs)
    if not paths:
        raise InputError("no input given")
    _check_inputs(paths)
    fmt = _format_of(paths, config.input_format)
    root = Path(output)
    header = shard_header(config)
    done = prepare_folder(root, header)
    if len(done):
        logger.info("resuming: %d records already encoded in %s", len(done), root)
    if not ray.is_initialized():
        ray.init(address=config.address, log_to_driver=False, include_dashboard=False)
    # reading is light beside encoding: a tenth of a CPU slot, so that replicas taking every
    # slot do not starve the read tasks (that stalls the run without an error)
    if fmt == "jsonl":
        ds = ray.data.read_json(paths, lines=True, num_cpus=READ_CPUS)
    else:
        ds = ray.data.read_parquet(paths, num_cpus=READ_CPUS)
    # held until the run ends: a restarted actor reads it again
    done_ref = ray.put(done)
    out = ds.map_batches(
        ShardEncoder,
        fn_constructor_args=(config, header, str(root.resolve()), done_ref),
        batch_size=config.shard_rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.replicas),
        num_cpus=config.cpus_per_replica,
        num_gpus=config.gpus_per_replica or None,
    )
    start = last = time.perf_counter()
    new: set[str] = set()
    sums = dict.fromkeys(SUMMARY, 0)
    try:
        for row in out.iter_rows():
            if row["shard"]:
                new.add(str(row["shard"]))
            for key in SUMMARY:
                sums[key] += int(row[key])
            if time.perf_counter() - last > LOG_EVERY:
                last = time.perf_counter()
                n = sums["rows"]
                logger.info(
                    "encoded %d records into %d shards (%.0f records/s)", n, len(new), n / (last - start)
                )
    except Exception as e:  # Ray wraps what the workers raise
        user = _user_error(e)
        if user is not None:
            raise user from None
        raise
    del done_ref
    records, shards, rows = finish_folder(root, header)
    return RayEncodeReport(
        rows=records,
        shards=shards,
        new_rows=sums["rows"],
        new_shards=len(new),
        resumed_rows=len(done),
        seconds=time.perf_counter() - start,
        truncated=sums["truncated"],
        chunked=sums["chunked"],
        chunks=rows if header.chunking is not None else 0,
        empty=sums["empty"],
        oversized=sums["oversized"],
    )
