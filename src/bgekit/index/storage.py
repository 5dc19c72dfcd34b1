"""On-disk layout of an index, saved so that no interruption can lose the previous one.

``DIR/manifest.json`` names the current generation folder ``DIR/gen-NNNNNN/`` that holds
the arrays (``.npy``, memory-mapped on load) and the document records (JSONL). A save
writes a complete new generation under a temporary name, renames it into place, then
replaces the manifest atomically (write + fsync + rename). Until that last rename the old
manifest still names the old, untouched generation; old generations are removed only
after the switch. Writers hold the folder's lock (:mod:`bgekit.index.lock`) throughout;
readers take none and retry when a save removes the generation they were reading
(:func:`read_consistent`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bgekit.errors import BgekitError
from bgekit.io import atomic_write
from bgekit.retrieval.dense_store import DenseStore

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class IndexFormatError(BgekitError):
    """The folder is not a bgekit index, or one this version cannot read."""


class IndexWriteError(BgekitError):
    """A save could not write its files (a full disk, no permission); the index is unchanged."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_REQUIRED = {"generation": str, "model": dict, "outputs": list, "counts": dict, "config": dict}


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, checked for what a load needs; anything wrong names the file."""
    file = root / MANIFEST
    if not root.is_dir():
        raise IndexFormatError(f"no index at {root} (no such folder)")
    if not file.is_file():
        raise IndexFormatError(f"{root} is not a bgekit index (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except OSError as e:
        raise IndexFormatError(f"cannot read {file}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise IndexFormatError(f"{file} is not UTF-8 text (byte {e.start}): the file is damaged") from None
    except json.JSONDecodeError as e:
        raise IndexFormatError(
            f"{file} is not valid JSON ({e.msg}, line {e.lineno}): the file is damaged"
        ) from None
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{file} holds a JSON {type(manifest).__name__}, not an index manifest")
    version = manifest.get("format")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{root} has index format {version}; this bgekit reads format {FORMAT_VERSION} (rebuild the index)"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise IndexFormatError(
                f"{file}: {key!r} is missing or not a {kind.__name__}: the file is damaged"
            )
    model, counts = manifest["model"], manifest["counts"]
    for group, keys in ((model, ("name", "path", "fingerprint")), (counts, ("documents", "chunks"))):
        missing = [k for k in keys if k not in group]
        if missing:
            raise IndexFormatError(f"{file}: missing {', '.join(missing)}: the file is damaged")
    bm25 = manifest.get("bm25")
    if bm25 is not None and not (
        isinstance(bm25, dict)
        and isinstance(bm25.get("terms"), int)
        and isinstance(bm25.get("stemmed"), bool)
        and all(isinstance(bm25.get(k), (int, float)) for k in ("k1", "b"))
    ):
        raise IndexFormatError(f"{file}: 'bm25' needs terms, stemmed, k1 and b: the file is damaged")
    return dict(manifest)


def expected_files(manifest: dict[str, Any]) -> dict[str, tuple[int, ...] | int]:
    """What the generation must hold: array file -> shape (``-1``: any length), records
    file -> line count."""
    n_docs, n_chunks = int(manifest["counts"]["documents"]), int(manifest["counts"]["chunks"])
    dims = manifest.get("dims") or {}
    outputs = manifest["outputs"]
    files: dict[str, tuple[int, ...] | int] = {
        "chunk_doc.npy": (n_chunks,),
        "chunk_no.npy": (n_chunks,),
        "documents.jsonl": n_docs,
        "chunks.jsonl": n_chunks,
    }
    if "dense" in outputs:
        dtype = manifest["config"].get("dense_dtype", "float32")
        for name, shape in DenseStore.array_shapes(dtype, n_chunks, int(dims.get("dense", -1))).items():
            files[f"{name}.npy"] = shape
    if "sparse" in outputs:
        files |= {
            "sparse_indptr.npy": (n_chunks + 1,),
            "sparse_indices.npy": (-1,),
            "sparse_values.npy": (-1,),
        }
    if "multivector" in outputs:
        files |= {
            "multivector.npy": (-1, int(dims.get("multivector", -1))),
            "multivector_offsets.npy": (n_chunks + 1,),
        }
    if "bm25" in manifest:
        files |= {
            "bm25_data.npy": (-1,),
            "bm25_indices.npy": (-1,),
            "bm25_indptr.npy": (-1,),
            "bm25_vocab.jsonl": int(manifest["bm25"]["terms"]),
        }
    return files


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, read from its header only."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
        return tuple(int(x) for x in shape), np.dtype(dtype), f.tell()


def verify_generation(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest implies exists with the expected shape and size (headers and
    sizes only, no full read); problems are :class:`IndexFormatError` naming the file."""
    gen = root / str(manifest["generation"])
    if not gen.is_dir():
        raise IndexFormatError(f"{root}: the manifest names {gen.name}, which is missing")
    for name, want in expected_files(manifest).items():
        path = gen / name
        if not path.is_file():
            raise IndexFormatError(f"{path} is missing (the manifest's outputs need it)")
        if isinstance(want, int):
            data = path.read_bytes()
            lines = data.count(b"\n")
            if lines != want or (data and not data.endswith(b"\n")):
                raise IndexFormatError(
                    f"{path} holds {lines} complete lines, the manifest says {want}: the file is damaged"
                )
            continue
        try:
            shape, dtype, offset = _npy_header(path)
        except (ValueError, EOFError, OSError) as e:
            raise IndexFormatError(f"{path} is not a readable array ({e}): the file is damaged") from None
        if len(shape) != len(want) or any(w not in (-1, s) for w, s in zip(want, shape, strict=False)):
            raise IndexFormatError(
                f"{path} has shape {shape}, the manifest implies {want}: the file is damaged"
            )
        size = offset + int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size != size:
            raise IndexFormatError(
                f"{path} holds {path.stat().st_size} bytes, its header needs {size}: the file is truncated or damaged"
            )


