"""LoRA fine-tuning of a decoder embedder (bgekit.train.decoder) on a tiny random Qwen2: the
loss against a computation with transformers + peft alone, the loss falling, the adapter
and merged model giving the trained model's vectors, the command line, models built for
training left unplaced, and adapters at inference (index identity, the server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from bgekit import Document, Embedder, EmbedderSettings, EngineConfig, Index, IndexConfig, InputError
from bgekit.cli.main import main as cli
from bgekit.models.registry import BGE_LLM_FORMAT
from bgekit.models.runtime import training_engine
from bgekit.train import EmbedderTrainConfig, TrainExample
from bgekit.train.decoder import Prepared, prepare, save_merged
from bgekit.train.lora import LoraSettings
from bgekit.train.trainer import _run
from tests.tiny_llms import build_qwen2_embedder

peft = pytest.importorskip("peft")

FP32 = EngineConfig(device="cpu", progress=False, dtype="float32")
INSTRUCT = "Find it"
TEXTS = ["cats purr when they are happy", "dogs bark at night", "a retrieval model ranks passages"]


def _data(n: int = 8, scores: bool = False) -> list[TrainExample]:
    out = []
    for i in range(n):
        pos, neg = (f"passage {i} is about cats and purring",), (f"negative {i} on dogs", f"other {i} text")
        extra = {"pos_scores": (2.0 + 0.1 * i,), "neg_scores": (0.5, -1.0 + 0.2 * i)} if scores else {}
        out.append(TrainExample(f"question {i}: which animal purrs?", pos, neg, **extra))  # type: ignore[arg-type]
    return out


def _config(**kw: object) -> EmbedderTrainConfig:
    lora = LoraSettings(r=4, alpha=8.0, dropout=0.0)
    base: dict[str, object] = {
        "batch_size": 2,
        "group_size": 2,
        "learning_rate": 1e-3,
        "warmup": 0.0,
        "logging_steps": 1,
        "progress": False,
        "query_instruction": INSTRUCT,
        "query_format": BGE_LLM_FORMAT,
        "lora": lora,
    }
    return EmbedderTrainConfig(**(base | kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen2_embedder(tmp_path_factory.mktemp("lora") / "qwen2")


def _settings() -> EmbedderSettings:
    return EmbedderSettings(query_instruction=INSTRUCT, query_format=BGE_LLM_FORMAT)


def _last_token(model: torch.nn.Module, tok: object, texts: list[str]) -> torch.Tensor:
    """The reference's way: left padding, the last position's state, L2-normalised."""
    enc = tok(texts, padding=True, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    return F.normalize(hidden[:, -1].float(), dim=-1)


def _left_tokenizer(path: Path) -> object:
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return tok


def _scramble_lora(prepared: Prepared, seed: int = 0) -> None:
    """peft starts B at zero (the adapter adds nothing yet): draw it, so that it does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in prepared.train_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_loss_is_infonce_plus_kl_on_vectors_from_transformers_and_peft(qwen: Path, tmp_path: Path) -> None:
    data = _data(scores=True)
    prepared = prepare(str(qwen), data, _config())
    assert not any(p.requires_grad for n, p in prepared.train_model.named_parameters() if "lora_" not in n)
    _scramble_lora(prepared)
    items = [prepared.dataset[i] for i in range(2)]
    batch = prepared.collator(items)
    prepared.train_model.eval()
    with torch.no_grad():
        loss = prepared.train_model(**batch)["loss"]
    prepared.save(tmp_path / "adapter")
    # independently: transformers' Qwen2 with peft's adapter, the reference's layout
    model = peft.PeftModel.from_pretrained(
        AutoModel.from_pretrained(qwen, dtype=torch.float32), tmp_path / "adapter"
    )
    tok = _left_tokenizer(qwen)
    q = _last_token(model.eval(), tok, [f"<instruct>{INSTRUCT}\n<query>{ex.query}" for ex, _, _ in items])
    p = _last_token(model, tok, [t for _, group, _ in items for t in group])
    scores = q @ p.T / 0.02  # 2 queries x 4 passages; positives at 0 and 2
    infonce = F.cross_entropy(scores, torch.tensor([0, 2]))
    teacher = torch.softmax(torch.tensor([s for _, _, s in items], dtype=torch.float32), dim=-1)
    own = torch.stack([scores[0, :2], scores[1, 2:]])
    kl = -(teacher * torch.log_softmax(own, dim=-1)).sum(dim=-1).mean()
    assert float(kl) > 0.01 and float(infonce) > 0.01  # both terms matter
    torch.testing.assert_close(loss, infonce + kl, rtol=1e-5, atol=1e-5)


