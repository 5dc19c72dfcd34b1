"""LLM models on tiny random decoders: every vector and score against an independent
computation (transformers' own full forward, or a plain re-implementation), early exit
counted, token compression by hand, batch and padding independence."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from bgekit import Embedder, EmbedderSettings, EngineConfig, InputError, Reranker
from bgekit.models.llm_reranker import LIGHTWEIGHT_PROMPT, YES_NO_PROMPT, compress_tokens, layer_flops
from tests.tiny_llms import (
    MINICPM,
    build_costwise_gemma2,
    build_gemma_reranker,
    build_minicpm_layerwise,
    build_qwen2_embedder,
)
from tests.tiny_models import CORPUS

# exact fp32: the checks compare with transformers' own forward
FAST = EngineConfig(device="cpu", progress=False, dtype="float32")
TEXTS = list(dict.fromkeys(CORPUS))
PAIRS = [(TEXTS[i], TEXTS[(i + 3) % len(TEXTS)] + " " + TEXTS[(i + 5) % len(TEXTS)]) for i in range(6)]


@pytest.fixture(scope="module")
def llm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llms")


@pytest.fixture(scope="module")
def qwen(llm_root: Path) -> Path:
    return build_qwen2_embedder(llm_root / "qwen2-embedder")


@pytest.fixture(scope="module")
def gemma(llm_root: Path) -> Path:
    return build_gemma_reranker(llm_root / "gemma-reranker")


@pytest.fixture(scope="module")
def minicpm(llm_root: Path) -> Path:
    return build_minicpm_layerwise(llm_root / "minicpm-layerwise")


@pytest.fixture(scope="module")
def costwise(llm_root: Path) -> Path:
    return build_costwise_gemma2(llm_root / "gemma2-lightweight")


def _last_token_vectors(path: Path, texts: list[str]) -> np.ndarray:
    """One text at a time (no padding), transformers' forward, last token, L2-normalised."""
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")
            h = model(**ids).last_hidden_state[0, -1]
            out.append(torch.nn.functional.normalize(h, dim=-1).numpy())
    return np.stack(out)


# -- decoder embedders --------------------------------------------------------------------


def test_decoder_embedder_last_token_and_instruction_format(qwen: Path) -> None:
    emb = Embedder.from_pretrained(str(qwen), engine=FAST)
    assert emb.info.pooling == "last_token" and emb.info.query_format == "Instruct: {}\nQuery: {}"
    task = "Given a web search query, retrieve relevant passages that answer the query."
    docs = emb.encode(TEXTS).dense
    queries = emb.encode_queries(TEXTS[:3], instruction=task).dense
    np.testing.assert_allclose(docs, _last_token_vectors(qwen, TEXTS), atol=1e-5)
    want = _last_token_vectors(qwen, [f"Instruct: {task}\nQuery: {t}" for t in TEXTS[:3]])
    np.testing.assert_allclose(queries, want, atol=1e-5)
    assert emb.tokenize(["x"])[0].ids[-1] == 2  # the tokenizer's own EOS is kept (last token pooled)


def test_decoder_embedder_batch_and_padding_side_independent(qwen: Path) -> None:
    from bgekit.engine import pad_batch
    from bgekit.models.heads import EmbedRunner

    one = Embedder.from_pretrained(
        str(qwen), engine=EngineConfig(device="cpu", progress=False, max_batch_size=1, dtype="float32")
    )
    many = Embedder.from_pretrained(str(qwen), engine=FAST)
    np.testing.assert_allclose(one.encode(TEXTS).dense, many.encode(TEXTS).dense, atol=1e-5)
    seqs = many.tokenize(TEXTS)
    runner = EmbedRunner(
        many.torch_module(),
        torch.device("cpu"),
        pooling="last_token",
        normalize=True,  # type: ignore[arg-type]
        outputs=("dense",),
        special_ids=many.tokenizer.special_ids,
    )
    with torch.no_grad():
        right = runner(pad_batch(seqs, many.tokenizer.pad_id, torch.device("cpu"), "right"))
        left = runner(pad_batch(seqs, many.tokenizer.pad_id, torch.device("cpu"), "left"))
    np.testing.assert_allclose([r.dense for r in left], [r.dense for r in right], atol=1e-4)


