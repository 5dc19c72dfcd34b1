"""BGE-VL (CLIP) against transformers' own CLIPModel: texts, images and composed inputs,
batching, truncation at 77 tokens, checked weights, no remote code, bf16 kernels."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from skimage import data as photos

from bgekit import Embedder
from bgekit.engine import EngineConfig
from bgekit.engine.cpu import cpu_features
from bgekit.errors import InputError, ModelFormatError
from bgekit.images import Composed, ImageError, ImageInput, ImagePart
from bgekit.models.fingerprint import files_digest
from bgekit.models.settings import EmbedderSettings
from bgekit.models.vision.clip import ClipBackbone, read_preprocess
from tests.tiny_clip import EOS, REMOTE_MARKER, VISION_TOKENS

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)
CAPTION = "a photo of a cat sitting on a chair"
EDIT = "make the background dark as if the photo was taken at night"


@pytest.fixture(scope="module")
def vl(clip_dir: Path) -> Embedder:
    return Embedder.from_pretrained(str(clip_dir), engine=FP32)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """skimage photos as files: PNG and JPEG, odd sizes (odd crop margins), a grey one."""
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for name, array, fmt in (
        ("astronaut", photos.astronaut()[:509, :, :], "png"),
        ("coffee", photos.coffee()[:, :597], "jpeg"),
        ("chelsea", photos.chelsea(), "png"),
        ("rocket", photos.rocket()[:425], "jpeg"),
        ("camera", photos.camera()[:301, :455], "png"),
    ):
        path = root / f"{name}.{'jpg' if fmt == 'jpeg' else fmt}"
        Image.fromarray(array).save(path, format=fmt.upper())
        out[name] = path
    return out


class Reference:
    """transformers' CLIPModel, tokenizer and PIL image processor, run as the reference's
    ``encode_text`` / ``encode_image`` / ``encode_multimodal`` do (images opened and
    converted to RGB first)."""

    def __init__(self, folder: Path):
        from transformers import CLIPModel, CLIPTokenizer

        try:
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
        except ImportError:  # transformers 4: the slow CLIPImageProcessor is the PIL one
            from transformers import CLIPImageProcessor as Proc  # type: ignore[assignment]
        self.model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
        self.tok = CLIPTokenizer.from_pretrained(folder)
        self.proc = Proc.from_pretrained(folder)

    @staticmethod
    def _features(out: object) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]

    @torch.inference_mode()
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tok(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        return self._features(self.model.get_text_features(**ids))

    @torch.inference_mode()
    def image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return self._features(self.model.get_image_features(pixel_values=pixels))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return F.normalize(self.text(texts), dim=-1).numpy()

    def encode_image(self, images: Sequence[Image.Image]) -> np.ndarray:
        return F.normalize(self.image(images), dim=-1).numpy()

    def encode_multimodal(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        return F.normalize(self.text(texts) + self.image(images), dim=-1).numpy()


@pytest.fixture(scope="module")
def ref(clip_dir: Path) -> Reference:
    return Reference(clip_dir)


def _opened(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im


def test_texts_match_transformers(vl: Embedder, ref: Reference) -> None:
    texts = [CAPTION, "a rocket on the launch pad", "A CUP of Coffee, on a wooden table!", "x"]
    got = vl.encode(texts).dense
    assert got is not None and got.shape == (4, 16)
    np.testing.assert_allclose(got, ref.encode_text(texts), atol=1e-5)
    # queries and documents read the same (BGE-VL has no instruction)
    np.testing.assert_allclose(vl.encode_queries(texts).dense, got, atol=1e-6)


def test_images_match_transformers_from_files_bytes_and_pil(
    vl: Embedder, ref: Reference, pictures: dict[str, Path]
) -> None:
    paths = list(pictures.values())
    want = ref.encode_image([_opened(p) for p in paths])
    as_paths = vl.encode(paths).dense
    as_bytes = vl.encode([p.read_bytes() for p in paths]).dense
    as_pil = vl.encode([_opened(p) for p in paths]).dense
    as_inputs = vl.encode([ImageInput(path=str(p)) for p in paths]).dense
    for got in (as_paths, as_bytes, as_pil, as_inputs):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # different photos give different vectors (the test can tell images apart)
    sims = want @ want.T
    assert sims[np.triu_indices(len(paths), 1)].max() < 0.999


def test_composed_match_transformers(vl: Embedder, ref: Reference, pictures: dict[str, Path]) -> None:
    names = ["astronaut", "coffee", "camera"]
    texts = [EDIT, CAPTION, "the same photo in colour"]
    items: list[object] = [
        Composed(texts[0], ImageInput(path=str(pictures[names[0]]))),
        {"image": pictures[names[1]].read_bytes(), "text": texts[1]},
        {"text": texts[2], "image": _opened(pictures[names[2]])},
    ]
    got = vl.encode_queries(items).dense  # type: ignore[arg-type]
    want = ref.encode_multimodal([_opened(pictures[n]) for n in names], texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the composed vector is neither the text's nor the image's
    alone = ref.encode_text(texts[:1])[0]
    assert float(got[0] @ alone) < 0.999


def test_mixed_batch_equals_one_at_a_time(clip_dir: Path, pictures: dict[str, Path]) -> None:
    astro, coffee, chelsea = (pictures[n] for n in ("astronaut", "coffee", "chelsea"))
    items: list[object] = [
        CAPTION,
        astro,
        {"image": coffee, "text": EDIT},
        "a much longer text about a rocket standing on its launch pad at night under the stars",
        chelsea.read_bytes(),
        {"image": _opened(astro), "text": "x"},
        "y",
    ]
    for engine in (FP32, EngineConfig(device="cpu", dtype="float32", max_batch_tokens=40, progress=False)):
        model = Embedder.from_pretrained(str(clip_dir), engine=engine)
        together = model.encode(items).dense  # type: ignore[arg-type]
        alone = np.stack([model.encode([x]).dense[0] for x in items])  # type: ignore[list-item,index]
        np.testing.assert_allclose(together, alone, atol=1e-6)
        norms = np.linalg.norm(together, axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_token_layout_of_images_and_composed(vl: Embedder, pictures: dict[str, Path]) -> None:
    image = ImageInput(path=str(pictures["rocket"]))
    text, alone, composed = vl.tokenize([CAPTION, image, Composed(CAPTION, image)], kind="query")
    assert len(alone) == VISION_TOKENS == 17
    assert isinstance(alone.media, ImagePart)
    assert (alone.media.start, alone.media.count) == (0, 17)
    # the image itself, named by its position for error messages
    assert (alone.media.image.path, alone.media.image.name) == (image.path, "inputs[1]")
    assert text.media is None and not text.truncated
    assert list(composed.ids[: len(text)]) == list(text.ids)
    assert len(composed) == len(text) + 17
    assert isinstance(composed.media, ImagePart)
    assert (composed.media.start, composed.media.count) == (len(text), 17)
    eos = vl.tokenizer.pad_id
    assert vl.tokenizer.id_to_token(eos) == EOS and text.ids[-1] == eos


def test_truncation_at_77_tokens(vl: Embedder, ref: Reference, pictures: dict[str, Path]) -> None:
    long = " ".join(["a cat sitting on a wooden chair near the sea"] * 12)
    assert len(ref.tok(long)["input_ids"]) > 100
    image = ImageInput(path=str(pictures["chelsea"]))
    seqs = vl.tokenize([long, Composed(long, image), "short"], kind="query")
    assert [len(s) for s in seqs[:2]] == [77, 77 + 17]
    assert [s.truncated for s in seqs] == [True, True, False]
    assert seqs[0].ids[-1] == vl.tokenizer.pad_id  # the end token is kept after the cut
    enc = vl.encode([long, Composed(long, image), "short"], kind="query")
    assert enc.truncated == 2
    np.testing.assert_allclose(enc.dense[0], ref.encode_text([long])[0], atol=1e-5)  # type: ignore[index]
    want = ref.encode_multimodal([_opened(pictures["chelsea"])], [long])[0]
    np.testing.assert_allclose(enc.dense[1], want, atol=1e-5)  # type: ignore[index]


def test_loads_no_remote_code_and_describes_itself(vl: Embedder, clip_dir: Path) -> None:
    config = json.loads((clip_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_boom.MMRet_CLIP"  # present, never run
    assert not (clip_dir / REMOTE_MARKER).exists()
    info = vl.info
    assert (info.model_type, info.architecture, info.hidden_size) == ("clip", "CLIPModel", 16)
    assert info.modalities == ("text", "image", "text+image")
    assert (info.query_max_length, info.passage_max_length, info.heads) == (77, 77, ("dense",))
    assert info.known_as is None and info.query_instruction == ""
    assert isinstance(vl.torch_module().backbone, ClipBackbone)
    assert vl.torch_module().pooled


def test_known_names_and_slow_tokenizer_files(
    clip_dir: Path, tmp_path: Path, vl: Embedder, pictures: dict[str, Path]
) -> None:
    """A folder named BGE-VL-large is known as such; the same folder with only vocab.json
    and merges.txt (transformers converts them) gives the same vectors. (A copy: the BPE
    trainer breaks ties between merges differently from run to run.)"""
    folder = tmp_path / "BGE-VL-large"
    shutil.copytree(
        clip_dir, folder, ignore=shutil.ignore_patterns("tokenizer.json", "tokenizer_config.json")
    )
    assert (folder / "vocab.json").exists() and not (folder / "tokenizer.json").exists()
    other = Embedder.from_pretrained(str(folder), engine=FP32)
    assert other.info.known_as == "BAAI/BGE-VL-large"
    items: list[object] = [CAPTION, pictures["coffee"], {"image": pictures["astronaut"], "text": EDIT}]
    np.testing.assert_allclose(other.encode(items).dense, vl.encode(items).dense, atol=1e-6)  # type: ignore[arg-type]


def _damaged(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    edit(weights)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(
    ("edit", "what", "key"),
    [
        (
            lambda w: w.pop("vision_model.encoder.layers.1.mlp.fc2.weight"),
            "missing",
            "layers.1.mlp.fc2.weight",
        ),
        (
            lambda w: w.__setitem__("text_projection.weight", torch.zeros(8, 32)),
            "wrong shape",
            "text_projection.weight",
        ),
        (
            lambda w: w.__setitem__("text_model.encoder.layers.5.mlp.fc1.weight", torch.zeros(64, 32)),
            "unexpected",
            "text_model.encoder.layers.5.mlp.fc1.weight",
        ),
    ],
)
def test_damaged_weights_are_one_error(
    clip_dir: Path, tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], None], what: str, key: str
) -> None:
    folder = _damaged(clip_dir, tmp_path / "damaged", edit)
    with pytest.raises(ModelFormatError) as err:
        Embedder.from_pretrained(str(folder), engine=FP32)
    message = str(err.value)
    assert "\n" not in message
    assert str(folder / "model.safetensors") in message and what in message and key in message


def test_weights_without_logit_scale_load(clip_dir: Path, tmp_path: Path, vl: Embedder) -> None:
    """``logit_scale`` (the contrastive temperature) is never used: a file without it loads."""
    folder = _damaged(clip_dir, tmp_path / "no-scale", lambda w: w.pop("logit_scale"))
    model = Embedder.from_pretrained(str(folder), engine=FP32)
    np.testing.assert_allclose(model.encode([CAPTION]).dense, vl.encode([CAPTION]).dense, atol=1e-7)


@pytest.mark.parametrize("dtype", ["bfloat16", "auto"])
def test_cpu_bf16_kernels_stay_close_to_fp32(
    clip_dir: Path, vl: Embedder, pictures: dict[str, Path], dtype: str
) -> None:
    if cpu_features().bf16 is None:
        pytest.skip("this CPU has no bf16 matrix instructions")
    engine = EngineConfig(device="cpu", dtype=dtype, progress=False)  # type: ignore[arg-type]
    model = Embedder.from_pretrained(str(clip_dir), engine=engine)
    items: list[object] = [
        CAPTION,
        EDIT,
        pictures["astronaut"],
        pictures["camera"],
        {"image": pictures["coffee"], "text": EDIT},
    ]
    got = model.encode(items).dense  # type: ignore[arg-type]
    want = vl.encode(items).dense  # type: ignore[arg-type]
    cosines = (got * want).sum(axis=1)  # type: ignore[operator]
    assert cosines.min() >= 0.99, cosines
    if dtype == "bfloat16":  # asked for: the linear layers of both towers run in bf16
        assert "ClipBackbone: bfloat16 matmuls" in model.compute()[0]
        assert not np.array_equal(got, want)
    else:  # auto: bf16 kept only if it passed the check at load, else fp32 with the reason
        assert "checked at load" in model.compute()[0] or "failed the check" in model.compute()[0]


def test_preprocessor_config_is_read_and_checked(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pre"
    folder.mkdir()
    spec = read_preprocess(folder, 32)  # no file: CLIP's pipeline at the tower's size
    assert (spec.size, spec.crop, spec.rgb_first) == (32, "floor", True)
    base = json.loads((clip_dir / "preprocessor_config.json").read_text())
    file = folder / "preprocessor_config.json"
    file.write_text(json.dumps(base | {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]}))
    spec = read_preprocess(folder, 32)
    assert (spec.mean, spec.std) == ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    file.write_text(json.dumps(base | {"size": 32, "crop_size": 32}))  # the older layout
    assert read_preprocess(folder, 32).size == 32
    for bad, field in (
        ({"resample": 2}, "resample"),
        ({"crop_size": {"height": 24, "width": 24}}, "crop_size 24"),
        ({"size": {"height": 32, "width": 40}}, "size"),
        ({"do_center_crop": False}, "do_center_crop"),
        ({"image_std": [0.2, 0.0, 0.3]}, "image_std"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ):
        file.write_text(json.dumps(base | bad))
        with pytest.raises(ModelFormatError, match=field) as err:
            read_preprocess(folder, 32)
        assert str(file) in str(err.value)
    file.write_text("{not json")
    with pytest.raises(ModelFormatError, match="cannot read"):
        read_preprocess(folder, 32)


def test_fingerprint_covers_the_preprocessor_config(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fp"
    shutil.copytree(clip_dir, folder)
    before = files_digest(folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["image_mean"] = [0.5, 0.5, 0.5]
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    assert files_digest(folder) != before


def test_bad_images_and_settings_are_one_line_errors(clip_dir: Path, vl: Embedder, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"inputs\[1\]: not an image"):
        vl.encode([CAPTION, b"this is not an image"])
    with pytest.raises(ImageError, match=r"missing\.png"):
        vl.encode([{"image": tmp_path / "missing.png", "text": CAPTION}])
    for settings, match in (
        (EmbedderSettings(long_input="chunk"), "long_input='chunk' is not supported"),
        (EmbedderSettings(pooling="mean"), "pooling='mean'"),
        (EmbedderSettings(query_max_length=100), "query max length 100 is outside 3..77"),
    ):
        with pytest.raises(ModelFormatError, match=match):
            Embedder.from_pretrained(str(clip_dir), settings=settings, engine=FP32)
    with pytest.raises(InputError, match="text_model"):
        Embedder.from_pretrained(str(clip_dir), settings=EmbedderSettings(text_model="x"), engine=FP32)


def test_shorter_query_length_and_instruction_apply_to_composed_text(
    clip_dir: Path, ref: Reference, pictures: dict[str, Path]
) -> None:
    settings = EmbedderSettings(query_max_length=8, query_instruction="find: ")
    model = Embedder.from_pretrained(str(clip_dir), settings=settings, engine=FP32)
    image = ImageInput(path=str(pictures["rocket"]))
    seq = model.tokenize([Composed(EDIT, image)], kind="query")[0]
    assert seq.truncated and len(seq) == 8 + 17
    want = ref.tok("find: " + EDIT, truncation=True, max_length=8)["input_ids"]
    assert list(seq.ids[:8]) == list(want)
    doc = model.tokenize([Composed(EDIT, image)], kind="document")[0]
    assert not doc.truncated and list(doc.ids[: len(doc) - 17]) == list(ref.tok(EDIT)["input_ids"])


def test_jpeg_bytes_of_a_palette_and_rgba_image(vl: Embedder, ref: Reference) -> None:
    """Images that are not RGB become RGB before resizing, as transformers does."""
    logo = Image.fromarray(photos.logo())  # RGBA
    palette = Image.fromarray(photos.astronaut()[:301, :377]).convert("P", palette=Image.Palette.ADAPTIVE)
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    got = vl.encode([logo, buf.getvalue()]).dense
    want = ref.encode_image([logo, Image.open(io.BytesIO(buf.getvalue()))])
    np.testing.assert_allclose(got, want, atol=1e-5)
