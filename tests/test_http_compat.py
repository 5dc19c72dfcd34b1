"""Clients people already use, unchanged, against a live `bgekit serve` app on loopback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
cohere = pytest.importorskip("cohere")

from bgekit import EngineConfig, Reranker  # noqa: E402
from bgekit.server import ServerConfig, create_app  # noqa: E402
from tests.live_server import live  # noqa: E402

DOCS = ["cats purr and sleep", "the stock market fell", "dogs chase cats", "market news today"]
QUERY = "cats"


@pytest.fixture(scope="module")
def reranker(bert_reranker: Path) -> Reranker:
    return Reranker.from_pretrained(str(bert_reranker), engine=EngineConfig(device="cpu", dtype="float32"))


def expected(rr: Reranker) -> tuple[list[int], np.ndarray]:
    """The library's own ranking and sigmoid scores: the independent computation."""
    logits = rr.score([(QUERY, d) for d in DOCS])
    probs = 1 / (1 + np.exp(-logits))
    return sorted(range(len(DOCS)), key=lambda i: (-logits[i], i)), probs


def test_cohere_v1_and_v2_clients_rerank_unchanged(reranker: Reranker) -> None:
    order, probs = expected(reranker)
    app = create_app(ServerConfig(api_key="co-key"), reranker=reranker)
    with live(app) as url:
        v1 = cohere.Client(api_key="co-key", base_url=url)
        got = v1.rerank(query=QUERY, documents=DOCS, model="any", top_n=3, return_documents=True)
        assert [r.index for r in got.results] == order[:3]
        np.testing.assert_allclose([r.relevance_score for r in got.results], probs[order[:3]], rtol=1e-5)
        assert [r.document.text for r in got.results] == [DOCS[i] for i in order[:3]]  # type: ignore[union-attr]
        assert got.id and got.meta is not None and got.meta.api_version.version == "1"  # type: ignore[union-attr]

        v2 = cohere.ClientV2(api_key="co-key", base_url=url)
        got2 = v2.rerank(model="any", query=QUERY, documents=DOCS)
        assert [r.index for r in got2.results] == order
        np.testing.assert_allclose([r.relevance_score for r in got2.results], probs[order], rtol=1e-5)

        wrong = cohere.ClientV2(api_key="nope", base_url=url)
        with pytest.raises(cohere.core.api_error.ApiError) as err:
            wrong.rerank(model="any", query=QUERY, documents=DOCS)
        assert err.value.status_code == 401


def test_jina_shape_on_v1_rerank(reranker: Reranker) -> None:
    """Jina's client posts the same body to /v1/rerank and reads model, usage and results."""
    import httpx

    order, probs = expected(reranker)
    app = create_app(ServerConfig(), reranker=reranker)
    with live(app) as url:
        body = {
            "model": "jina-reranker",
            "query": QUERY,
            "documents": DOCS,
            "top_n": 2,
            "return_documents": False,
        }
        r = httpx.post(f"{url}/v1/rerank", json=body, timeout=30)
        assert r.status_code == 200
        data = r.json()
        assert data["model"] == "jina-reranker" and data["usage"]["total_tokens"] > 0
        assert [x["index"] for x in data["results"]] == order[:2]
        assert all("document" not in x for x in data["results"])
        np.testing.assert_allclose(
            [x["relevance_score"] for x in data["results"]], probs[order[:2]], rtol=1e-5
        )
        bad = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": []}, timeout=30)
        assert bad.status_code == 422 and "documents" in bad.json()["error"]["message"]


def test_openai_client_sends_token_ids(bert_m3: Path) -> None:
    """OpenAI's API (and vLLM's) take token ids as input; here they are the model's own ids
    of a text without special tokens, so they embed exactly as the text does."""
    import openai

    from bgekit import Embedder

    emb = Embedder.from_pretrained(str(bert_m3), engine=EngineConfig(device="cpu", dtype="float32"))
    texts = ["cats and dogs", "the stock market fell on monday"]
    ids = emb.tokenizer.ids(texts)
    app = create_app(ServerConfig(api_key="sk-x"), embedder=emb)
    with live(app) as url:
        client = openai.OpenAI(api_key="sk-x", base_url=f"{url}/v1")
        from_text = client.embeddings.create(input=texts, model="m", encoding_format="float")
        from_ids = client.embeddings.create(input=ids, model="m", encoding_format="float")
        one = client.embeddings.create(input=ids[1], model="m")  # a single list of ids; base64 by default
        a = np.array([d.embedding for d in from_text.data])
        np.testing.assert_allclose(np.array([d.embedding for d in from_ids.data]), a, atol=1e-6)
        np.testing.assert_allclose(one.data[0].embedding, a[1], atol=1e-6)
        np.testing.assert_allclose(a, emb.encode(texts).dense, atol=1e-6)
        assert from_ids.usage.prompt_tokens == sum(len(i) + 2 for i in ids)  # [CLS] ... [SEP]
        with pytest.raises(openai.UnprocessableEntityError, match="outside the vocabulary"):
            client.embeddings.create(input=[[1, 10**9]], model="m")
        with pytest.raises(openai.APIStatusError, match="longer than"):
            client.embeddings.create(input=[[5] * 10_000], model="m")