def test_known_llm_embedder_uses_the_bge_format(qwen: Path, llm_root: Path) -> None:
    named = llm_root / "bge-multilingual-gemma2"
    shutil.copytree(qwen, named, dirs_exist_ok=True)
    emb = Embedder.from_pretrained(str(named), engine=FAST)
    assert emb.info.query_format == "<instruct>{}\n<query>{}"
    got = emb.encode_queries([TEXTS[0]], instruction="Find").dense
    np.testing.assert_allclose(
        got, _last_token_vectors(qwen, [f"<instruct>Find\n<query>{TEXTS[0]}"]), atol=1e-5
    )
    np.testing.assert_allclose(
        emb.encode_queries([TEXTS[0]]).dense, _last_token_vectors(qwen, [TEXTS[0]]), atol=1e-5
    )


def test_icl_embedder_layout(qwen: Path, llm_root: Path) -> None:
    named = llm_root / "bge-en-icl"
    shutil.copytree(qwen, named, dirs_exist_ok=True)
    examples = [
        {"instruct": "Find a pet", "query": "cats", "response": "cats and dogs are popular pets"},
        {"instruct": "Find news", "query": "stocks", "response": "the stock market fell"},
    ]
    limit = 30
    emb = Embedder.from_pretrained(
        str(named), engine=FAST, examples=examples, settings=EmbedderSettings(query_max_length=limit)
    )
    hf = AutoTokenizer.from_pretrained(str(qwen))
    task = "Given a web search query, retrieve relevant passages that answer the query."
    query = TEXTS[1] + " " + TEXTS[2] + " " + TEXTS[3]  # long: cut on its own
    prefix = "\n\n".join(
        f"<instruct>{e['instruct']}\n<query>{e['query']}\n<response>{e['response']}" for e in examples
    )
    prefix += "\n\n"
    budget = limit - len(hf("<s>", add_special_tokens=False)["input_ids"])
    budget -= len(hf("\n<response></s>", add_special_tokens=False)["input_ids"])
    cut = hf(f"<instruct>{task}\n<query>{query}", add_special_tokens=False)["input_ids"][:budget]
    text = prefix + hf.decode(cut) + "\n<response>"
    want_ids = hf(text)["input_ids"]
    got = emb.tokenize([query], kind="query", instruction=task)[0]
    assert got.ids == want_ids and got.truncated
    np.testing.assert_allclose(
        emb.encode_queries([query], instruction=task).dense, _last_token_vectors(qwen, [text]), atol=1e-5
    )
    assert emb.tokenize(["doc"])[0].ids == hf("doc")["input_ids"]  # documents: plain
    bare = emb.with_examples([])  # examples swapped per task; none: just the query and suffix
    assert (
        bare.tokenize(["q"], kind="query", instruction="T")[0].ids
        == hf("<instruct>T\n<query>q\n<response>")["input_ids"]
    )
    assert emb.tokenize([query], kind="query", instruction=task)[0].ids == want_ids  # unchanged
    with pytest.raises(InputError, match="unknown keys"):
        emb.with_examples([{"question": "x"}])
    with pytest.warns(DeprecationWarning, match="with_examples"):
        emb.set_examples([])  # the old call still works, in place
    assert (
        emb.tokenize(["q"], kind="query", instruction="T")[0].ids
        == bare.tokenize(["q"], kind="query", instruction="T")[0].ids
    )


# -- yes/no reranker ------------------------------------------------------------------------------