def current_generation(root: Path) -> str | None:
    """The generation the manifest names now (``None``: no readable manifest)."""
    try:
        return str(read_manifest(root)["generation"])
    except IndexFormatError:
        return None


def _write_error(err: OSError, path: Path) -> IndexWriteError:
    """A failed write as one line naming the path (numpy reports a full disk only as
    ``N requested and M written``)."""
    if err.errno == errno.ENOSPC or "requested and" in str(err):
        return IndexWriteError(f"no space left on device while writing {path}; the index is unchanged")
    return IndexWriteError(f"cannot write {path}: {err.strerror or err}; the index is unchanged")


def write_generation(
    root: Path, arrays: dict[str, np.ndarray], records: dict[str, list[Any]], manifest: dict[str, Any]
) -> str:
    """Write a new generation, switch the manifest to it and remove the others; returns its
    name. The caller holds the folder's :class:`~bgekit.index.lock.WriteLock`, so every
    other generation and temporary file here is this writer's or a dead writer's. A failed
    write (a full disk) removes what it wrote at once and leaves the index as it was."""
    root.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.name[4:10]) for p in root.glob("gen-*") if p.name[4:10].isdigit()), default=0)
    name = f"gen-{number:06d}"
    tmp = root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    where = tmp
    try:
        tmp.mkdir()
        for key, arr in arrays.items():
            where = tmp / f"{key}.npy"
            with where.open("wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        for key, rows in records.items():
            where = tmp / f"{key}.jsonl"
            with where.open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        where = root / name
        os.replace(tmp, root / name)
        _fsync_dir(root)
        manifest = {**manifest, "format": FORMAT_VERSION, "generation": name, "saved_at": time.time()}
        where = root / MANIFEST
        with atomic_write(root / MANIFEST) as f:
            f.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if current_generation(root) != name:
            shutil.rmtree(root / name, ignore_errors=True)
        raise _write_error(e, where) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob("gen-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for left in root.glob(f".{MANIFEST}.*.tmp"):  # from a save killed while writing the manifest
        left.unlink(missing_ok=True)
    return name


def read_generation(
    root: Path, manifest: dict[str, Any], mmap: bool
) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    """The generation's arrays (memory-mapped when ``mmap``) and records, after
    :func:`verify_generation`; a file that still fails to read is named."""
    verify_generation(root, manifest)
    gen = root / str(manifest["generation"])
    arrays = {}
    records = {}
    for name in expected_files(manifest):  # by name: a glob would miss files a save just removed
        p = gen / name
        if name.endswith(".npy"):
            try:
                arrays[p.stem] = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (ValueError, EOFError, OSError) as e:
                raise IndexFormatError(f"cannot read {p} ({e}): the file is damaged") from None
            continue
        rows: list[Any] = []
        try:
            for line in p.read_bytes().decode("utf-8").splitlines():
                rows.append(json.loads(line))
        except OSError as e:
            raise IndexFormatError(f"cannot read {p} ({e.strerror}): the file is damaged") from None
        except UnicodeDecodeError as e:
            raise IndexFormatError(f"{p} is not UTF-8 text (byte {e.start}): the file is damaged") from None
        except json.JSONDecodeError as e:
            raise IndexFormatError(
                f"{p}:{len(rows) + 1}: not valid JSON ({e.msg}): the file is damaged"
            ) from None
        records[p.stem] = rows
    return arrays, records


def disk_size(root: Path, generation: str) -> dict[str, int]:
    """Bytes per file of a generation (empty once a later save has removed it)."""
    try:
        return {p.name: p.stat().st_size for p in sorted((root / generation).iterdir())}
    except OSError:
        return {}


T = TypeVar("T")


def read_consistent(root: Path, read: Callable[[dict[str, Any]], T], attempts: int = 5) -> T:
    """``read(manifest)`` of the generation the manifest names, again from the new manifest
    when a save switched generations (and removed the old one) while it read: a reader
    always gets one complete generation, never a "missing file" from a save's race."""
    for attempt in range(attempts):
        manifest = read_manifest(root)
        try:
            return read(manifest)
        except (IndexFormatError, OSError):
            if attempt == attempts - 1 or current_generation(root) in (None, manifest["generation"]):
                raise
    raise AssertionError("unreachable")


def checked_manifest(root: Path) -> dict[str, Any]:
    """The manifest, once every file of its generation checks out (:func:`verify_generation`)."""

    def check(manifest: dict[str, Any]) -> dict[str, Any]:
        verify_generation(root, manifest)
        return manifest

    return read_consistent(root, check)
