"""On-disk layout of an index, saved so that no interruption can lose the previous one.

``DIR/manifest.json`` names the current generation folder ``DIR/gen-NNNNNN/`` that holds
the arrays (``.npy``, memory-mapped on load) and the document records (JSONL). A save
writes a complete new generation under a temporary name, renames it into place, then
replaces the manifest atomically (write + fsync + rename). Until that last rename the old
manifest still names the old, untouched generation; old generations are removed only
after the switch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bgekit.errors import BgekitError
from bgekit.io import atomic_write

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class IndexFormatError(BgekitError):
    """The folder is not a bgekit index, or one this version cannot read."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(root: Path) -> dict[str, Any]:
    file = root / MANIFEST
    if not root.is_dir():
        raise IndexFormatError(f"no index at {root} (no such folder)")
    if not file.is_file():
        raise IndexFormatError(f"{root} is not a bgekit index (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"cannot read {file}: {e}") from None
    version = manifest.get("format")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{root} has index format {version}; this bgekit reads format {FORMAT_VERSION} (rebuild the index)"
        )
    return dict(manifest)


def write_generation(
    root: Path, arrays: dict[str, np.ndarray], records: dict[str, list[Any]], manifest: dict[str, Any]
) -> None:
    """Write a new generation and switch the manifest to it."""
    root.mkdir(parents=True, exist_ok=True)
    previous = None
    if (root / MANIFEST).is_file():
        previous = read_manifest(root).get("generation")
    number = 1 + max((int(p.name[4:10]) for p in root.glob("gen-*") if p.name[4:10].isdigit()), default=0)
    name = f"gen-{number:06d}"
    tmp = root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key, arr in arrays.items():
        with (tmp / f"{key}.npy").open("wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    for key, rows in records.items():
        with (tmp / f"{key}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, root / name)
    _fsync_dir(root)
    manifest = {**manifest, "format": FORMAT_VERSION, "generation": name, "saved_at": time.time()}
    with atomic_write(root / MANIFEST) as f:
        f.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    _fsync_dir(root)
    for old in root.glob("gen-*"):
        if old.name != name and (old.name == previous or old.name.endswith(".tmp") or old.is_dir()):
            shutil.rmtree(old, ignore_errors=True)


def read_generation(
    root: Path, manifest: dict[str, Any], mmap: bool
) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    gen = root / str(manifest["generation"])
    if not gen.is_dir():
        raise IndexFormatError(f"{root}: the manifest names {gen.name}, which is missing")
    arrays = {
        p.stem: np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False) for p in gen.glob("*.npy")
    }
    records = {}
    for p in gen.glob("*.jsonl"):
        with p.open(encoding="utf-8") as f:
            records[p.stem] = [json.loads(line) for line in f]
    return arrays, records


def disk_size(root: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Bytes per file of the current generation."""
    gen = root / str(manifest["generation"])
    return {p.name: p.stat().st_size for p in sorted(gen.iterdir())}
