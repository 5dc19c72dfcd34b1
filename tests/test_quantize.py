"""Dense quantisation: int8 codes and approximate scores, binary bits and Hamming distances,
against direct numpy (the binary search and its rescoring: tests/test_dense_store.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bgekit.errors import InputError
from bgekit.scoring.quantize import (
    Int8Calibration,
    hamming,
    int8_scores,
    pack_binary,
    quantize_int8,
)


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_codes_round_trip_within_half_a_step() -> None:
    docs = _unit(200, 24, 0)
    cal = Int8Calibration.fit(docs)
    codes = quantize_int8(docs, cal)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127
    back = cal.lo + (codes.astype(np.float32) + 128) * cal.step
    assert np.all(np.abs(back - docs) <= cal.step / 2 + 1e-6)
    q = _unit(3, 24, 1)
    np.testing.assert_allclose(int8_scores(q, codes, cal), q @ back.T, rtol=1e-5, atol=1e-5)
    # outside the calibrated range: clipped to the end codes
    assert quantize_int8(docs * 10, cal).min() == -128
    with pytest.raises(InputError, match="non-empty"):
        Int8Calibration.fit(np.zeros((0, 4), np.float32))


def test_binary_bits_and_hamming_by_hand() -> None:
    x = np.array([[0.5, -1.0, 0.0, 2.0, -0.1, 0.3, 0.2, -0.4, 0.9]], np.float32)
    bits = pack_binary(x)
    assert bits.shape == (1, 2) and bits[0, 0] == 0b10010110 and bits[0, 1] == 0b10000000
    y = -x
    assert hamming(pack_binary(y), bits).tolist() == [[8]]  # the zero stays "not positive"

    # several 64-bit words, the last one padded: against a count of differing signs
    docs, q = _unit(50, 200, 4), _unit(3, 200, 5)
    want = ((q[:, None, :] > 0) != (docs[None, :, :] > 0)).sum(axis=2)
    np.testing.assert_array_equal(hamming(pack_binary(q), pack_binary(docs)), want)
