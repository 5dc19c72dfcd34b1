"""Instructions per task on both sides (BAAI/llm-embedder's table, sentence-transformers prompt
names): token ids against tokenising ``instruction + text`` by hand, vectors against an
independent transformers forward, and the task through the index, the server, evaluation,
training data and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from bgekit import Document, Embedder, EmbedderSettings, EngineConfig, Index, IndexConfig, InputError
from bgekit.cli.main import main
from bgekit.models.registry import LLM_EMBEDDER_TASKS
from bgekit.train.data import parse_example
from bgekit.train.trainer import EmbedderCollator
from tests.conftest import named_copy
from tests.reference import PlainEncoder
from tests.tiny_models import CORPUS

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)
TEXTS = ["a cat sat on the mat", "stock markets fell sharply today", "what is bge m3"]
TASKS = [name for name, _, _ in LLM_EMBEDDER_TASKS]


@pytest.fixture(scope="module")
def llm_embedder(models_root: Path, bert_st_mean: Path) -> Path:
    """The tiny BERT in a folder named like BAAI/llm-embedder (bgekit's table gives its tasks)."""
    return named_copy(bert_st_mean, models_root / "llm-embedder")


@pytest.fixture(scope="module")
def emb(llm_embedder: Path) -> Embedder:
    return Embedder.from_pretrained(str(llm_embedder), engine=FP32)


def _by_hand(path: Path, text: str, max_length: int) -> list[int]:
    tok = AutoTokenizer.from_pretrained(str(path))
    return list(tok(text, truncation=True, max_length=max_length)["input_ids"])


@pytest.mark.parametrize("task", TASKS)
def test_every_task_prefixes_both_sides_as_the_reference(
    emb: Embedder, llm_embedder: Path, task: str
) -> None:
    query_instruction, passage_instruction = next((q, p) for n, q, p in LLM_EMBEDDER_TASKS if n == task)
    plain = PlainEncoder(llm_embedder)
    for kind, instruction, limit in (
        ("query", query_instruction, emb.info.query_max_length),
        ("document", passage_instruction, emb.info.passage_max_length),
    ):
        seqs = emb.tokenize(TEXTS, kind=kind, task=task)  # type: ignore[arg-type]
        assert [list(s.ids) for s in seqs] == [_by_hand(llm_embedder, instruction + t, limit) for t in TEXTS]
        got = emb.encode(TEXTS, kind=kind, task=task).dense  # type: ignore[arg-type]
        assert got is not None
        want = []
        for t in TEXTS:
            _, h = plain.hidden(instruction + t, limit)
            want.append(h[0] / np.linalg.norm(h[0]))  # CLS pooling, normalised
        np.testing.assert_allclose(got, np.array(want), atol=1e-5)


def test_default_task_and_overrides(emb: Embedder, llm_embedder: Path) -> None:
    assert emb.info.tasks == tuple(TASKS) and emb.info.default_task == "qa"
    qa = emb.tokenize(TEXTS[:1], kind="query", task="qa")[0].ids
    assert emb.tokenize(TEXTS[:1], kind="query")[0].ids == qa  # qa by default, as the reference
    assert emb.tokenize(TEXTS[:1], kind="query", instruction="Find: ")[0].ids == _by_hand(
        llm_embedder, "Find: " + TEXTS[0], emb.info.query_max_length
    )
    tool = emb.with_task("tool")
    assert tool.tokenize(TEXTS[:1])[0].ids == emb.tokenize(TEXTS[:1], task="tool")[0].ids
    assert emb.info.default_task == "qa"  # the original is unchanged
    none = Embedder.from_pretrained(str(llm_embedder), engine=FP32, settings=EmbedderSettings(task=""))
    assert none.tokenize(TEXTS[:1])[0].ids == _by_hand(llm_embedder, TEXTS[0], 128)
    with pytest.raises(
        InputError, match=r"unknown task 'nope'; tasks: qa, icl, chat, lrlm, tool, convsearch"
    ):
        emb.encode(TEXTS, task="nope")
    with pytest.raises(InputError, match="unknown task"):
        Embedder.from_pretrained(str(llm_embedder), engine=FP32, settings=EmbedderSettings(task="nope"))


def test_sentence_transformers_prompts_are_read_for_both_sides(tmp_path: Path, bert_st_mean: Path) -> None:
    path = tmp_path / "st"
    shutil.copytree(bert_st_mean, path)
    prompts = {"query": "query: ", "document": "passage: ", "classification": "classify: "}
    (path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    e = Embedder.from_pretrained(str(path), engine=FP32)
    limit = e.info.passage_max_length
    assert e.tokenize(["a cat"], kind="query")[0].ids == _by_hand(path, "query: a cat", limit)
    assert e.tokenize(["a cat"])[0].ids == _by_hand(path, "passage: a cat", limit)
    assert e.tokenize(["a cat"], kind="query", task="classification")[0].ids == _by_hand(
        path, "classify: a cat", limit
    )


def test_index_applies_its_task_and_rebuilds_its_embedder(emb: Embedder, tmp_path: Path) -> None:
    docs = [Document(f"d{i}", t) for i, t in enumerate(dict.fromkeys(CORPUS))]
    index = Index(emb, IndexConfig(task="tool"))
    index.add(docs)
    # each (short) document is one chunk, encoded with the tool task's passage instruction
    direct = emb.encode([d.text for d in docs], task="tool").dense
    assert index._dense is not None and direct is not None
    np.testing.assert_allclose(index._dense.data, direct, atol=1e-6)
    hits = index.search([TEXTS[0]], 3, mode="dense")[0]
    q = emb.encode([TEXTS[0]], kind="query", task="tool").dense
    assert q is not None
    assert hits[0].score == pytest.approx(float((direct @ q[0]).max()), abs=1e-5)
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", engine=FP32)  # the recorded settings rebuild the embedder
    assert loaded.config.task == "tool" and loaded.embedder.prompts == emb.prompts
    assert [h.id for h in loaded.search([TEXTS[0]], 3, mode="dense")[0]] == [h.id for h in hits]
    with pytest.raises(InputError, match="unknown task"):
        Index(emb, IndexConfig(task="nope"))


def test_a_different_model_or_setting_is_named(emb: Embedder, llm_embedder: Path, tmp_path: Path) -> None:
    index = Index(emb)
    index.add([Document("a", "a cat sat"), Document("b", "dogs bark")])
    index.save(tmp_path / "ix")
    other = Embedder.from_pretrained(
        str(llm_embedder), engine=FP32, settings=EmbedderSettings(pooling="mean", query_instruction="Q: ")
    )
    with pytest.raises(InputError) as err:
        Index.load(tmp_path / "ix", other)
    message = str(err.value)
    assert 'pooling: "cls" -> "mean"' in message and 'prompts.query_instruction: "" -> "Q: "' in message
    assert Index.load(tmp_path / "ix", emb.with_task("qa")).embedder is not None  # same settings: fine
    with pytest.raises(InputError, match=r"prompts\.task"):
        Index.load(tmp_path / "ix", emb.with_task("chat"))


def test_server_takes_a_task(emb: Embedder) -> None:
    pytest.importorskip("fastapi")
    import asyncio

    from bgekit.server import ServerConfig, create_app

    app = create_app(ServerConfig(), embedder=emb)

    async def main_() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                return [
                    await client.post("/encode", json={"inputs": TEXTS, "kind": "query", "task": "chat"}),
                    await client.post("/v1/embeddings", json={"input": TEXTS, "task": "lrlm"}),
                    await client.post("/embed", json={"inputs": TEXTS, "prompt_name": "icl"}),
                    await client.post("/encode", json={"inputs": TEXTS, "task": "nope"}),
                    await client.post("/embed", json={"inputs": TEXTS, "prompt_name": "nope"}),
                ]

    enc, openai, tei, bad, bad_tei = asyncio.run(main_())
    want = emb.encode(TEXTS, kind="query", task="chat").dense
    np.testing.assert_allclose([d["dense"] for d in enc.json()["data"]], want, atol=1e-5)
    want = emb.encode(TEXTS, task="lrlm").dense
    np.testing.assert_allclose([d["embedding"] for d in openai.json()["data"]], want, atol=1e-5)
    np.testing.assert_allclose(tei.json(), emb.encode(TEXTS, kind="query", task="icl").dense, atol=1e-5)
    assert bad.status_code == 422 and "unknown task 'nope'" in bad.text
    assert bad_tei.status_code == 422 and "qa, icl" in bad_tei.text


def test_training_examples_carry_a_task(emb: Embedder) -> None:
    ex = parse_example({"query": "q1", "pos": ["p1"], "neg": ["n1"], "task": "tool"}, "t:1")
    plain = parse_example({"query": "q2", "pos": ["p2"]}, "t:2")
    assert ex.to_json()["task"] == "tool"
    with pytest.raises(InputError, match='t:3: "task" must be a string'):
        parse_example({"query": "q", "pos": ["p"], "task": 3}, "t:3")
    batch = EmbedderCollator(emb)([(ex, ["p1", "n1"], None), (plain, ["p2", "x"], None)])
    want_q = [emb.tokenize(["q1"], kind="query", task="tool")[0], emb.tokenize(["q2"], kind="query")[0]]
    want_p = emb.tokenize(["p1", "n1"], task="tool") + emb.tokenize(["p2", "x"])
    for prefix, want in (("q_", want_q), ("p_", want_p)):
        ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
        got = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask, strict=True)]
        assert got == [list(s.ids) for s in want]


def test_cli_encode_with_a_task(llm_embedder: Path, emb: Embedder, tmp_path: Path) -> None:
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "vec.npz"
    argv = ["encode", "--model", str(llm_embedder), "--input", str(src), "--output", str(out)]
    assert main([*argv, "--kind", "query", "--task", "convsearch", "--dtype", "float32"]) == 0
    from bgekit.io import load_encoded

    got = load_encoded(out)[0].dense
    np.testing.assert_allclose(got, emb.encode(TEXTS, kind="query", task="convsearch").dense, atol=1e-5)
    assert main([*argv, "--task", "nope"]) == 2