def _pair_ids(hf: object, q: str, p: str, prompt: str, *, bos: bool, max_length: int = 512) -> list[int]:
    enc = hf  # a transformers tokenizer
    ids = lambda t: enc(t, add_special_tokens=False)["input_ids"]  # type: ignore[operator]  # noqa: E731
    first = ([enc.bos_token_id] if bos else []) + ids("A: " + q)[: max_length * 3 // 4]  # type: ignore[attr-defined]
    second = ids("\n") + ids("B: " + p)[:max_length]
    return first + second + ids("\n") + ids(prompt)


def test_yes_no_reranker_is_the_yes_logit_at_the_last_token(gemma: Path) -> None:
    rr = Reranker.from_pretrained(str(gemma), engine=FAST)
    hf = AutoTokenizer.from_pretrained(str(gemma))
    lm = AutoModelForCausalLM.from_pretrained(str(gemma)).eval()
    yes = hf("Yes", add_special_tokens=False)["input_ids"][0]
    want = []
    with torch.no_grad():
        for q, p in PAIRS:
            ids = _pair_ids(hf, q, p, YES_NO_PROMPT, bos=True)
            want.append(float(lm(torch.tensor([ids])).logits[0, -1, yes]))
    np.testing.assert_allclose(rr.score(PAIRS), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rr.score(PAIRS, normalize=True), 1 / (1 + np.exp(-np.array(want))), rtol=1e-4)
    one = Reranker.from_pretrained(
        str(gemma), engine=EngineConfig(device="cpu", progress=False, max_batch_size=1, dtype="float32")
    )
    np.testing.assert_allclose(one.score(PAIRS), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="layer-wise"):
        rr.score(PAIRS, cutoff_layers=[2])  # type: ignore[call-arg]


# -- layer-wise (MiniCPM) --------------------------------------------------------------------------


def _minicpm_reference(path: Path, ids: list[int], cutoffs: list[int]) -> list[float]:
    """A plain MiniCPM forward (no transformers): scaled embeddings, pre-norm layers with
    scaled residuals, RoPE, grouped-query attention, SiLU-gated MLP; head c - start_layer on
    the final norm of the state after c layers, at the last token."""
    import json

    cfg = json.loads((path / "config.json").read_text())
    w = load_file(str(path / "model.safetensors"))
    n_layers, heads, kv, eps = (
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["rms_norm_eps"],
    )
    d = cfg["hidden_size"] // heads
    scale = cfg["scale_depth"] / math.sqrt(n_layers)

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], dtype=torch.float32)
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], dim=-1)
        half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
        return x * ang.cos() + half * ang.sin()

    n = len(ids)
    h = w["model.embed_tokens.weight"][ids] * cfg["scale_emb"]
    states = {0: h}
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        x = norm(h, w[p + "input_layernorm.weight"])
        q = (x @ w[p + "self_attn.q_proj.weight"].T).view(n, heads, d).transpose(0, 1)
        k = (
            (x @ w[p + "self_attn.k_proj.weight"].T)
            .view(n, kv, d)
            .transpose(0, 1)
            .repeat_interleave(heads // kv, 0)
        )
        v = (
            (x @ w[p + "self_attn.v_proj.weight"].T)
            .view(n, kv, d)
            .transpose(0, 1)
            .repeat_interleave(heads // kv, 0)
        )
        att = torch.softmax(rope(q) @ rope(k).transpose(1, 2) / math.sqrt(d) + causal, dim=-1) @ v
        h = h + (att.transpose(0, 1).reshape(n, -1) @ w[p + "self_attn.o_proj.weight"].T) * scale
        x = norm(h, w[p + "post_attention_layernorm.weight"])
        mlp = torch.nn.functional.silu(x @ w[p + "mlp.gate_proj.weight"].T) * (
            x @ w[p + "mlp.up_proj.weight"].T
        )
        h = h + (mlp @ w[p + "mlp.down_proj.weight"].T) * scale
        states[i + 1] = h
    out = []
    for c in cutoffs:
        last = norm(states[c], w["model.norm.weight"])[-1]
        out.append(float(last @ w[f"lm_head.{c - MINICPM['start_layer']}.linear_head.weight"][0]))
    return out


def test_layerwise_scores_per_layer_and_early_exit(minicpm: Path) -> None:
    rr = Reranker.from_pretrained(str(minicpm), engine=FAST)
    hf = AutoTokenizer.from_pretrained(str(minicpm))
    cutoffs = [1, 2, 4]
    got = rr.score(PAIRS, cutoff_layers=[4, 1, 2])  # type: ignore[call-arg]
    assert got.shape == (3, len(PAIRS))
    want = np.array(
        [_minicpm_reference(minicpm, _pair_ids(hf, q, p, YES_NO_PROMPT, bos=True), cutoffs) for q, p in PAIRS]
    ).T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    default = rr.score(PAIRS)  # the last layer
    np.testing.assert_allclose(default, want[2], rtol=1e-4, atol=1e-4)
    calls = {"n": 0}
    layers = rr.scorer.base.layers  # type: ignore[attr-defined]
    hooks = [
        layer.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1)) for layer in layers
    ]
    try:
        early = rr.score(PAIRS, cutoff_layers=[2])  # type: ignore[call-arg]
    finally:
        for hook in hooks:
            hook.remove()
    np.testing.assert_allclose(early, want[1], rtol=1e-4, atol=1e-4)
    batches = math.ceil(len(PAIRS) / FAST.max_batch_size)
    assert calls["n"] == 2 * batches  # layers 3 and 4 never ran
    with pytest.raises(InputError, match="not available"):
        rr.score(PAIRS, cutoff_layers=[0])  # type: ignore[call-arg]
    with pytest.raises(InputError, match="lightweight"):
        rr.score(PAIRS, compress_ratio=2)  # type: ignore[call-arg]


