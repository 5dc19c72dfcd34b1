"""Reading texts and saving/loading encoded outputs, atomically."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from bgekit.errors import InputError
from bgekit.types import Encoded, SparseVec


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextmanager
def atomic_write(path: Path) -> Iterator[IO[bytes]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` on success only.
    The file gets the user's umask, like any other (``tempfile.mkstemp`` would keep 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing non-empty ``path`` (or a file there) unless ``overwrite``."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise InputError(f"{path} exists and is not empty; choose another output or overwrite it")


@contextmanager
def atomic_dir(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path`` that replaces ``path`` only when the block succeeds.

    An existing non-empty ``path`` is refused unless ``overwrite``; the old folder is removed
    only after the new one is in place."""
    check_output_dir(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.mkdir(0o777)  # the umask applies (tempfile.mkdtemp would keep 0700)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A text file's contents; a decoding error names the file and the byte offset."""
    if not path.is_file():
        raise InputError(f"missing file {path}")
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not valid {encoding} at byte {e.start} ({data[e.start : e.start + 4]!r}); "
            "give the file's encoding with --encoding (e.g. latin-1)"
        ) from None
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}") from None


def iter_jsonl(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; errors name the file and line."""
    for n, line in enumerate(read_text(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: malformed JSON ({e.msg})") from None
        except RecursionError:
            raise InputError(f"{path}:{n}: the JSON is nested too deeply to read") from None


def read_texts(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[str] | None]:
    """Texts (and ids when given) from a JSONL file or a plain text file (one text per line).

    A JSONL line is a JSON string or an object with ``text`` (and optionally ``id``/``_id``
    and ``title``, joined as ``title + " " + text``). In a text file blank lines are skipped
    and each text's id is its line number (from 1), so rows still name their lines. A file
    with no text is an error.
    """
    texts: list[str] = []
    ids: list[str] = []
    if path.suffix.lower() not in (".jsonl", ".json"):
        numbered = [
            (n, line) for n, line in enumerate(read_text(path, encoding).splitlines(), 1) if line.strip()
        ]
        if not numbered:
            raise InputError(f"{path} holds no text: nothing to encode")
        return [line for _, line in numbered], [str(n) for n, _ in numbered]
    for n, obj in iter_jsonl(path, encoding):
        if isinstance(obj, str):
            texts.append(obj)
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InputError(f'{path}:{n}: expected a string or an object with a "text" string')
        title = obj.get("title")
        texts.append(f"{title} {obj['text']}" if isinstance(title, str) and title else obj["text"])
        key = obj.get("id", obj.get("_id"))
        if key is not None:
            ids.append(str(key))
    if not texts:
        raise InputError(f"{path} holds no lines: nothing to encode")
    if ids and len(ids) != len(texts):
        raise InputError(f"{path}: some lines have an id and some do not")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: duplicate ids")
    return texts, (ids or None)


def save_encoded(path: Path, enc: Encoded, *, ids: list[str] | None = None, meta: dict | None = None) -> None:
    """Save to ``.npz``: ``dense``; sparse as CSR (``sparse_indptr``, ``sparse_indices``,
    ``sparse_values``); multi-vectors stacked with ``multivector_offsets``; ``ids``; ``meta`` (JSON)."""
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta or {}))}
    if ids is not None:
        arrays["ids"] = np.array(ids, dtype=str)
    if enc.dense is not None:
        arrays["dense"] = enc.dense
    if enc.sparse is not None:
        counts = [len(v) for v in enc.sparse]
        arrays["sparse_indptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        arrays["sparse_indices"] = np.concatenate([v.indices for v in enc.sparse] or [np.zeros(0, np.int64)])
        arrays["sparse_values"] = np.concatenate([v.values for v in enc.sparse] or [np.zeros(0, np.float32)])
    if enc.multivector is not None:
        counts = [m.shape[0] for m in enc.multivector]
        arrays["multivector_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        arrays["multivector"] = np.concatenate(enc.multivector) if enc.multivector else np.zeros((0, 0))
    with atomic_write(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def load_encoded(path: Path) -> tuple[Encoded, list[str] | None, dict]:
    """Inverse of :func:`save_encoded`."""
    with np.load(path, allow_pickle=False) as z:
        dense = z.get("dense", None)
        sparse = None
        if "sparse_indptr" in z:
            ptr, idx, val = z["sparse_indptr"], z["sparse_indices"], z["sparse_values"]
            sparse = [SparseVec(idx[a:b], val[a:b]) for a, b in itertools.pairwise(ptr)]
        multi = None
        if "multivector_offsets" in z:
            off, mv = z["multivector_offsets"], z["multivector"]
            multi = [mv[a:b] for a, b in itertools.pairwise(off)]
        ids = z["ids"].tolist() if "ids" in z else None
        meta = json.loads(str(z["meta"]))
    return Encoded(dense=dense, sparse=sparse, multivector=multi), ids, meta
