"""Compact dense vectors: float16, calibrated int8 and binary codes, and their approximate
scores. Pure numpy; nothing here loads a model.

- float16: half the bytes; scores are the float32 product of the upcast vectors.
- int8 (scalar): per dimension, the calibration vectors' range ``[lo, hi]`` maps to the 256
  codes ``-128..127``; a vector is ``lo + (code + 128) * step``, so a query's score is
  ``(code + 128) @ (q * step) + q @ lo`` (no dequantised copy).
- binary: one bit per dimension (``x > 0``), packed 8 per byte (1/32 of float32); candidates
  by Hamming distance to the query's signs. The search that rescores them (with int8 codes
  kept beside the bits) is :class:`bgekit.retrieval.dense_store.DenseStore`'s, the one
  binary recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bgekit.errors import InputError

DenseDtype = Literal["float32", "float16", "int8", "binary"]
DENSE_DTYPES: tuple[DenseDtype, ...] = ("float32", "float16", "int8", "binary")


@dataclass(frozen=True, eq=False)
class Int8Calibration:
    """Per-dimension range of the calibration vectors: code ``c`` is ``lo + (c + 128) * step``."""

    lo: np.ndarray  # float32 (d,)
    step: np.ndarray  # float32 (d,), > 0

    @classmethod
    def fit(cls, vectors: np.ndarray) -> Int8Calibration:
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise InputError("int8 calibration needs a non-empty (n, d) matrix")
        lo = vectors.min(axis=0).astype(np.float32)
        hi = vectors.max(axis=0).astype(np.float32)
        step = np.maximum((hi - lo) / 255.0, np.float32(1e-12)).astype(np.float32)
        return cls(lo, step)


def quantize_int8(vectors: np.ndarray, cal: Int8Calibration) -> np.ndarray:
    """``(n, d)`` int8 codes (values outside the calibrated range are clipped)."""
    codes = np.rint((vectors - cal.lo) / cal.step) - 128.0
    return np.clip(codes, -128, 127).astype(np.int8)


def int8_scores(queries: np.ndarray, codes: np.ndarray, cal: Int8Calibration) -> np.ndarray:
    """``(queries, rows)`` approximate inner products of float queries with int8 codes."""
    q = np.asarray(queries, dtype=np.float32)
    shifted = codes.astype(np.float32) + 128.0
    scores: np.ndarray = (q * cal.step) @ shifted.T + (q @ cal.lo)[:, None]
    return scores


def pack_binary(vectors: np.ndarray) -> np.ndarray:
    """``(n, ceil(d / 8))`` uint8: bit ``j`` set when dimension ``j`` is positive."""
    return np.packbits(vectors > 0, axis=1)


def _words(bits: np.ndarray) -> np.ndarray:
    """Packed bit rows as 64-bit words (zero-padded to a multiple of 8 bytes)."""
    pad = -bits.shape[1] % 8
    if pad:
        bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.ascontiguousarray(bits).view(np.uint64)


def hamming(query_bits: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``(queries, rows)`` Hamming distances between packed bit rows."""
    out = np.empty((query_bits.shape[0], bits.shape[0]), dtype=np.int32)
    words, qwords = _words(bits), _words(query_bits)
    for i, q in enumerate(qwords):
        out[i] = np.bitwise_count(np.bitwise_xor(words, q)).sum(axis=1, dtype=np.int32)
    return out
