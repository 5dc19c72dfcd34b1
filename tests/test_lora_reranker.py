"""LoRA fine-tuning of LLM rerankers (yes/no and layer-wise) on tiny random decoders: the
losses against hand computations on scores computed independently (transformers + peft;
a plain MiniCPM forward over hand-merged weights), the loss falling, the saved adapter
scoring as the trained model did, the merged models loading in transformers and bgekit,
the command line and the server."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bgekit import EngineConfig, InputError, Reranker
from bgekit.cli.main import build_parser, main
from bgekit.errors import ModelFormatError
from bgekit.models.llm_reranker import YES_NO_PROMPT, LLMReranker
from bgekit.train import RerankerTrainConfig, TrainExample, train_reranker, write_train_data
from bgekit.train.llm_reranker import LLMRerankerRun, llm_reranker_loss, prepare_llm_reranker
from bgekit.train.lora import LoraSettings
from bgekit.train.trainer import GroupDataset, _run, _tensors
from tests.test_llm import _minicpm_reference, _pair_ids
from tests.tiny_llms import MINICPM, build_gemma_reranker, build_minicpm_layerwise
from tests.tiny_models import CORPUS

peft = pytest.importorskip("peft")

FP32 = EngineConfig(device="cpu", progress=False, dtype="float32")
TEXTS = list(dict.fromkeys(CORPUS))
GROUP = 3
# queries with one positive and GROUP - 1 negatives (and teacher scores)
EXAMPLES = [
    TrainExample(
        TEXTS[i],
        (TEXTS[(i + 1) % len(TEXTS)] + " <doc>",),
        (TEXTS[(i + 4) % len(TEXTS)], TEXTS[(i + 7) % len(TEXTS)]),
        (2.0,),
        (0.5 - i / 4, -1.0),
    )
    for i in range(4)
]
UNSCORED = [TrainExample(e.query, e.pos, e.neg) for e in EXAMPLES]
PAIRS = [(TEXTS[i], TEXTS[(i + 2) % len(TEXTS)] + (" <doc>" if i % 2 else "")) for i in range(5)]
QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gemma_reranker(tmp_path_factory.mktemp("lora-rerank") / "gemma")


@pytest.fixture(scope="module")
def minicpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minicpm_layerwise(tmp_path_factory.mktemp("lora-rerank") / "minicpm")


def _config(**kw: Any) -> RerankerTrainConfig:
    lora = kw.pop("lora", {})
    defaults: dict[str, Any] = {
        "group_size": GROUP,
        "batch_size": 2,
        "max_length": 128,
        "learning_rate": 3e-3,
        "warmup": 0.0,
        "logging_steps": 1,
        "progress": False,
    }
    settings = LoraSettings(**{"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": QKVO, **lora})
    return RerankerTrainConfig(**{**defaults, **kw}, lora=settings)


def _randomise_lora(run: LLMRerankerRun, seed: int) -> dict[str, torch.Tensor]:
    """Draw every LoRA pair at random (B starts at zero, which would hide the adapter);
    the pairs by their peft state names."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in run.wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return dict(peft.get_peft_model_state_dict(run.wrapped))


def _items(examples: list[TrainExample]) -> list[tuple[TrainExample, list[str], list[float] | None]]:
    return [
        (e, [e.pos[0], *e.neg], None if e.pos_scores is None else [*e.pos_scores, *(e.neg_scores or ())])
        for e in examples
    ]


