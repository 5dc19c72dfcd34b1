"""BGE-Visualized: the EVA02 tower and the whole forward against independent computations
(written here in another style: per-head loops, rotary as complex rotations, a float64
transformers model fed hand-built embeddings), the sequence layout, and bad checkpoints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoTokenizer, BertModel, XLMRobertaModel

from bgekit.engine import EngineConfig
from bgekit.engine.cpu import cpu_features
from bgekit.errors import ModelFormatError, ModelNotFoundError
from bgekit.images import Composed, ImageInput, ImagePart, ImagePreprocess, preprocess
from bgekit.models.embedder import Embedder, EmbedderSettings
from bgekit.models.fingerprint import model_identity
from bgekit.models.kernels import fast_paths
from bgekit.models.vision.eva import EVA02_B16, EVA02_L14, EvaConfig, EvaVisionTower, rope_tables
from bgekit.models.vision.visualized import VisualizedBackbone, resolve_checkpoint, text_model_of
from tests.tiny_visualized import TOWER, TinyVisualized, build_visualized, eva_state, rope_table

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyVisualized]:
    root = tmp_path_factory.mktemp("visualized")
    return {family: build_visualized(root / family, family, seed=3) for family in ("bert", "xlmr")}


def load(t: TinyVisualized, engine: EngineConfig = FP32, **settings: object) -> Embedder:
    s = EmbedderSettings(text_model=str(t.text_dir), **settings)  # type: ignore[arg-type]
    return Embedder.from_pretrained(str(t.checkpoint), settings=s, engine=engine)


def photos() -> list[Image.Image]:
    """Images of several sizes and modes (RGB, grey, RGBA, palette)."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), "RGB")
    grey = Image.fromarray(rng.integers(0, 256, (70, 33), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), "RGBA")
    return [rgb, grey, rgba, rgb.convert("P")]


# -- an independent EVA02 tower -----------------------------------------------------------


