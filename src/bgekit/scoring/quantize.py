"""Compact dense vectors: float16, calibrated int8 and binary codes, their approximate scores,
and the rescoring step (search the codes, rescore the best candidates with the full-precision
query). Pure numpy; nothing here loads a model.

- float16: half the bytes; scores are the float32 product of the upcast vectors.
- int8 (scalar): per dimension, the calibration vectors' range ``[lo, hi]`` maps to the 256
  codes ``-128..127``; a vector is ``lo + (code + 128) * step``, so a query's score is
  ``(code + 128) @ (q * step) + q @ lo`` (no dequantised copy).
- binary: one bit per dimension (``x > 0``), packed 8 per byte (1/32 of float32); candidates
  by Hamming distance to the query's signs, rescored with the float query against each
  candidate's ``+-1`` vector (the standard binary-plus-rescoring recipe).
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


def unpack_signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """``(n, dim)`` float32 of ``+1`` (bit set) and ``-1``."""
    return np.unpackbits(bits, axis=1, count=dim).astype(np.float32) * 2.0 - 1.0


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


def binary_search(
    queries: np.ndarray, bits: np.ndarray, dim: int, k: int, rescore: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``k`` best rows: the ``max(k, rescore)`` nearest by Hamming distance,
    rescored as ``q . sign_vector`` (float query) and ranked by that. Returns ``(indices,
    scores)``, each ``(queries, k)``, best first."""
    q = np.asarray(queries, dtype=np.float32)
    n = bits.shape[0]
    take = min(n, max(k, rescore))
    dist = hamming(pack_binary(q), bits)
    cand = (
        np.argpartition(dist, take - 1, axis=1)[:, :take] if take < n else np.tile(np.arange(n), (len(q), 1))
    )
    idx = np.empty((len(q), min(k, take)), dtype=np.int64)
    scores = np.empty(idx.shape, dtype=np.float32)
    for i in range(len(q)):
        s = unpack_signs(bits[cand[i]], dim) @ q[i]
        order = np.argsort(-s, kind="stable")[: idx.shape[1]]
        idx[i], scores[i] = cand[i][order], s[order]
    return idx, scores


def bytes_per_vector(dtype: DenseDtype, dim: int) -> int:
    """Stored bytes of one vector of ``dim`` dimensions."""
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": (dim + 7) // 8}[dtype]