def _hand_loss(scores: np.ndarray, teacher: np.ndarray | None) -> float:
    """``scores`` (n, g, layers): the reference's loss written out (float64)."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        m = x.max(axis=-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

    layers = [scores[:, :, i] for i in range(scores.shape[2])]
    loss = sum(-log_softmax(s)[:, 0].mean() for s in layers)
    if teacher is not None:
        t = np.exp(log_softmax(teacher))
        loss += sum(-(t * log_softmax(s)).sum(-1).mean() for s in layers)
    elif len(layers) > 1:
        t = np.exp(log_softmax(layers[-1]))
        loss += sum(-(t * log_softmax(s)).sum(-1).mean() for s in layers[:-1])
    return float(loss)


def _falls(losses: list[float]) -> bool:
    """Lower at every step, and by a tenth in all."""
    return all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < 0.9 * losses[0]


def _trained_scores(run: LLMRerankerRun, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The trained model's scores (pairs, layers), on its own tokenisation."""
    fmt = run.collator.pair_format
    batch = _tensors("", fmt.tokenize(pairs), fmt.tokenizer.pad_id)
    run.model.eval()
    with torch.no_grad():
        return run.model.scores(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()


def _train(
    model: Path, variant: str, cfg: RerankerTrainConfig, out: Path
) -> tuple[LLMRerankerRun, list[float]]:
    """What ``train_reranker`` runs, keeping the trained model to compare with."""
    run = prepare_llm_reranker(str(model), variant, cfg)  # type: ignore[arg-type]
    try:
        # two queries in one batch: every step sees the same groups (negatives reordered), so
        # the loss is a function of the weights alone
        result = _run(
            run.model, GroupDataset(EXAMPLES[:2], GROUP, cfg.seed), run.collator, cfg, out, run.save
        )
    finally:
        run.close()
    return run, [e["loss"] for e in result.log if "loss" in e]


# -- the losses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", [False, True], ids=["hard-labels", "teacher-scores"])
def test_yes_no_loss_by_hand_on_peft_yes_logits(gemma: Path, teacher: bool) -> None:
    cfg = _config(lora={"target_modules": ("q_proj", "v_proj", "o_proj")})
    run = prepare_llm_reranker(str(gemma), "yes_no", cfg)
    state = _randomise_lora(run, seed=1)
    items = _items(EXAMPLES if teacher else UNSCORED)
    out = run.model(**run.collator(items))
    # independently: transformers' causal LM under peft with the same pairs, one pair at a
    # time (no padding), the "Yes" logit at the last position
    lm = AutoModelForCausalLM.from_pretrained(str(gemma), attn_implementation="eager")
    ref = peft.get_peft_model(
        lm,
        peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj", "o_proj"],
        ),
    ).eval()
    peft.set_peft_model_state_dict(ref, state)
    hf = AutoTokenizer.from_pretrained(str(gemma))
    yes = hf("Yes", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        want = np.array(
            [
                [
                    float(
                        ref(
                            input_ids=torch.tensor([_pair_ids(hf, e.query, p, YES_NO_PROMPT, bos=True)])
                        ).logits[0, -1, yes]
                    )
                    for p in group
                ]
                for e, group, _ in items
            ]
        )
    got = out["logits"].detach().numpy().reshape(len(items), GROUP)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    scores = np.array([s for _, _, s in items]) if teacher else None
    assert float(out["loss"].detach()) == pytest.approx(
        _hand_loss(want[:, :, None], scores), rel=1e-5, abs=1e-5
    )
    if scores is not None:  # the teacher's temperature divides its scores
        run.model.teacher_temperature = 0.5
        hot = float(run.model(**run.collator(items))["loss"].detach())
        assert hot == pytest.approx(_hand_loss(want[:, :, None], scores / 0.5), rel=1e-5, abs=1e-5)


def _hand_merged_minicpm(base: Path, state: dict[str, torch.Tensor], alpha: float, r: int, out: Path) -> Path:
    """The checkpoint with ``W + alpha / r * B @ A`` for every LoRA pair (the adapter taken
    as one of the checkpoint itself) and the modules it saved whole, next to its config."""
    weights = load_file(str(base / "model.safetensors"))
    for key, a in state.items():
        if ".lora_" not in key:
            weights[key.removeprefix("base_model.model.")] = a
        elif ".lora_A." in key:
            name = key.removeprefix("base_model.model.").split(".lora_A.")[0] + ".weight"
            b = state[key.replace(".lora_A.", ".lora_B.")]
            weights[name] = weights[name] + alpha / r * (b @ a)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"))
    (out / "config.json").write_text((base / "config.json").read_text())
    return out


@pytest.mark.parametrize("teacher", [False, True], ids=["self-distillation", "teacher-scores"])
def test_layerwise_losses_by_hand_on_a_plain_minicpm_forward(
    minicpm: Path, tmp_path: Path, teacher: bool
) -> None:
    targets = ("q_proj", "o_proj", "down_proj")  # o_proj and down_proj: MiniCPM scales their outputs
    cfg = _config(start_layer=2, lora={"target_modules": targets})
    run = prepare_llm_reranker(str(minicpm), "layerwise", cfg)
    state = _randomise_lora(run, seed=2)
    items = _items(EXAMPLES if teacher else UNSCORED)
    out = run.model(**run.collator(items))
    merged = _hand_merged_minicpm(minicpm, state, alpha=8.0, r=4, out=tmp_path / "hand")
    hf = AutoTokenizer.from_pretrained(str(minicpm))
    want = np.array(
        [
            [
                _minicpm_reference(merged, _pair_ids(hf, e.query, p, YES_NO_PROMPT, bos=True), [2, 3, 4])
                for p in group
            ]
            for e, group, _ in items
        ]
    )  # (n, g, layers)
    got = out["logits"].detach().numpy().reshape(len(items), GROUP, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    scores = np.array([s for _, _, s in items]) if teacher else None
    assert float(out["loss"].detach()) == pytest.approx(_hand_loss(want, scores), rel=1e-5, abs=1e-5)


def test_reference_layerwise_adapter_with_trained_heads_loads(minicpm: Path, tmp_path: Path) -> None:
    """An adapter as the reference's recipe from the raw model saves it (LoRA pairs, and
    the per-layer heads whole through ``modules_to_save``) loads with its heads."""
    from bgekit.models.llm_checkpoints import minicpm_layout

    layout = minicpm_layout(minicpm, json.loads((minicpm / "config.json").read_text()))
    config = peft.LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["v_proj", "down_proj"],
        modules_to_save=["linear_head"],
        init_lora_weights=False,
    )
    wrapped = peft.get_peft_model(layout, config)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "modules_to_save" in name:
                p.mul_(-2.0)
    wrapped.save_pretrained(str(tmp_path / "adapter"))
    state = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.lm_head.3.linear_head.weight" in state
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": str(minicpm)}))
    got = Reranker.from_pretrained(str(tmp_path / "adapter"), engine=FP32).score(
        PAIRS[:3], cutoff_layers=[1, 4]
    )  # type: ignore[call-arg]
    merged = _hand_merged_minicpm(minicpm, state, alpha=4.0, r=2, out=tmp_path / "hand")
    hf = AutoTokenizer.from_pretrained(str(minicpm))
    want = [
        _minicpm_reference(merged, _pair_ids(hf, q, p, YES_NO_PROMPT, bos=True), [1, 4]) for q, p in PAIRS[:3]
    ]
    np.testing.assert_allclose(got, np.array(want).T, rtol=1e-4, atol=1e-5)


def test_layerwise_self_distillation_teaches_with_a_detached_last_layer() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2 * GROUP, 3, generator=g, dtype=torch.float64, requires_grad=True)
    llm_reranker_loss(scores, GROUP).backward()
    s = scores.detach().view(2, GROUP, 3)
    onehot = torch.zeros(2, GROUP, dtype=torch.float64)
    onehot[:, 0] = 1
    last = torch.softmax(s[:, :, 2], -1)
    grad = scores.grad.view(2, GROUP, 3)  # type: ignore[union-attr]
    # the last layer learns from the labels only (its softmax teaches, detached) ...
    torch.testing.assert_close(grad[:, :, 2], (last - onehot) / 2)
    # ... the others from the labels and from the last layer
    for i in (0, 1):
        p = torch.softmax(s[:, :, i], -1)
        torch.testing.assert_close(grad[:, :, i], (p - onehot) / 2 + (p - last) / 2)
    with pytest.raises(ValueError, match="not"):
        llm_reranker_loss(torch.zeros(5, 1), GROUP)


