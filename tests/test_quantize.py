"""Dense quantisation: codes, approximate scores and binary rescoring against direct numpy."""

from __future__ import annotations

import numpy as np
import pytest

from bgekit.errors import InputError
from bgekit.scoring.quantize import (
    Int8Calibration,
    binary_search,
    bytes_per_vector,
    hamming,
    int8_scores,
    pack_binary,
    quantize_int8,
    unpack_signs,
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


def test_binary_bits_hamming_and_signs_by_hand() -> None:
    x = np.array([[0.5, -1.0, 0.0, 2.0, -0.1, 0.3, 0.2, -0.4, 0.9]], np.float32)
    bits = pack_binary(x)
    assert bits.shape == (1, 2) and bits[0, 0] == 0b10010110 and bits[0, 1] == 0b10000000
    assert unpack_signs(bits, 9).tolist() == [[1, -1, -1, 1, -1, 1, 1, -1, 1]]
    y = -x
    assert hamming(pack_binary(y), bits).tolist() == [[8]]  # the zero stays "not positive"
    assert bytes_per_vector("binary", 384) == 48 and bytes_per_vector("float32", 384) == 1536


def test_binary_search_rescores_the_hamming_candidates() -> None:
    docs, q = _unit(300, 64, 2), _unit(4, 64, 3)
    bits = pack_binary(docs)
    idx, scores = binary_search(q, bits, 64, k=10, rescore=40)
    signs = unpack_signs(bits, 64)
    for i in range(4):
        dist = np.array([int(np.sum((docs[j] > 0) != (q[i] > 0))) for j in range(300)])
        cand = np.argsort(dist, kind="stable")[:40]
        # ties at the 40th distance may pick other rows: compare with the distance cut
        assert set(idx[i]) <= set(np.nonzero(dist <= np.sort(dist)[39])[0])
        s = signs @ q[i]
        np.testing.assert_allclose(scores[i], s[idx[i]], rtol=1e-6)
        assert np.all(np.diff(scores[i]) <= 0)
        assert len(cand) == 40
    # rescoring every row is the exact sign-vector ranking
    idx_all, _ = binary_search(q, bits, 64, k=5, rescore=300)
    for i in range(4):
        assert idx_all[i].tolist() == np.argsort(-(signs @ q[i]), kind="stable")[:5].tolist()
