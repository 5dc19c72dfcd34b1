"""LoRA adapters merged without peft (bgekit.models.adapters) against peft's own adapted
forward and ``merge_and_unload``, on a tiny random Qwen2; damaged adapters are one error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForCausalLM

from bgekit.errors import ModelFormatError
from bgekit.models.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    is_adapter_folder,
    merge_adapter,
    read_adapter,
)
from tests.tiny_llms import build_qwen2_embedder

peft = pytest.importorskip("peft")

IDS = torch.tensor([[5, 17, 42, 8, 99, 3], [7, 7, 30, 12, 64, 2]])


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen2_embedder(tmp_path_factory.mktemp("adapters") / "qwen2")


def _adapted(base: Path, out: Path, *, auto: type, task: str, **lora: object) -> torch.Tensor:
    """peft's adapted model (B drawn at random, not zero, so the merge matters), saved to
    ``out``; its output on IDS."""
    torch.manual_seed(0)
    model = auto.from_pretrained(base, dtype=torch.float32)  # type: ignore[attr-defined]
    config = peft.LoraConfig(task_type=task, init_lora_weights=False, lora_dropout=0.0, **lora)
    wrapped = peft.get_peft_model(model, config).eval()
    wrapped.save_pretrained(out)
    with torch.no_grad():
        result = wrapped(input_ids=IDS)
    return result.logits if task == "CAUSAL_LM" else result.last_hidden_state


@pytest.mark.parametrize(
    ("lora", "auto", "task"),
    [
        (
            {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            AutoModel,
            "FEATURE_EXTRACTION",
        ),
        (
            {
                "r": 8,
                "lora_alpha": 4,
                "use_rslora": True,
                "target_modules": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
                "rank_pattern": {"layers.0.self_attn.q_proj": 2},
                "alpha_pattern": {"v_proj": 32},
            },
            AutoModelForCausalLM,
            "CAUSAL_LM",
        ),
    ],
    ids=["feature-extraction", "causal-lm-rslora-patterns"],
)
def test_merge_equals_peft(
    qwen: Path, tmp_path: Path, lora: dict[str, object], auto: type, task: str
) -> None:
    expected = _adapted(qwen, tmp_path / "adapter", auto=auto, task=task, **lora)
    adapter = read_adapter(tmp_path / "adapter")
    assert is_adapter_folder(tmp_path / "adapter") and adapter.base == str(qwen)
    torch.manual_seed(0)  # the tiny embedder has no LM head: a causal LM draws the same one
    model = auto.from_pretrained(qwen, dtype=torch.float32).eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        before = model(input_ids=IDS)
    changed = merge_adapter(adapter, model)
    n_layers = model.config.num_hidden_layers
    assert changed == n_layers * len(lora["target_modules"])  # type: ignore[arg-type]
    with torch.no_grad():
        out = model(input_ids=IDS)
    got = out.logits if task == "CAUSAL_LM" else out.last_hidden_state
    old = before.logits if task == "CAUSAL_LM" else before.last_hidden_state
    assert (old - expected).abs().max() > 1e-3  # the adapter changes the outputs
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and equals peft's own merge
    torch.manual_seed(0)
    reference = peft.PeftModel.from_pretrained(
        auto.from_pretrained(qwen, dtype=torch.float32),  # type: ignore[attr-defined]
        tmp_path / "adapter",
    ).merge_and_unload()
    for name, param in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], param, rtol=1e-6, atol=1e-6)


def test_damaged_adapters_are_one_error(qwen: Path, tmp_path: Path) -> None:
    _adapted(qwen, tmp_path / "a", auto=AutoModel, task="FEATURE_EXTRACTION", r=2, target_modules=["q_proj"])
    config = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())

    def write(**changes: object) -> Path:
        (tmp_path / "a" / ADAPTER_CONFIG).write_text(json.dumps(config | changes))
        return tmp_path / "a"

    with pytest.raises(ModelFormatError, match="a PREFIX_TUNING adapter; bgekit merges LoRA adapters only"):
        read_adapter(write(peft_type="PREFIX_TUNING"))
    with pytest.raises(ModelFormatError, match="use_dora is set"):
        read_adapter(write(use_dora=True))
    with pytest.raises(ModelFormatError, match="no base_model_name_or_path"):
        read_adapter(write(base_model_name_or_path=None))
    adapter = read_adapter(write())
    model = AutoModel.from_pretrained(qwen, dtype=torch.float32)
    weights = load_weights(tmp_path / "a")
    key = next(iter(weights))
    save_file(
        {**weights, key.replace("layers.0", "layers.9"): weights[key].clone()},
        tmp_path / "a" / ADAPTER_WEIGHTS,
    )
    with pytest.raises(ModelFormatError, match=r"layers\.9\.self_attn\.q_proj names no weight"):
        merge_adapter(adapter, model)
    save_file(
        {k: v[:, :-1].contiguous() if "lora_A" in k else v for k, v in weights.items()},
        tmp_path / "a" / ADAPTER_WEIGHTS,
    )
    with pytest.raises(ModelFormatError, match="do not fit its weight"):
        merge_adapter(adapter, model)
    (tmp_path / "a" / ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ModelFormatError, match=f"{ADAPTER_WEIGHTS}: cannot read"):
        merge_adapter(adapter, model)


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / ADAPTER_WEIGHTS))


def test_train_side_save_round_trips_with_added_tokens(qwen: Path, tmp_path: Path) -> None:
    from bgekit.train.lora import BASE_RECORD, LoraSettings, add_lora, save_adapter

    torch.manual_seed(1)
    model = AutoModel.from_pretrained(qwen, dtype=torch.float32)
    vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(vocab + 2)  # two added special tokens
    with torch.no_grad():
        model.get_input_embeddings().weight[vocab:] = torch.randn(2, model.config.hidden_size)
    wrapped = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0), "FEATURE_EXTRACTION").eval()
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as after training: B moved off zero
    ids = torch.tensor([[5, 17, vocab, 8, vocab + 1, 3]])
    with torch.no_grad():
        expected = wrapped(input_ids=ids).last_hidden_state
    save_adapter(wrapped, tmp_path / "ad", base=str(qwen), base_path=qwen, kind="embedder", resized=True)
    assert json.loads((tmp_path / "ad" / BASE_RECORD).read_text())["kind"] == "embedder"
    fresh = AutoModel.from_pretrained(qwen, dtype=torch.float32).eval()
    merge_adapter(read_adapter(tmp_path / "ad"), fresh)
    with torch.no_grad():
        got = fresh(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="not linear layers of this model"):
        add_lora(AutoModel.from_pretrained(qwen), LoraSettings(target_modules=("qkv",)), "FEATURE_EXTRACTION")