# -- lightweight (Gemma-2 with token compression) ----------------------------------------------------


def test_compress_tokens_by_hand() -> None:
    h = torch.arange(1, 11, dtype=torch.float32)[None, :, None].repeat(1, 1, 2)  # tokens 1..10
    mask = torch.ones(1, 10, dtype=torch.long)
    out, new_mask = compress_tokens(h, mask, torch.tensor([2]), torch.tensor([3]), ratio=2)
    # query (1, 2) kept; passage 3..7 pooled by 2 -> 3.5, 5.5, 7; prompt (8, 9, 10) kept
    assert out[0, :, 0].tolist() == [1, 2, 3.5, 5.5, 7, 8, 9, 10] and new_mask.tolist() == [[1] * 8]
    two = torch.cat([h, h.flip(1)])
    two_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])
    out, new_mask = compress_tokens(two, two_mask, torch.tensor([2, 1]), torch.tensor([3, 2]), ratio=3)
    # row 2: tokens 10..4 real; query (10), passage 9 8 7 | 6 -> 8, 6; prompt (5, 4)
    assert out[1, :5, 0].tolist() == [10, 8, 6, 5, 4] and new_mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0]


def _gemma2_reference(
    path: Path, ids: list[int], cutoff: int, head: int, compress: tuple[int, int, int] | None
) -> float:
    """transformers' Gemma-2 on one unpadded sequence. Without ``compress``: its own full
    forward (own masks, sliding window included), hidden state after ``cutoff`` layers. With
    ``compress`` = (layer, query length, prompt length): its layers run one by one and the
    passage tokens are mean-pooled by 2 before that layer."""
    import json

    from transformers import Gemma2Config, Gemma2Model

    cfg = json.loads((path / "config.json").read_text())
    drop = ("model_type", "architectures", "start_layer", "layer_sep", "layer_wise")
    config = Gemma2Config(**{k: v for k, v in cfg.items() if k not in drop})
    config._attn_implementation = "eager"
    model = Gemma2Model(config).eval()
    w = load_file(str(path / "model.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in w.items() if k.startswith("model.")}, strict=False)
    with torch.no_grad():
        if compress is None:
            h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[cutoff]
            if cutoff < config.num_hidden_layers:  # transformers' last entry is already normed
                h = model.norm(h)
        else:
            h = model.embed_tokens(torch.tensor([ids]))
            for i in range(cutoff):
                if i == compress[0]:
                    q, r = compress[1], compress[2]
                    p = h.shape[1] - q - r
                    groups = [h[:, q + j : min(q + j + 2, q + p)].mean(1) for j in range(0, p, 2)]
                    h = torch.cat([h[:, :q], torch.stack(groups, 1), h[:, q + p :]], dim=1)
                n = h.shape[1]
                pos = torch.arange(n)[None]
                far = torch.arange(n)[:, None] - torch.arange(n)[None, :]
                blocked = far < 0
                if config.layer_types[i] == "sliding_attention":
                    blocked |= far >= config.sliding_window
                mask = torch.zeros(n, n).masked_fill(blocked, torch.finfo(h.dtype).min)[None, None]
                h = model.layers[i](
                    h, attention_mask=mask, position_ids=pos, position_embeddings=model.rotary_emb(h, pos)
                )
            h = model.norm(h)
        x = float(h[0, -1] @ w[f"lm_head.{head}.linear_head.weight"][0])
    return math.tanh(x / 30.0) * 30.0


def test_lightweight_scores_with_and_without_compression(costwise: Path) -> None:
    rr = Reranker.from_pretrained(str(costwise), engine=FAST)
    hf = AutoTokenizer.from_pretrained(str(costwise))
    seqs = [_pair_ids(hf, q, p, LIGHTWEIGHT_PROMPT, bos=True) for q, p in PAIRS]
    q_lens = [
        1 + len(hf("A: " + q, add_special_tokens=False)["input_ids"]) + 1 for q, _ in PAIRS
    ]  # bos, query, "\n"
    r_len = len(hf("\n", add_special_tokens=False)["input_ids"]) + len(
        hf(LIGHTWEIGHT_PROMPT, add_special_tokens=False)["input_ids"]
    )
    plain = rr.score(PAIRS, cutoff_layers=[3])  # type: ignore[call-arg]
    np.testing.assert_allclose(
        plain, [_gemma2_reference(costwise, s, 3, 0, None) for s in seqs], rtol=1e-4, atol=1e-4
    )
    flops_full = rr.last_flops.flops  # type: ignore[attr-defined]
    squeezed = rr.score(PAIRS, cutoff_layers=[3], compress_ratio=2, compress_layers=[2])  # type: ignore[call-arg]
    want = [_gemma2_reference(costwise, s, 3, 0, (2, q, r_len)) for s, q in zip(seqs, q_lens, strict=True)]
    np.testing.assert_allclose(squeezed, want, rtol=1e-4, atol=1e-4)
    assert rr.last_flops.flops < flops_full  # type: ignore[attr-defined]
    both = rr.score(PAIRS, cutoff_layers=[2, 4])  # type: ignore[call-arg]
    # The reference reads the i-th head for the i-th requested layer (not layer - start_layer).
    np.testing.assert_allclose(
        both[1], [_gemma2_reference(costwise, s, 4, 1, None) for s in seqs], rtol=1e-4, atol=1e-4
    )
    with pytest.raises(InputError, match="at least 1"):
        rr.score(PAIRS, compress_ratio=0)  # type: ignore[call-arg]


def test_layer_flops_formula() -> None:
    class Cfg:
        hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size = 8, 2, 1, 4, 16

    # projections: 2*T*h*d*(2*heads + 2*kv) = 2*3*8*4*6; MLP: 2*T*3*h*I = 2*3*3*8*16; attention: 4*heads*d*T(T+1)/2
    assert layer_flops(Cfg(), 3) == 2 * 3 * 8 * 4 * 6 + 2 * 3 * 3 * 8 * 16 + 4 * 2 * 4 * 6


def test_pre_tokenised_scoring_matches_score(gemma: Path, costwise: Path) -> None:
    """The server's batcher scores pre-tokenised pairs; that path gives the same numbers."""
    for path in (gemma, costwise):
        rr = Reranker.from_pretrained(str(path), engine=FAST)
        np.testing.assert_allclose(rr.score_tokens(rr.tokenize(PAIRS)), rr.score(PAIRS), rtol=1e-5, atol=1e-5)


def test_cli_info_knows_llm_rerankers(minicpm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bgekit.cli.main import main

    assert main(["info", str(minicpm)]) == 0
    assert "reranker" in capsys.readouterr().out


def test_yes_no_reranker_scores_long_passages_by_window(gemma: Path) -> None:
    """Each window: bos + "A: " + query, "\\n", "B:" and the window of the passage's tokens,
    "\\n", the prompt; the pair's score is the best window's "Yes" logit."""
    rr = Reranker.from_pretrained(
        str(gemma), engine=FAST, max_length=48, long_passage="max", passage_overlap=4
    )
    hf = AutoTokenizer.from_pretrained(str(gemma))
    lm = AutoModelForCausalLM.from_pretrained(str(gemma)).eval()
    ids = lambda t: hf(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    yes = ids("Yes")[0]
    query, passage = "cats", "cats and dogs are popular pets in many homes " * 8
    first = [hf.bos_token_id, *ids("A: " + query)]
    head, whole = ids("B:"), ids("B: " + passage)
    assert whole[: len(head)] == head
    own = whole[len(head) :]
    fit = min(48, 48 + len(ids("\n")) + len(ids(YES_NO_PROMPT)) - len(first) - len(ids("\n"))) - len(head)
    want, start = [], 0
    with torch.no_grad():
        while True:
            seq = first + ids("\n") + head + own[start : start + fit] + ids("\n") + ids(YES_NO_PROMPT)
            want.append(float(lm(torch.tensor([seq])).logits[0, -1, yes]))
            if start + fit >= len(own):
                break
            start += fit - 4
    assert len(want) >= 3
    got = rr.score([(query, passage), ("cats", "the fox")])
    assert got[0] == pytest.approx(max(want), rel=1e-4, abs=1e-4)
    assert rr.prepare([(query, passage)]).windowed == 1
