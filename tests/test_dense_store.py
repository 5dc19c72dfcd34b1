"""Compact dense storage: the store's three reads against direct numpy, and the embedded
index built, searched, saved and reloaded with each storage type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bgekit import Document, Embedder, Index, IndexConfig, InputError
from bgekit.index import IndexFormatError, storage
from bgekit.retrieval import Corpus, search
from bgekit.retrieval.corpus import Hnsw
from bgekit.retrieval.dense_store import DenseStore
from bgekit.scoring.quantize import Int8Calibration
from bgekit.types import Encoded


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _decoded(x: np.ndarray, cal: Int8Calibration) -> np.ndarray:
    """int8 values by hand: round to the nearest of 256 steps from the minimum, clip."""
    code = np.clip(np.rint((x - cal.lo) / cal.step), 0, 255)
    return cal.lo + code * cal.step


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "binary"])
def test_store_scores_against_numpy(dtype: str) -> None:
    docs, q = _unit(5000, 40, 0), _unit(3, 40, 1)
    store = DenseStore.build(docs, dtype, rescore=50)  # type: ignore[arg-type]
    if dtype in ("float32", "float16"):
        want = q @ docs.astype(dtype).astype(np.float32).T
    else:
        cal = Int8Calibration(docs.min(axis=0), (docs.max(axis=0) - docs.min(axis=0)) / 255)
        want = q @ _decoded(docs, cal).T
    np.testing.assert_allclose(store.scores(q), want, rtol=1e-4, atol=1e-4)  # blocks of ROW_BLOCK rows
    rows = np.array([4999, 3, 17, 3])
    np.testing.assert_allclose(store.scores_at(q[1], rows), want[1, rows], rtol=1e-4, atol=1e-4)
    expected_bytes = {"float32": 160, "float16": 80, "int8": 40, "binary": 5}[dtype]
    assert store.resident_bytes() == 5000 * expected_bytes
    if dtype == "binary":
        dist = ((docs > 0) != (q[0] > 0)).sum(axis=1)
        got = store.candidates(q[0], 10)
        assert len(got) == 50 and dist[got].max() <= np.sort(dist)[49]
        assert store.stored_bytes() == 5000 * (5 + 40) + 2 * 40 * 4  # bits, int8 codes, calibration


def test_store_append_take_keep_the_calibration() -> None:
    a, b = _unit(100, 16, 2), _unit(30, 16, 3) * 3  # b reaches outside a's range: clipped
    store = DenseStore.build(a, "int8").append(b)
    cal = store.calibration
    assert cal is not None and store.n_rows == 130
    np.testing.assert_array_equal(cal.lo, a.min(axis=0))
    q = _unit(1, 16, 4)
    np.testing.assert_allclose(store.scores(q)[0], q[0] @ _decoded(np.vstack([a, b]), cal).T, atol=1e-5)
    part = store.take(np.array([120, 5]))
    np.testing.assert_array_equal(part.data, store.data[[120, 5]])
    with pytest.raises(InputError, match="8 dimensions cannot join rows of 16"):
        store.append(_unit(2, 8, 5))
    with pytest.raises(InputError, match="dense_dtype must be one of"):
        DenseStore.build(a, "int4")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="HNSW search reads float32"):
        Corpus(dense=store, hnsw=Hnsw())


def test_binary_search_with_every_row_rescored_is_the_int8_ranking() -> None:
    docs, q = _unit(300, 32, 6), _unit(5, 32, 7)
    enc = Encoded(dense=q)
    int8 = search(Corpus(dense=DenseStore.build(docs, "int8")), enc, 10, mode="dense")
    full = search(Corpus(dense=DenseStore.build(docs, "binary", rescore=300)), enc, 10, mode="dense")
    part = search(Corpus(dense=DenseStore.build(docs, "binary", rescore=40)), enc, 10, mode="dense")
    for a, b, c in zip(int8, full, part, strict=True):
        assert a.indices.tolist() == b.indices.tolist()
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        # the 40 Hamming-nearest rows, ranked by their int8 scores
        assert np.all(np.diff(c.scores) <= 0) and set(c.indices) <= set(range(300))


WORDS = [
    "cat",
    "dog",
    "fox",
    "bird",
    "stock",
    "market",
    "bond",
    "price",
    "rain",
    "snow",
    "wind",
    "storm",
    "river",
    "lake",
    "sea",
    "ship",
]


def _docs(n: int, seed: int) -> list[Document]:
    rng = np.random.default_rng(seed)
    return [Document(f"d{i}", " ".join(rng.choice(WORDS, size=12))) for i in range(n)]


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3))


@pytest.mark.parametrize("dtype", ["float16", "int8", "binary"])
def test_index_with_compact_dense_round_trips(m3: Embedder, tmp_path: Path, dtype: str) -> None:
    docs = _docs(80, 8)
    queries = ["cat and dog", "stock price", "storm at sea"]
    exact = Index(m3, IndexConfig(outputs=("dense", "sparse")))
    exact.add(docs)
    index = Index(m3, IndexConfig(outputs=("dense", "sparse"), dense_dtype=dtype, rescore=80))  # type: ignore[arg-type]
    index.add(docs)
    assert index._dense is not None and index._dense.dtype == dtype
    # the index searches the store it holds: same scores as the store read directly
    q = m3.encode(queries, kind="query", outputs=("dense",))
    assert q.dense is not None
    for qi, hits in enumerate(index.search(queries, 5, mode="dense")):
        rows = np.array([int(h.id[1:]) for h in hits])
        np.testing.assert_allclose(
            [h.score for h in hits], index._dense.scores_at(q.dense[qi], rows), rtol=1e-5
        )
        # and close to float32's (random tiny model: scores differ in the quantisation only)
        want = {h.id: h.score for h in exact.search([queries[qi]], 80, mode="dense")[0]}
        tol = {"float16": 2e-3, "int8": 0.05, "binary": 0.05}[dtype]
        assert all(abs(h.score - want[h.id]) < tol for h in hits)
    before = index.search(queries, 5, mode="hybrid")
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", m3)
    assert (
        loaded._dense is not None
        and loaded._dense.dtype == dtype
        and isinstance(loaded._dense.data, np.memmap)
    )
    after = loaded.search(queries, 5, mode="hybrid")
    assert [[(h.id, round(h.score, 5)) for h in r] for r in after] == [
        [(h.id, round(h.score, 5)) for h in r] for r in before
    ]
    sizes = storage.disk_size(tmp_path / "ix", storage.read_manifest(tmp_path / "ix")["generation"])
    width = index._dense.dim
    assert sizes["dense.npy"] - 128 == 80 * {"float16": 2 * width, "int8": width, "binary": width // 8}[dtype]
    # deletes and adds keep the stored form and its calibration
    loaded.delete(["d3"])
    loaded.add([Document("new", "cat dog bird")])
    assert loaded._dense.dtype == dtype and loaded.num_chunks == 80
    assert loaded.search(["cat dog bird"], 1, mode="dense")[0][0].id == "new"


def test_index_refuses_bad_dense_settings_and_damaged_arrays(m3: Embedder, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dense_dtype must be one of"):
        IndexConfig(dense_dtype="int4")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'hnsw' stores float32"):
        IndexConfig(dense_dtype="binary", dense_index="hnsw")
    with pytest.raises(InputError, match="rescore must be at least 1"):
        IndexConfig(rescore=0)
    index = Index(m3, IndexConfig(dense_dtype="binary"))
    index.add(_docs(10, 10))
    root = index.save(tmp_path / "ix")
    manifest = storage.read_manifest(root)
    gen = root / manifest["generation"]
    (gen / "dense_codes.npy").unlink()
    with pytest.raises(IndexFormatError, match=r"dense_codes\.npy is missing"):
        Index.load(root, m3)
    # a manifest that claims int8 for binary rows: the shapes disagree
    index.save(root)
    manifest = storage.read_manifest(root)
    manifest["config"]["dense_dtype"] = "int8"
    (root / storage.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=r"dense\.npy has shape"):
        Index.load(root, m3)
