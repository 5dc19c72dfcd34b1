"""The packed forward must give the transformers forward's numbers, on every path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder, EngineConfig
from bgekit.models import backbones, kernels
from bgekit.models.backbones import PackedEncoder, TransformersBackbone, packed_unsupported

TEXTS = [
    "what is bge m3",
    "cats",
    "cats and dogs",
    "hybrid search mixes lexical and semantic scores " * 3,
    "the quick brown fox jumps over the lazy dog " * 14,  # long enough for the fused attention kernel
    "the stock market fell sharply on monday",
    "dogs",
]


def encode(path: Path, backend: str) -> dict[str, object]:
    engine = EngineConfig(device="cpu", backend=backend, max_batch_tokens=512, dtype="float32")
    model = Embedder.from_pretrained(str(path), engine=engine)
    kind = type(model._replicas[0][0].backbone)
    out = model.encode(TEXTS, outputs=model.info.heads)
    return {"kind": kind, "out": out}


@pytest.mark.parametrize("which", ["bert_m3", "xlmr_m3", "minilm"])
@pytest.mark.parametrize("onednn", [True, False])
def test_packed_equals_transformers(
    which: str, onednn: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = request.getfixturevalue(which)
    if not onednn:
        monkeypatch.setattr(kernels, "onednn_linear_ok", lambda: False)
    packed, plain = encode(path, "auto"), encode(path, "transformers")
    assert packed["kind"] is PackedEncoder and plain["kind"] is TransformersBackbone
    a, b = packed["out"], plain["out"]
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)  # type: ignore[attr-defined]
    if a.multivector is not None:  # type: ignore[attr-defined]
        for x, y in zip(a.multivector, b.multivector, strict=True):  # type: ignore[attr-defined]
            np.testing.assert_allclose(x, y, atol=1e-5)


def test_onednn_fast_path_is_enabled_where_available() -> None:
    # A silent fallback would halve CPU throughput: where the kernel exists it must pass
    # the self-check (builds without it are covered by the onednn=False runs above).
    import torch

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        pytest.skip("this torch build has no oneDNN linear")
    assert kernels.onednn_linear_ok()


def test_unsupported_models_keep_the_transformers_forward() -> None:
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    assert packed_unsupported(model) == "model type gpt2"
    assert isinstance(backbones.make_backbone(model, "auto"), TransformersBackbone)
    with pytest.raises(ValueError, match="gpt2"):
        PackedEncoder.from_transformers(model)


@pytest.mark.parametrize("length", [5, 40, 300])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fused_from", ["amx", "avx512"])
def test_attention_paths_match_softmax_attention(
    length: int, dtype: str, fused_from: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both attention paths (products + softmax below the length threshold, the fused kernel
    above it), in each precision and under each CPU's threshold, against softmax attention
    in float64 by hand."""
    import torch

    monkeypatch.setattr(backbones, "_short_bf16", lambda: backbones._SHORT_BF16[fused_from])
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(3, 4, length, 16, generator=g) for _ in range(3))
    t = getattr(torch, dtype)
    out = backbones._attention(q.to(t), k.to(t), v.to(t), torch.float32).double()
    qd, kd, vd = (x.to(t).double() for x in (q, k, v))
    want = torch.softmax(qd @ kd.transpose(-1, -2) / 4.0, dim=-1) @ vd
    assert out.shape == want.shape
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert float((out - want).abs().max()) < tol