def _ln(x: torch.Tensor, s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * s[f"{name}.weight"] + s[f"{name}.bias"]


def reference_tower(state: dict[str, torch.Tensor], pixels: torch.Tensor, head_width: int) -> torch.Tensor:
    """EVA02 in float64: patches as a matrix product, one head at a time, each channel
    pair of a patch token rotated as a complex number by its row's (first half of the
    head) or column's (second half) angle."""
    s = {k[len(TOWER) :]: v.double() for k, v in state.items() if k.startswith(TOWER)}
    weight = s["patch_embed.proj.weight"]
    width, _, p, _ = weight.shape
    b, size = pixels.shape[0], pixels.shape[-1]
    g = size // p
    patches = pixels.double().reshape(b, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)
    x = patches @ weight.reshape(width, -1).T + s["patch_embed.proj.bias"]
    x = torch.cat([s["cls_token"].expand(b, 1, width), x], dim=1) + s["pos_embed"]

    quarter = head_width // 4  # frequencies per axis
    pair = torch.arange(head_width // 2)
    freq = 10000.0 ** (-2.0 * (pair % quarter) / (head_width // 2))
    row, col = torch.arange(g * g) // g, torch.arange(g * g) % g
    where = torch.where(pair[None, :] < quarter, row[:, None], col[:, None]).double() / g * 16
    turn = torch.polar(torch.ones(g * g, head_width // 2, dtype=torch.float64), where * freq)

    def rotary(t: torch.Tensor) -> torch.Tensor:
        z = torch.view_as_complex(t[:, 1:].reshape(b, g * g, -1, 2).contiguous())
        return torch.cat([t[:, :1], torch.view_as_real(z * turn).reshape(b, g * g, -1)], dim=1)

    layers = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
    for i in range(layers):
        p_ = f"blocks.{i}."
        h = _ln(x, s, p_ + "norm1")
        q = h @ s[p_ + "attn.q_proj.weight"].T + s[p_ + "attn.q_bias"]
        k = h @ s[p_ + "attn.k_proj.weight"].T
        v = h @ s[p_ + "attn.v_proj.weight"].T + s[p_ + "attn.v_bias"]
        heads = []
        for j in range(width // head_width):
            cols = slice(j * head_width, (j + 1) * head_width)
            qj, kj = rotary(q[..., cols]), rotary(k[..., cols])
            att = torch.softmax(qj @ kj.transpose(1, 2) / math.sqrt(head_width), dim=-1)
            heads.append(att @ v[..., cols])
        ctx = _ln(torch.cat(heads, dim=-1), s, p_ + "attn.inner_attn_ln")
        x = x + ctx @ s[p_ + "attn.proj.weight"].T + s[p_ + "attn.proj.bias"]
        h = _ln(x, s, p_ + "norm2")
        a = h @ s[p_ + "mlp.w1.weight"].T + s[p_ + "mlp.w1.bias"]
        u = h @ s[p_ + "mlp.w2.weight"].T + s[p_ + "mlp.w2.bias"]
        m = _ln(a * torch.sigmoid(a) * u, s, p_ + "mlp.ffn_ln")
        x = x + m @ s[p_ + "mlp.w3.weight"].T + s[p_ + "mlp.w3.bias"]
    return x


def test_eva_presets_and_shapes_read_from_a_state_dict() -> None:
    assert (EVA02_B16.tokens, EVA02_B16.mlp_hidden, EVA02_B16.heads) == (196, 2048, 12)
    assert (EVA02_L14.tokens, EVA02_L14.mlp_hidden, EVA02_L14.heads) == (256, 2730, 16)
    for preset in (EVA02_B16, EVA02_L14):  # shapes only: meta tensors, no memory
        with torch.device("meta"):
            state = eva_state(preset.width, preset.layers, preset.patch, preset.image_size, 64, 0, rope=False)
        assert EvaConfig.from_state(state, "x.pth", TOWER) == preset


def test_tower_matches_an_independent_implementation(tiny: dict[str, TinyVisualized]) -> None:
    t = tiny["bert"]
    state = torch.load(t.checkpoint, weights_only=True)
    tower, _ = EvaVisionTower.from_state(state, t.checkpoint)
    assert tower.config == EvaConfig(32, 2, 8, 32, int(32 * 2.6667), head_width=16)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got = tower.tokens(pixels)
    want = reference_tower(state, pixels, t.head_width)
    assert got.shape == (3, 1 + t.tokens, 32)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    # the batch does not change an image's tokens
    torch.testing.assert_close(tower.tokens(pixels[1:2]), got[1:2], atol=1e-6, rtol=0)


def test_tower_computes_the_rotary_table_when_the_checkpoint_has_none(
    tiny: dict[str, TinyVisualized],
) -> None:
    t = tiny["bert"]
    state = torch.load(t.checkpoint, weights_only=True)
    cfg = EvaConfig.from_state(state, t.checkpoint, TOWER)
    cos, sin = rope_tables(cfg)
    want_cos, want_sin = rope_table(cfg.grid, cfg.head_width)
    np.testing.assert_allclose(cos.numpy(), want_cos, atol=1e-6)
    np.testing.assert_allclose(sin.numpy(), want_sin, atol=1e-6)
    bare = {k: v for k, v in state.items() if "rope." not in k}
    saved, _ = EvaVisionTower.from_state(state, t.checkpoint)
    computed, _ = EvaVisionTower.from_state(bare, t.checkpoint, config=cfg)
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(computed.tokens(pixels), saved.tokens(pixels), atol=1e-5, rtol=0)


# -- an independent BGE-Visualized forward -----------------------------------------------


def reference_vectors(
    t: TinyVisualized, items: Sequence[tuple[str | None, Image.Image | None]]
) -> np.ndarray:
    """Each (text, image) as the reference lays it out, in float64 on transformers' model:
    a text alone through the whole model; with an image, ``[CLS] + image + text[1:]``
    embedded by hand at positions 0, 1..N, N+1.. and run through its encoder."""
    state = torch.load(t.checkpoint, weights_only=True)
    config = AutoConfig.from_pretrained(t.text_dir)
    model_cls = BertModel if t.family == "bert" else XLMRobertaModel
    model = model_cls(config, add_pooling_layer=False).double().eval()
    for name, module in (("bge_embeddings.", model.embeddings), ("bge_encoder.", model.encoder)):
        module.load_state_dict({k[len(name) :]: v for k, v in state.items() if k.startswith(name)})
    tok = AutoTokenizer.from_pretrained(t.text_dir)
    emb = model.embeddings
    proj_w, proj_b = state["visual_proj.weight"].double(), state["visual_proj.bias"].double()
    spec = ImagePreprocess(size=t.image_size, crop="round", rgb_first=False)
    out = []
    with torch.no_grad():
        for text, image in items:
            ids = torch.tensor(tok(text if text is not None else "")["input_ids"])
            if image is None:
                h = model(input_ids=ids[None]).last_hidden_state[0, 0]
            else:
                pixels = torch.from_numpy(preprocess(image, spec))[None]
                patches = reference_tower(state, pixels, t.head_width)[0, 1:]
                n = patches.shape[0]
                img = emb.LayerNorm(patches @ proj_w.T + proj_b + emb.position_embeddings.weight[1 : 1 + n])
                pos = torch.tensor([0, *range(n + 1, n + len(ids))])
                words = emb.word_embeddings(ids) + emb.position_embeddings(pos)
                txt = emb.LayerNorm(words + emb.token_type_embeddings.weight[0])
                seq = torch.cat([txt[:1], img, txt[1:]])
                h = model.encoder(seq[None]).last_hidden_state[0, 0]
            out.append(F.normalize(h, dim=0).numpy())
    return np.stack(out)


def as_inputs(items: Sequence[tuple[str | None, Image.Image | None]]) -> list[object]:
    out: list[object] = []
    for text, image in items:
        if image is None:
            out.append(text)
        else:
            img = ImageInput(pil=image)
            out.append(img if text is None else Composed(text, img))
    return out


@pytest.mark.parametrize("family", ["bert", "xlmr"])
def test_forward_matches_an_independent_assembly(tiny: dict[str, TinyVisualized], family: str) -> None:
    t = tiny[family]
    rgb, grey, rgba, palette = photos()
    items: list[tuple[str | None, Image.Image | None]] = [
        ("the quick brown fox", None),
        ("what is bge m3 and how does it retrieve passages from one forward pass", None),
        (None, rgb),
        (None, grey),
        ("cats and dogs", rgba),
        ("hybrid search mixes lexical and semantic scores in many homes", palette),
        ("a man", rgb),
    ]
    model = load(t)
    assert model.info.modalities == ("text", "image", "text+image")
    got = model.encode(as_inputs(items)).dense
    assert got is not None
    np.testing.assert_allclose(got, reference_vectors(t, items), atol=1e-5)
    # one input per batch: the same vectors (the packed batch mixes lengths and kinds)
    single = EngineConfig(device="cpu", dtype="float32", progress=False, max_batch_size=1)
    alone = load(t, single).encode(as_inputs(items)).dense
    np.testing.assert_allclose(alone, got, atol=1e-6)


def test_sequence_layout_and_limits(tiny: dict[str, TinyVisualized]) -> None:
    t = tiny["bert"]
    model = load(t, query_max_length=12)
    image = ImageInput(pil=photos()[0])
    text_ids = model.tokenizer.encode(["the quick brown fox"], 100)[0].ids
    seq = model.tokenize([Composed("the quick brown fox", image)])[0]
    pad = model.tokenizer.pad_id
    assert list(seq.ids) == [text_ids[0], *[pad] * t.tokens, *text_ids[1:]]
    part = seq.media
    assert isinstance(part, ImagePart) and (part.start, part.count) == (1, t.tokens) and not seq.truncated
    assert part.image.pil is image.pil and part.image.name == "inputs[0]"
    alone = model.tokenize([image])[0]
    assert list(alone.ids) == [text_ids[0], *[pad] * t.tokens, text_ids[-1]]
    long = "the quick brown fox jumps over the lazy dog " * 30
    # documents: the image and the text (special tokens included) fill the position table
    doc = model.tokenize([Composed(long, image)])[0]
    assert len(doc) == 128 and doc.truncated
    # queries: the text is cut to the query length, the image comes on top
    query = model.tokenize([Composed(long, image)], kind="query")[0]
    assert len(query) == t.tokens + 12 and query.truncated
    assert model.input_limit("query") == 12
    with_instruction = load(t, query_instruction="represent this: ").tokenize(
        [Composed("fox", image)], kind="query"
    )[0]
    assert len(with_instruction) > len(model.tokenize([Composed("fox", image)], kind="query")[0])


def mutate(t: TinyVisualized, tmp: Path, change: str) -> Path:
    state = torch.load(t.checkpoint, weights_only=True)
    name = tmp / "Visualized_broken.pth"
    if change == "cut":
        name.write_bytes(t.checkpoint.read_bytes()[:5000])
        return name
    if change == "tensor":
        torch.save(torch.zeros(3), name)
        return name
    key, action = change.split(":")
    if action == "missing":
        del state[key]
    elif action == "shape":
        state[key] = torch.zeros(*[n + 1 for n in state[key].shape])
    else:
        state[key] = torch.zeros(2)
    torch.save(state, name)
    return name


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("cut", "cannot load model weights from"),
        ("tensor", "not a state dict"),
        (f"{TOWER}blocks.1.attn.q_bias:missing", f"missing {TOWER}blocks.1.attn.q_bias"),
        (f"{TOWER}blocks.0.mlp.w3.weight:shape", f"wrong shape {TOWER}blocks.0.mlp.w3.weight"),
        (f"{TOWER}blocks.0.attn.qkv.weight:extra", f"unexpected {TOWER}blocks.0.attn.qkv.weight"),
        (f"{TOWER}rope.freqs_cos:shape", f"wrong shape {TOWER}rope.freqs_cos"),
        ("bge_encoder.layer.1.output.dense.bias:missing", "missing bge_encoder.layer.1.output.dense.bias"),
        ("bge_embeddings.word_embeddings.weight:shape", "wrong shape bge_embeddings.word_embeddings.weight"),
        ("bge_encoder.layer.2.output.dense.bias:extra", "unexpected bge_encoder.layer.2.output.dense.bias"),
        ("visual_proj.weight:shape", "wrong shape visual_proj.weight"),
        ("visual_proj.bias:missing", "missing visual_proj.bias"),
        ("model_visual.text.proj:extra", "unexpected model_visual.text.proj"),
    ],
)
def test_a_damaged_checkpoint_is_one_error_naming_file_and_key(
    tiny: dict[str, TinyVisualized], tmp_path: Path, change: str, named: str
) -> None:
    t = tiny["bert"]
    path = mutate(t, tmp_path, change)
    with pytest.raises(ModelFormatError) as err:
        load(TinyVisualized(path, t.text_dir, t.family, t.image_size, t.patch, t.head_width, t.layers))
    text = str(err.value)
    assert str(path) in text and named in text and "\n" not in text


def test_a_rotary_table_of_another_grid_is_refused(tiny: dict[str, TinyVisualized]) -> None:
    t = tiny["bert"]
    state = torch.load(t.checkpoint, weights_only=True)
    state[f"{TOWER}rope.freqs_cos"] = torch.from_numpy(rope_table(4, 16, pt_hw_seq_len=14)[0]).float()
    with pytest.raises(ModelFormatError, match="not EVA02's rotary table for a 4x4 grid"):
        EvaVisionTower.from_state(state, t.checkpoint)


def test_the_text_model_is_inferred_or_asked_for(tiny: dict[str, TinyVisualized], tmp_path: Path) -> None:
    assert text_model_of("BAAI/bge-visualized/Visualized_base_en_v1.5.pth") == "BAAI/bge-base-en-v1.5"
    assert text_model_of("/models/Visualized_m3.pth") == "BAAI/bge-m3"
    assert text_model_of("my_finetune.pth") is None
    with pytest.raises(ModelFormatError, match=r"text_model=") as err:
        Embedder.from_pretrained(str(tiny["bert"].checkpoint), engine=FP32)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelNotFoundError, match="no checkpoint file"):
        resolve_checkpoint(str(tmp_path / "missing.pth"), None)
    with pytest.raises(ModelFormatError, match="long_input='chunk'"):
        load(tiny["bert"], long_input="chunk")


def test_default_dtype_is_checked_against_fp32(tmp_path: Path) -> None:
    if cpu_features().bf16 is None:
        pytest.skip("this CPU has no bf16 matrix instructions: auto is exact fp32")
    # a text model at the usual init (bf16 reproduces it closely, as it does trained models)
    t = build_visualized(tmp_path, "bert", seed=5, trainable=True)
    auto = load(t, EngineConfig(device="cpu", progress=False))
    said = auto.compute()[0]
    assert "VisualizedBackbone: bfloat16 matmuls" in said and "checked at load, cosine to fp32" in said
    rgb, grey, rgba, _ = photos()
    inputs = as_inputs([("a fox", None), (None, rgb), ("cats", grey), (None, rgba)])
    fast, exact = auto.encode(inputs).dense, load(t).encode(inputs).dense
    assert fast is not None and exact is not None
    assert float((fast * exact).sum(axis=1).min()) >= 0.99


def test_one_fast_path_and_the_identity_of_the_files(tiny: dict[str, TinyVisualized], tmp_path: Path) -> None:
    t = tiny["bert"]
    model = load(t)
    backbone = model.torch_module().backbone
    assert isinstance(backbone, VisualizedBackbone)
    assert fast_paths(model.torch_module()) == [backbone]  # its text encoder is switched through it
    first = model_identity(model)["files"]
    assert model_identity(load(t))["files"] == first
    other = build_visualized(tmp_path, "bert", seed=9)
    moved = TinyVisualized(other.checkpoint, t.text_dir, "bert", 32, 8, 16, 2)
    assert model_identity(load(moved))["files"] != first
