"""On-disk cache of encodings per (model, dataset, text side, outputs)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bgekit.io import load_encoded, save_encoded
from bgekit.models.long_input import LongInputPolicy
from bgekit.types import Encoded, ModelInfo

logger = logging.getLogger(__name__)


def cache_key(
    info: ModelInfo,
    dataset: str,
    fingerprint: str,
    side: str,
    outputs: tuple[str, ...],
    long: LongInputPolicy | None = None,
) -> str:
    """Changes whenever anything that shapes the vectors changes (model files, settings and
    long-input policy, data)."""
    weights = sorted(Path(info.path).glob("*.safetensors")) + sorted(Path(info.path).glob("*.bin"))
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weights]
    policy = asdict(long) if long is not None else None
    blob = json.dumps(
        [asdict(info), stamp, dataset, fingerprint, side, list(outputs), policy], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_encode(
    cache_dir: Path | None,
    key: str,
    label: str,
    encode: Callable[[], Encoded],
) -> Encoded:
    """``encode()``, or its saved result when ``cache_dir`` holds one under ``key``."""
    if cache_dir is None:
        return encode()
    path = cache_dir / f"{label}-{key}.npz"
    if path.is_file():
        logger.info("using cached encodings %s", path)
        return load_encoded(path)[0]
    enc = encode()
    save_encoded(path, enc, meta={"label": label})
    return enc