def test_loss_falls_and_adapter_and_merged_model_give_the_trained_vectors(qwen: Path, tmp_path: Path) -> None:
    data = _data()
    cfg = _config(max_steps=6, learning_rate=3e-3)
    prepared = prepare(str(qwen), data, cfg)
    fixed = prepared.collator([prepared.dataset[i] for i in range(4)])

    def loss_now() -> float:
        prepared.train_model.eval()
        with torch.no_grad():
            return float(prepared.train_model(**fixed)["loss"])

    before = loss_now()
    out = tmp_path / "adapter"
    result = _run(prepared.train_model, prepared.dataset, prepared.collator, cfg, out, prepared.save)
    assert result.steps == 6
    after = loss_now()
    assert after < 0.7 * before, (before, after)
    # the trained model's own vectors (its inference modules, as training left them)
    trained = prepared.embedder
    expected = trained.encode(TEXTS).dense
    q_expected = trained.encode_queries(TEXTS).dense
    adapter = Embedder.from_pretrained(str(out), settings=_settings(), engine=FP32)
    assert adapter.info.adapter == str(out.resolve()) and adapter.info.path == str(qwen.resolve())
    assert ("adapter", f"{out.resolve()} (LoRA, merged at load)") in list(adapter.info.describe())
    np.testing.assert_allclose(adapter.encode(TEXTS).dense, expected, atol=1e-5)
    np.testing.assert_allclose(adapter.encode_queries(TEXTS).dense, q_expected, atol=1e-5)
    base = Embedder.from_pretrained(str(qwen), settings=_settings(), engine=FP32)
    assert np.abs(base.encode(TEXTS).dense - expected).max() > 1e-3  # training changed them
    record = json.loads((out / "bgekit_adapter.json").read_text())
    assert record == {"base": str(qwen), "base_path": str(qwen.resolve()), "kind": "embedder"}
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    # merged: a plain transformers folder, in transformers and in bgekit
    save_merged(prepared, tmp_path / "merged", qwen)
    hf = AutoModel.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    got = _last_token(hf, _left_tokenizer(tmp_path / "merged"), TEXTS).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    merged = Embedder.from_pretrained(str(tmp_path / "merged"), settings=_settings(), engine=FP32)
    np.testing.assert_allclose(merged.encode(TEXTS).dense, expected, atol=1e-5)