# -- training, saving, loading -------------------------------------------------------------------


def test_yes_no_adapter_round_trip_and_merged_model(gemma: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    cfg = _config(max_steps=6, special_tokens=("<doc>",), lora={"merge": True})
    run, losses = _train(gemma, "yes_no", cfg, out)
    assert len(losses) == 6 and _falls(losses), losses
    assert {"adapter_config.json", "adapter_model.safetensors", "embeddings.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(gemma) and config["task_type"] == "CAUSAL_LM"
    assert json.loads((out / "bgekit_adapter.json").read_text())["kind"] == "reranker"
    trained = _trained_scores(run, PAIRS)[:, 0]
    adapted = Reranker.from_pretrained(str(out), engine=FP32)
    assert isinstance(adapted, LLMReranker) and adapted.tokenizer.vocab_size > 400  # "<doc>" added
    np.testing.assert_allclose(adapted.score(PAIRS), trained, rtol=1e-5, atol=1e-5)
    before = Reranker.from_pretrained(str(gemma), engine=FP32).score(PAIRS[::2])
    assert np.abs(before - trained[::2]).max() > 1e-2  # the adapter changed the scores
    # the merged model: a plain transformers folder scoring the same, and bgekit loads it
    lm = AutoModelForCausalLM.from_pretrained(str(out / "merged"), attn_implementation="eager").eval()
    hf = AutoTokenizer.from_pretrained(str(out / "merged"))
    yes = hf("Yes", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        want = [
            float(lm(torch.tensor([_pair_ids(hf, q, p, YES_NO_PROMPT, bos=True)])).logits[0, -1, yes])
            for q, p in PAIRS
        ]
    np.testing.assert_allclose(want, trained, rtol=1e-5, atol=1e-5)
    merged = Reranker.from_pretrained(str(out / "merged"), engine=FP32)
    np.testing.assert_allclose(merged.score(PAIRS), trained, rtol=1e-5, atol=1e-5)
    # the adapter is peft's own: peft adapts the base (its vocabulary grown) to the same scores
    base = AutoModelForCausalLM.from_pretrained(str(gemma), attn_implementation="eager")
    base.resize_token_embeddings(len(hf))
    with torch.no_grad():
        base.get_input_embeddings().weight.copy_(
            load_file(str(out / "embeddings.safetensors"))["input_embeddings"]
        )
    ref = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        via_peft = [
            float(
                ref(input_ids=torch.tensor([_pair_ids(hf, q, p, YES_NO_PROMPT, bos=True)])).logits[0, -1, yes]
            )
            for q, p in PAIRS
        ]
    np.testing.assert_allclose(via_peft, trained, rtol=1e-5, atol=1e-5)


def test_layerwise_adapter_round_trip_and_merged_checkpoint(minicpm: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    cfg = _config(
        max_steps=6,
        start_layer=2,
        special_tokens=("<doc>",),
        lora={"target_modules": (*QKVO, "down_proj"), "merge": True},
    )
    run, losses = _train(minicpm, "layerwise", cfg, out)  # no teacher scores: self-distillation
    assert len(losses) == 6 and _falls(losses), losses
    config = json.loads((out / "adapter_config.json").read_text())
    # saved as the checkpoint's own adapter: alpha without the folded residual scale
    assert config["alpha_pattern"] == {} and config["lora_alpha"] == 8 and config["task_type"] == "CAUSAL_LM"
    trained = _trained_scores(run, PAIRS).T  # (layers 2..4, pairs)
    adapted = Reranker.from_pretrained(str(out), engine=FP32)
    np.testing.assert_allclose(adapted.score(PAIRS, cutoff_layers=[2, 3, 4]), trained, rtol=1e-5, atol=1e-5)  # type: ignore[call-arg]
    merged = Reranker.from_pretrained(str(out / "merged"), engine=FP32)
    np.testing.assert_allclose(merged.score(PAIRS, cutoff_layers=[2, 3, 4]), trained, rtol=1e-5, atol=1e-5)  # type: ignore[call-arg]
    # the merged checkpoint is the original's layout: W + alpha / r * B @ A, heads untouched,
    # the embeddings grown by the added token (unscaled, as the file holds them)
    original = load_file(str(minicpm / "model.safetensors"))
    weights = load_file(str(out / "merged" / "model.safetensors"))
    assert set(weights) == set(original)
    state = load_file(str(out / "adapter_model.safetensors"))
    a = state["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]
    b = state["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    key = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(weights[key], original[key] + 2.0 * (b @ a), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        weights["lm_head.2.linear_head.weight"], original["lm_head.2.linear_head.weight"]
    )
    emb = weights["model.embed_tokens.weight"]
    assert emb.shape[0] == original["model.embed_tokens.weight"].shape[0] + 1
    torch.testing.assert_close(emb[:-1], original["model.embed_tokens.weight"])
    ran = run.model.scorer.base.embed_tokens.weight[-1].detach()  # type: ignore[union-attr,index]
    torch.testing.assert_close(emb[-1] * MINICPM["scale_emb"], ran)
    merged_config = json.loads((out / "merged" / "config.json").read_text())
    assert merged_config["scale_emb"] == MINICPM["scale_emb"] and merged_config["vocab_size"] == emb.shape[0]


# -- the command line, the server and refusals ---------------------------------------------------


def test_cli_trains_a_layerwise_adapter_that_serves(minicpm: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    import httpx

    from bgekit.server import ServerConfig, create_app

    data = tmp_path / "train.jsonl"
    write_train_data(data, UNSCORED[:2])
    out = tmp_path / "served"
    args = ["train", "reranker", "--model", str(minicpm), "--data", str(data), "--output", str(out)]
    args += [
        "--lora",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--lora-targets",
        "q_proj,v_proj",
        "--start-layer",
        "3",
    ]
    args += [
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--group-size",
        "3",
        "--max-length",
        "128",
        "--no-progress",
    ]
    assert main(args) == 0
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4 and not (out / "merged").exists()
    ns = build_parser().parse_args(["serve", "--reranker", str(out)])
    config = ServerConfig(reranker=ns.reranker, engine=FP32)
    query, docs = TEXTS[0], TEXTS[1:5]
    want = Reranker.from_pretrained(str(out), engine=FP32).score([(query, d) for d in docs])

    async def request() -> httpx.Response:
        app = create_app(config)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                return await client.post("/rerank", json={"query": query, "documents": docs})

    results = asyncio.run(request()).json()["results"]
    got = {r["index"]: r["relevance_score"] for r in results}
    np.testing.assert_allclose([got[i] for i in range(len(docs))], want, rtol=1e-5, atol=1e-5)


def test_refusals(
    gemma: Path, minicpm: Path, bert_reranker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InputError, match="fine-tuned with LoRA"):
        train_reranker(
            str(gemma), UNSCORED, tmp_path / "a", RerankerTrainConfig(group_size=GROUP, max_length=128)
        )
    with pytest.raises(InputError, match="modules_to_save"):
        train_reranker(
            str(minicpm), UNSCORED, tmp_path / "b", _config(lora={"modules_to_save": ("linear_head",)})
        )
    with pytest.raises(InputError, match="start_layer is for layer-wise"):
        train_reranker(str(gemma), UNSCORED, tmp_path / "c", _config(start_layer=2))
    with pytest.raises(InputError, match=r"start_layer 0 is not a scored layer.*choose from 1\.\.4"):
        train_reranker(str(minicpm), UNSCORED, tmp_path / "d", _config(start_layer=0))
    with pytest.raises(InputError, match="cross-encoder"):
        train_reranker(str(bert_reranker), UNSCORED, tmp_path / "e", _config())
    assert (
        main(["train", "reranker", "--model", str(gemma), "--data", "x", "--output", "o", "--lora-r", "4"])
        == 2
    )
    assert "--lora-r applies to LoRA training; add --lora" in capsys.readouterr().err
    # an adapter of a cross-encoder is not loaded
    fake = tmp_path / "ce-adapter"
    fake.mkdir()
    (fake / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "base_model_name_or_path": str(bert_reranker), "r": 2, "lora_alpha": 4}
        )
    )
    save_file({"x": torch.zeros(1)}, str(fake / "adapter_model.safetensors"))
    with pytest.raises(ModelFormatError, match="adapter of a cross-encoder"):
        Reranker.from_pretrained(str(fake))
    assert not any((tmp_path / n).exists() for n in "abcde")
