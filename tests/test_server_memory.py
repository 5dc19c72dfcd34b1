"""Freed memory goes back to the system after model runs (glibc only; elsewhere a no-op)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bgekit.server import memory
from bgekit.server.memory import MemoryTrimmer

glibc = pytest.mark.skipif(memory._glibc() is None, reason="needs glibc")


@glibc
def test_trims_at_once_when_idle_and_at_most_every_interval_under_load() -> None:
    t = MemoryTrimmer(every=3600)
    t.maybe_trim()  # the first run trims
    t.maybe_trim()  # under load, within the interval: not again
    assert t.trims == 1
    t.maybe_trim(idle=True)  # the server fell idle: trim now
    assert t.trims == 2
    assert memory.limit_arenas(2) is True


@glibc
def test_the_server_trims_after_a_model_run(bert_m3: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bgekit import Embedder, EngineConfig
    from bgekit.server import ServerConfig, create_app

    emb = Embedder.from_pretrained(str(bert_m3), engine=EngineConfig(device="cpu"))
    app = create_app(ServerConfig(), embedder=emb)
    with TestClient(app) as client:
        state = app.state.bgekit
        before = state.trimmer.trims
        assert client.post("/v1/embeddings", json={"input": ["a", "b"]}).status_code == 200
        assert state.trimmer.trims > before


def test_kernel_caches_are_capped_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"LRU_CACHE_CAPACITY": "64"}  # the operator's choice stands
    monkeypatch.setattr(os, "environ", env)
    assert memory.limit_kernel_caches() == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256",
        "LRU_CACHE_CAPACITY": "64",
    }
    assert env == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", "LRU_CACHE_CAPACITY": "64"}