def test_models_built_for_training_are_loaded_in_its_precision_and_never_placed(qwen: Path) -> None:
    emb = Embedder.from_pretrained(str(qwen), engine=training_engine("bfloat16"))
    module = emb.torch_module()
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}  # inference would run fp32
    assert emb.precisions[0].dtype == torch.bfloat16 and "not placed" in emb.precisions[0].reason
    assert not any("forward" in m.__dict__ for m in module.modules())  # no CPU kernel patched in
    ref = AutoModel.from_pretrained(qwen, dtype=torch.float32)
    ours = module.backbone.model.state_dict()  # type: ignore[union-attr]
    for name, value in ref.state_dict().items():
        assert torch.equal(ours[name], value.to(torch.bfloat16)), name
    # a LoRA run in bf16 loads its frozen base so; its LoRA pairs train in fp32
    prepared = prepare(str(qwen), _data(), _config(precision="bf16"))
    dtypes = {n: p.dtype for n, p in prepared.train_model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    # a full fine-tune keeps fp32 weights (the optimiser's) under mixed precision
    full = prepare(str(qwen), _data(), _config(precision="bf16", lora=None, add_tokens=("<x>",)))
    assert {p.dtype for p in full.train_model.parameters()} == {torch.float32}


def test_cli_lora_icl_added_tokens_and_merge(
    qwen: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgekit.train import write_train_data

    data = tmp_path / "train.jsonl"
    write_train_data(data, _data())
    out = tmp_path / "ft"
    args = ["train", "embedder", "--model", str(qwen), "--data", str(data), "--output", str(out)]
    args += ["--max-steps", "2", "--batch-size", "2", "--group-size", "2", "--no-progress", "--lr", "1e-3"]
    args += ["--query-format", "<instruct>{}\n<query>{}", "--query-instruction", INSTRUCT]
    assert cli([*args, "--lora-r", "4"]) == 2
    assert "--lora-r applies to LoRA training; add --lora" in capsys.readouterr().err
    assert cli([*args, "--icl-max-length", "40"]) == 2
    assert "need --icl-examples" in capsys.readouterr().err
    lora = ["--lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--merge"]
    assert cli([*args, *lora, "--add-tokens", "<doc>", "<qry>", "--icl-examples", "3"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors", "embeddings.safetensors", "merged"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (4, 8.0, "FEATURE_EXTRACTION")
    assert config["base_model_name_or_path"] == str(qwen)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<doc>") == len(AutoTokenizer.from_pretrained(qwen))
    texts = ["<doc> cats purr", "dogs <qry> bark"]
    examples: list[dict[str, str]] = []  # trained in the ICL layout: load it so
    adapter = Embedder.from_pretrained(str(out), settings=_settings(), engine=FP32, examples=examples)
    merged = Embedder.from_pretrained(
        str(out / "merged"), settings=_settings(), engine=FP32, examples=examples
    )
    assert adapter.tokenize(texts)[0].ids[1] == tok.convert_tokens_to_ids("<doc>")  # one token
    np.testing.assert_allclose(adapter.encode(texts).dense, merged.encode(texts).dense, atol=1e-5)
    np.testing.assert_allclose(
        adapter.encode_queries(texts).dense, merged.encode_queries(texts).dense, atol=1e-5
    )
    hf = AutoModel.from_pretrained(out / "merged", dtype=torch.float32).eval()
    got = _last_token(hf, _left_tokenizer(out / "merged"), texts).numpy()
    np.testing.assert_allclose(got, adapter.encode(texts).dense, atol=1e-5)
    # an adapter is not a starting point: its base or the merged model is
    assert (
        cli(["train", "embedder", "--model", str(out), "--data", str(data), "--output", str(tmp_path / "x")])
        == 2
    )
    assert "is a LoRA adapter" in capsys.readouterr().err
    with pytest.raises(InputError, match="m3 trains BGE-M3"):
        _config(m3=True)


@pytest.fixture(scope="module")
def adapter(qwen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prepared = prepare(str(qwen), _data(), _config())
    _scramble_lora(prepared, seed=1)
    out = tmp_path_factory.mktemp("adapter") / "a"
    out.mkdir()
    prepared.save(out)
    return out


def test_an_index_built_with_an_adapter_refuses_the_base_alone(
    qwen: Path, adapter: Path, tmp_path: Path
) -> None:
    with_adapter = Embedder.from_pretrained(str(adapter), engine=FP32)
    index = Index(with_adapter, IndexConfig(outputs=("dense",)))
    index.add([Document("d1", "cats purr"), Document("d2", "dogs bark")])
    root = index.save(tmp_path / "ix")
    again = Index.load(root)  # the manifest names the adapter folder: base + adapter again
    assert again.embedder.info.adapter == str(adapter.resolve())
    assert [h.id for h in again.search(["purring cats"], 2)[0]] == [
        h.id for h in index.search(["purring cats"], 2)[0]
    ]
    with pytest.raises(InputError, match=r"differs in LoRA adapter \(only one has one\)"):
        Index.load(root, Embedder.from_pretrained(str(qwen), engine=FP32))
    # the same base with other LoRA weights is another model too
    other = tmp_path / "other"
    prepared = prepare(str(qwen), _data(), _config())
    _scramble_lora(prepared, seed=2)
    other.mkdir()
    prepared.save(other)
    with pytest.raises(InputError, match="differs in LoRA adapter files"):
        Index.load(root, Embedder.from_pretrained(str(other), engine=FP32))


def test_serve_an_adapter(adapter: Path) -> None:
    pytest.importorskip("fastapi")
    import httpx

    from bgekit.server import ServerConfig, create_app

    app = create_app(ServerConfig(model=str(adapter), engine=FP32))

    async def main() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bgekit") as client:
                return await client.post("/v1/embeddings", json={"input": TEXTS})

    body = asyncio.run(main()).json()
    got = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    expected = Embedder.from_pretrained(str(adapter), engine=FP32).encode(TEXTS).dense
    np.testing.assert_allclose(got, expected, atol=1e-6)
    base = Embedder.from_pretrained(
        str(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]), engine=FP32
    )
    assert np.abs(base.encode(TEXTS).dense - expected).max() > 1e-3  # the adapter was served, not the base


def test_torchrun_trains_lora_on_two_processes_with_cross_device_negatives(
    qwen: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    from bgekit.train import write_train_data

    data = tmp_path / "train.jsonl"
    write_train_data(data, _data())  # 8 queries
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "bgekit", "train", "embedder", "--model", str(qwen)]
    cmd += ["--data", str(data), "--output", str(tmp_path / "o"), "--batch-size", "2", "--group-size", "2"]
    cmd += ["--epochs", "1", "--cross-device-negatives", "--no-progress", "--lr", "1e-3"]
    cmd += ["--lora", "--lora-r", "4", "--lora-dropout", "0", "--logging-steps", "1"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # 8 queries / (2 per process x 2 processes) = 2 steps; one process alone would take 4
    assert done.stdout.count("trained 2 steps") == 1, done.stdout
    adapter = Embedder.from_pretrained(str(tmp_path / "o"), engine=FP32)
    base = Embedder.from_pretrained(str(qwen), engine=FP32)
    assert adapter.info.adapter is not None
    assert np.abs(adapter.encode(TEXTS).dense - base.encode(TEXTS).dense).max() > 1e-4


def test_an_encoder_adapter_is_merged_before_the_packed_forward(bert_st_mean: Path, tmp_path: Path) -> None:
    """LoRA on a BERT embedder (its own projection names): loaded with the default engine the
    merged weights run in bgekit's packed forward, which fuses q/k/v into a new matrix: the
    adapter must be in the weights before that."""
    lora = LoraSettings(r=4, alpha=8.0, dropout=0.0, target_modules=("query", "value", "dense"))
    prepared = prepare(
        str(bert_st_mean), _data(), _config(lora=lora, query_instruction=None, query_format=None)
    )
    _scramble_lora(prepared, seed=3)
    expected = prepared.embedder.encode(TEXTS).dense  # the transformers forward, with peft's layers
    prepared.save(tmp_path / "a")
    packed = Embedder.from_pretrained(
        str(tmp_path / "a"), engine=FP32.__class__(device="cpu", progress=False)
    )
    assert type(packed.torch_module().backbone).__name__ == "PackedEncoder"  # type: ignore[union-attr]
    np.testing.assert_allclose(packed.encode(TEXTS).dense, expected, atol=1e-3)  # bf16 kernels where checked
    exact = Embedder.from_pretrained(str(tmp_path / "a"), engine=FP32)
    np.testing.assert_allclose(exact.encode(TEXTS).dense, expected, atol=1e-5)
    assert (
        np.abs(Embedder.from_pretrained(str(bert_st_mean), engine=FP32).encode(TEXTS).dense - expected).max()
        > 1e-3
    )


def test_adapter_folders_that_cannot_load_say_why(adapter: Path, tmp_path: Path) -> None:
    from bgekit.errors import ModelFormatError, ModelNotFoundError

    lost = tmp_path / "lost"
    lost.mkdir()
    for f in adapter.iterdir():
        (lost / f.name).write_bytes(f.read_bytes())
    config = json.loads((lost / "adapter_config.json").read_text())
    (lost / "adapter_config.json").write_text(
        json.dumps(config | {"base_model_name_or_path": "/no/such/base"})
    )
    (lost / "bgekit_adapter.json").write_text(
        json.dumps({"base": "/no/such/base", "base_path": "/no/such/base"})
    )
    with pytest.raises(ModelNotFoundError, match="no model folder at /no/such/base"):
        Embedder.from_pretrained(str(lost))
    record = json.loads((adapter / "bgekit_adapter.json").read_text())
    (lost / "bgekit_adapter.json").write_text(json.dumps(record | {"kind": "yes_no"}))
    with pytest.raises(ModelFormatError, match="LoRA adapter for a yes_no; load it with Reranker"):
        Embedder.from_pretrained(str(lost))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="fp16 training needs a GPU"):
            prepare("/not/loaded", _data(), _config(precision="fp16"))  # refused before anything loads
