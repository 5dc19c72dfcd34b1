"""Dense rows in one storage type — float32, float16, calibrated int8 or binary — with the
three reads the search core makes: every row's score, the best rows, and chosen rows' scores.

Scores are the float query against the stored form: float16 rows upcast, int8 codes through
their calibration (:func:`bgekit.scoring.quantize.int8_scores`). Binary rows find
candidates by Hamming distance (the ``rescore`` nearest, at least as many as asked) and
score them with int8 codes kept beside the bits: only the bits need to sit in memory, the
int8 codes are read for the candidates alone (memory-mapped after a load).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bgekit.errors import InputError
from bgekit.scoring.quantize import (
    DENSE_DTYPES,
    DenseDtype,
    Int8Calibration,
    hamming,
    int8_scores,
    pack_binary,
    quantize_int8,
)

# Rows upcast (or decoded) at a time when scoring every row: 16 MB of float32 at d=1024.
ROW_BLOCK = 4096
# Binary candidates rescored per query, measured on SciFact (benchmarks/RESULTS.md, issue 16).
DEFAULT_RESCORE = 400


def check_dense_dtype(dtype: str) -> DenseDtype:
    if dtype not in DENSE_DTYPES:
        raise InputError(f"dense_dtype must be one of {', '.join(DENSE_DTYPES)}, got {dtype!r}")
    return dtype


@dataclass(frozen=True, eq=False)
class DenseStore:
    """``n_rows`` dense vectors of ``dim`` dimensions as ``dtype``. ``data`` is the float
    matrix (float32 / float16), the int8 codes, or the packed bits (binary); ``codes`` are
    binary's int8 rescoring codes; ``calibration`` maps int8 codes back to values."""

    dtype: DenseDtype
    dim: int
    data: np.ndarray
    calibration: Int8Calibration | None = None
    codes: np.ndarray | None = None
    rescore: int = DEFAULT_RESCORE

    def __post_init__(self) -> None:
        if self.rescore < 1:
            raise InputError(f"rescore must be at least 1, got {self.rescore}")

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        dtype: DenseDtype = "float32",
        *,
        calibration: Int8Calibration | None = None,
        rescore: int = DEFAULT_RESCORE,
    ) -> DenseStore:
        """Store float vectors; int8 and binary calibrate on ``vectors`` unless given one."""
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2:
            raise InputError(f"dense vectors must be an (n, d) matrix, got shape {v.shape}")
        dtype = check_dense_dtype(dtype)
        if dtype in ("float32", "float16"):
            return cls(dtype, v.shape[1], v.astype(dtype, copy=False), rescore=rescore)
        cal = calibration or Int8Calibration.fit(v)
        codes = quantize_int8(v, cal)
        if dtype == "int8":
            return cls("int8", v.shape[1], codes, cal, rescore=rescore)
        return cls("binary", v.shape[1], pack_binary(v), cal, codes, rescore=rescore)

    @property
    def n_rows(self) -> int:
        return int(self.data.shape[0])

    def append(self, vectors: np.ndarray) -> DenseStore:
        """These rows followed by ``vectors``, stored the same way (same calibration)."""
        width = np.shape(vectors)[-1]
        if width != self.dim:
            raise InputError(f"dense vectors of {width} dimensions cannot join rows of {self.dim}")
        more = DenseStore.build(vectors, self.dtype, calibration=self.calibration, rescore=self.rescore)
        codes = None if self.codes is None else np.concatenate([self.codes, more.codes])
        return DenseStore(
            self.dtype,
            self.dim,
            np.concatenate([self.data, more.data]),
            self.calibration,
            codes,
            self.rescore,
        )

    def take(self, rows: np.ndarray) -> DenseStore:
        """The given rows, in that order."""
        codes = None if self.codes is None else np.ascontiguousarray(self.codes[rows])
        data = np.ascontiguousarray(self.data[rows])
        return DenseStore(self.dtype, self.dim, data, self.calibration, codes, self.rescore)

    # -- persistence --------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """What a save writes: ``dense`` (the stored form), ``dense_codes`` (binary's int8
        codes) and ``dense_lo`` / ``dense_step`` (the int8 calibration)."""
        out = {"dense": np.asarray(self.data)}
        if self.codes is not None:
            out["dense_codes"] = np.asarray(self.codes)
        if self.calibration is not None:
            out |= {"dense_lo": self.calibration.lo, "dense_step": self.calibration.step}
        return out

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], dtype: DenseDtype, dim: int, rescore: int = DEFAULT_RESCORE
    ) -> DenseStore:
        want = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "binary": np.uint8}[dtype]
        if arrays["dense"].dtype != want:
            raise ValueError(f"dense rows are {arrays['dense'].dtype}, the index stores {dtype}")
        cal = None
        if "dense_lo" in arrays:
            cal = Int8Calibration(np.asarray(arrays["dense_lo"]), np.asarray(arrays["dense_step"]))
        return cls(dtype, dim, arrays["dense"], cal, arrays.get("dense_codes"), rescore)

    @staticmethod
    def array_shapes(dtype: DenseDtype, n_rows: int, dim: int) -> dict[str, tuple[int, ...]]:
        """The arrays a save of ``dtype`` writes and their shapes (for load-time checks)."""
        width = (dim + 7) // 8 if dtype == "binary" and dim >= 0 else dim
        shapes: dict[str, tuple[int, ...]] = {"dense": (n_rows, width)}
        if dtype == "binary":
            shapes["dense_codes"] = (n_rows, dim)
        if dtype in ("int8", "binary"):
            shapes |= {"dense_lo": (dim,), "dense_step": (dim,)}
        return shapes

    def resident_bytes(self) -> int:
        """Bytes a search reads for every query: the stored form (binary: the bits only)."""
        return int(self.data.nbytes)

    def stored_bytes(self) -> int:
        """Bytes of every array this store saves."""
        return sum(int(a.nbytes) for a in self.arrays().values())

    # -- scores -------------------------------------------------------------------------

    def _block_scores(self, q: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        """Float queries against some rows, in the precision candidates are ranked by."""
        if self.dtype in ("float32", "float16"):
            block = np.asarray(self.data[rows], dtype=np.float32)
            return np.asarray(q @ block.T, dtype=np.float32)
        assert self.calibration is not None
        codes = self.data if self.codes is None else self.codes
        return np.asarray(int8_scores(q, np.asarray(codes[rows]), self.calibration), dtype=np.float32)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``(queries, rows)``: every row's score (binary: through the int8 codes)."""
        q = np.asarray(queries, dtype=np.float32)
        if self.dtype == "float32":
            return np.asarray(q @ np.asarray(self.data).T, dtype=np.float32)
        out = np.empty((q.shape[0], self.n_rows), dtype=np.float32)
        for start in range(0, self.n_rows, ROW_BLOCK):
            stop = min(self.n_rows, start + ROW_BLOCK)
            out[:, start:stop] = self._block_scores(q, slice(start, stop))
        return out

    def scores_at(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """One query's scores of ``rows``."""
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        return self._block_scores(q, np.asarray(rows, dtype=np.int64))[0]

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Binary only: the ``max(n, rescore)`` rows nearest by Hamming distance (ties:
        lower row first)."""
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        dist = hamming(pack_binary(q), self.data)[0]
        take = min(self.n_rows, max(n, self.rescore))
        if take >= self.n_rows:
            return np.arange(self.n_rows, dtype=np.int64)
        part = np.argpartition(dist, take - 1)[:take]
        return np.sort(part).astype(np.int64)
