"""On-disk cache of encodings per (model, dataset, text side, outputs)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from bgekit.io import load_encoded, save_encoded
from bgekit.types import Encoded

logger = logging.getLogger(__name__)


def cache_key(
    fingerprint: str, dataset: str, data_fingerprint: str, side: str, outputs: Sequence[str], task: str | None
) -> str:
    """Changes whenever anything that shapes the vectors changes: the model's identity
    (:func:`bgekit.models.model_fingerprint`: files, settings, prompts, long-input policy),
    the task, the data, the side and the outputs."""
    blob = json.dumps([fingerprint, dataset, data_fingerprint, side, list(outputs), task])
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