def test_tei_clients_embed_unchanged(bert_m3: Path) -> None:
    """huggingface_hub's InferenceClient posts to TEI's ``POST /``; llama-index's TEI client
    posts to ``/embed`` and reads ``[[float]]``; both send the key as a bearer token."""
    from huggingface_hub import InferenceClient
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    from bgekit import Embedder

    emb = Embedder.from_pretrained(str(bert_m3), engine=EngineConfig(device="cpu", dtype="float32"))
    texts = ["cats and dogs", "the stock market fell on monday"]
    want = emb.encode(texts).dense
    queries = emb.encode_queries(texts).dense
    app = create_app(ServerConfig(api_key="tei-key"), embedder=emb)
    with live(app) as url:
        hf = InferenceClient(model=url, token="tei-key")
        np.testing.assert_allclose(hf.feature_extraction(texts[0]), want[:1], atol=1e-6)
        np.testing.assert_allclose(
            hf.feature_extraction(texts[1], prompt_name="query"), queries[1:], atol=1e-6
        )
        li = TextEmbeddingsInference(model_name="m", base_url=url, auth_token="tei-key")
        np.testing.assert_allclose(li.get_text_embedding_batch(texts), want, atol=1e-6)

        import httpx

        key = {"Authorization": "Bearer tei-key"}
        long = {"inputs": "word " * 2000}
        assert httpx.post(f"{url}/embed", json=long, headers=key, timeout=30).status_code == 413
        cut = httpx.post(f"{url}/embed", json={**long, "truncate": True}, headers=key, timeout=30)
        assert cut.status_code == 200 and len(cut.json()[0]) == want.shape[1]
        short = httpx.post(f"{url}/embed", json={"inputs": texts, "dimensions": 4}, headers=key, timeout=30)
        small = want[:, :4] / np.linalg.norm(want[:, :4], axis=1, keepdims=True)
        np.testing.assert_allclose(short.json(), small, atol=1e-6)
        sparse = httpx.post(f"{url}/embed_sparse", json={"inputs": texts}, headers=key, timeout=30).json()
        ref = emb.encode(texts, outputs=("sparse",)).sparse
        assert ref is not None
        for got, vec in zip(sparse, ref, strict=True):
            assert [x["index"] for x in got] == vec.indices.tolist()
            np.testing.assert_allclose([x["value"] for x in got], vec.values, rtol=1e-6)
        bad = httpx.post(f"{url}/embed", json={"inputs": "x", "prompt_name": "nope"}, headers=key, timeout=30)
        assert bad.status_code == 422 and "prompt_name" in bad.json()["error"]["message"]


def test_tei_rerank_tokenize_and_info(reranker: Reranker, bert_m3: Path) -> None:
    import httpx

    from bgekit import Embedder

    order, probs = expected(reranker)
    logits = reranker.score([(QUERY, d) for d in DOCS])
    emb = Embedder.from_pretrained(str(bert_m3), engine=EngineConfig(device="cpu", dtype="float32"))
    app = create_app(ServerConfig(), embedder=emb, reranker=reranker)
    with live(app) as url:
        tei = httpx.post(
            f"{url}/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}, timeout=30
        )
        assert tei.status_code == 200
        got = tei.json()
        assert [x["index"] for x in got] == order and [x["text"] for x in got] == [DOCS[i] for i in order]
        np.testing.assert_allclose([x["score"] for x in got], probs[order], rtol=1e-5)
        raw = httpx.post(
            f"{url}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}, timeout=30
        )
        np.testing.assert_allclose([x["score"] for x in raw.json()], logits[order], rtol=1e-5)
        assert all("text" not in x for x in raw.json())
        cohere_shape = httpx.post(
            f"{url}/rerank", json={"query": QUERY, "documents": DOCS}, timeout=30
        ).json()
        assert [x["index"] for x in cohere_shape["results"]] == order  # the documents shape still works

        toks = httpx.post(f"{url}/tokenize", json={"inputs": ["cats and dogs"]}, timeout=30).json()[0]
        seq = emb.tokenizer.encode(["cats and dogs"], 64)[0]
        assert [t["id"] for t in toks] == list(seq.ids)
        assert toks[0]["special"] and toks[0]["start"] is None and not toks[1]["special"]
        assert ["cats and dogs"[t["start"] : t["stop"]] for t in toks[1:-1]] == ["cats", "and", "dogs"]
        bare = httpx.post(f"{url}/tokenize", json={"inputs": "cats", "add_special_tokens": False}, timeout=30)
        assert [t["id"] for t in bare.json()[0]] == emb.tokenizer.ids(["cats"])[0]

        info = httpx.get(f"{url}/info", timeout=30).json()
        assert info["model_type"] == {"embedding": {"pooling": emb.info.pooling}}
        assert info["max_input_length"] == emb.info.passage_max_length and info["max_client_batch_size"] > 0


@pytest.mark.parametrize("which", ["bert_m3", "xlmr_m3"])
def test_tei_embed_all_gives_every_tokens_last_hidden_state(
    which: str, request: pytest.FixtureRequest
) -> None:
    import httpx
    import torch
    from transformers import AutoModel

    from bgekit import Embedder

    path = request.getfixturevalue(which)
    emb = Embedder.from_pretrained(str(path), engine=EngineConfig(device="cpu", dtype="float32"))
    texts = ["cats and dogs", "the stock market fell on monday and tuesday"]
    ref_model = AutoModel.from_pretrained(str(path)).eval()  # the independent forward
    states = emb.token_states(texts)
    for seq, got in zip(emb.tokenize(texts), states, strict=True):
        with torch.no_grad():
            ref = ref_model(input_ids=torch.tensor([list(seq.ids)])).last_hidden_state[0].numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)
    app = create_app(ServerConfig(), embedder=emb)
    with live(app) as url:
        r = httpx.post(f"{url}/embed_all", json={"inputs": texts}, timeout=30)
        assert r.status_code == 200
        for got, ref in zip(r.json(), states, strict=True):
            np.testing.assert_allclose(np.array(got), ref, atol=1e-6)
