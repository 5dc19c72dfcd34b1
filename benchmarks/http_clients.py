"""The clients people already use, unchanged, against a live `bgekit serve` on loopback:
one row per client and call, "works" only when the answer equals the library's own.

    python benchmarks/http_clients.py --reranker MINILM_CROSS_ENCODER

Needs the clients installed (openai, cohere, huggingface_hub, langchain-openai,
llama-index-embeddings-openai, llama-index-embeddings-text-embeddings-inference,
haystack-ai); a missing one is reported as such.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from live_server import serve  # noqa: E402

KEY = "client-key"
TEXTS = ["Vitamin D reduces fractures in older adults.", "The stock market fell on Monday."]
QUERY = "does vitamin d prevent fractures?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reranker", required=True)
    args = ap.parse_args()
    from bgekit import Embedder, EngineConfig, Reranker
    from bgekit.models.packaged import packaged_model_dir

    model = str(packaged_model_dir())
    emb = Embedder.from_pretrained(model, engine=EngineConfig(progress=False))
    want = emb.encode(TEXTS).dense
    assert want is not None
    rr = Reranker.from_pretrained(args.reranker)
    logits = rr.score([(QUERY, t) for t in TEXTS])
    order = [int(i) for i in np.argsort(-logits, kind="stable")]
    probs = 1 / (1 + np.exp(-logits))

    def close(got: object, ref: np.ndarray, tol: float = 1e-4) -> bool:
        return bool(np.allclose(np.asarray(got, dtype=np.float64), ref, atol=tol))

    rows: list[tuple[str, str]] = []
    with serve(["--model", model, "--reranker", args.reranker, "--api-key", KEY, "--log-level", "error"]) as (
        _,
        url,
    ):

        def openai_calls() -> bool:
            import openai

            c = openai.OpenAI(api_key=KEY, base_url=f"{url}/v1")
            b64 = c.embeddings.create(input=TEXTS, model="m")  # base64 by default
            flt = c.embeddings.create(input=TEXTS, model="m", encoding_format="float")
            dim = c.embeddings.create(input=TEXTS, model="m", encoding_format="float", dimensions=64)
            small = want[:, :64] / np.linalg.norm(want[:, :64], axis=1, keepdims=True)
            return (
                close([d.embedding for d in b64.data], want)
                and close([d.embedding for d in flt.data], want)
                and close([d.embedding for d in dim.data], small)
            )

        def openai_ids() -> bool:
            import openai

            c = openai.OpenAI(api_key=KEY, base_url=f"{url}/v1")
            got = c.embeddings.create(input=emb.tokenizer.ids(TEXTS), model="m", encoding_format="float")
            return close([d.embedding for d in got.data], want)

        def llama_openai() -> bool:
            from llama_index.embeddings.openai import OpenAIEmbedding

            e = OpenAIEmbedding(api_key=KEY, api_base=f"{url}/v1", model_name="text-embedding-3-small")
            return close(e.get_text_embedding_batch(TEXTS), want)

        def langchain_openai() -> bool:
            from langchain_openai import OpenAIEmbeddings

            e = OpenAIEmbeddings(
                api_key=KEY, base_url=f"{url}/v1", model="m", check_embedding_ctx_length=False
            )
            return close(e.embed_documents(TEXTS), want)

        def cohere_v1() -> bool:
            import cohere

            got = cohere.Client(api_key=KEY, base_url=url).rerank(query=QUERY, documents=TEXTS, model="m")
            return [r.index for r in got.results] == order and close(
                [r.relevance_score for r in got.results], probs[order]
            )

        def cohere_v2() -> bool:
            import cohere

            got = cohere.ClientV2(api_key=KEY, base_url=url).rerank(query=QUERY, documents=TEXTS, model="m")
            return [r.index for r in got.results] == order and close(
                [r.relevance_score for r in got.results], probs[order]
            )

        def hf_inference() -> bool:
            from huggingface_hub import InferenceClient

            c = InferenceClient(model=url, token=KEY)
            return close(np.vstack([c.feature_extraction(t) for t in TEXTS]), want)

        def llama_tei() -> bool:
            from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

            e = TextEmbeddingsInference(model_name="m", base_url=url, auth_token=KEY)
            return close(e.get_text_embedding_batch(TEXTS), want)

        def haystack_openai() -> bool:
            from haystack.components.embedders import OpenAITextEmbedder
            from haystack.utils import Secret

            e = OpenAITextEmbedder(api_key=Secret.from_token(KEY), api_base_url=f"{url}/v1", model="m")
            return close(e.run(TEXTS[0])["embedding"], want[0])

        checks: list[tuple[str, Callable[[], bool]]] = [
            ("`openai` (list input, base64 default, float, `dimensions`)", openai_calls),
            ("`openai` with token-id input", openai_ids),
            ("`llama-index-embeddings-openai` `OpenAIEmbedding(api_base=...)`", llama_openai),
            ("`langchain-openai` `OpenAIEmbeddings(check_embedding_ctx_length=False)`", langchain_openai),
            ("`cohere` `Client.rerank` (`/v1/rerank`)", cohere_v1),
            ("`cohere` `ClientV2.rerank` (`/v2/rerank`)", cohere_v2),
            ("`huggingface_hub` `InferenceClient(model=URL).feature_extraction` (`POST /`)", hf_inference),
            ("`llama-index-embeddings-text-embeddings-inference` (`/embed`)", llama_tei),
            ("haystack-ai `OpenAITextEmbedder(api_base_url=...)`", haystack_openai),
        ]
        for name, check in checks:
            try:
                result = "works (equals the library)" if check() else "answers, but not the library's numbers"
            except ImportError as e:
                result = f"not installed ({e.name})"
            except Exception as e:  # a client's own error: the row fails, with its message
                result = f"fails: {type(e).__name__}: {str(e)[:120]}"
            rows.append((name, result))
    print("| client | result |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")
    raise SystemExit(0 if all(r.startswith("works") for _, r in rows) else 1)


if __name__ == "__main__":
    main()
