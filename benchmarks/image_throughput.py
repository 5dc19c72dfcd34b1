"""Images per second and peak memory for each image model shape on this CPU: bgekit (fp32
and its default path) against the reference code's own image paths, one run.

    python benchmarks/image_throughput.py /path/to/FlagEmbedding/research/visual_bge
        [--images 20] [--large-images N] [--quick] [--repeat 2]
        [--shapes visualized-base,visualized-m3,bge-vl-base,bge-vl-large] [--work DIR] [--json OUT]

Shapes, random weights built offline at full size:

- ``visualized-base``: EVA02-CLIP-B-16 + a bge-base-sized BERT (Visualized_base_en_v1.5),
  built by ``visualized_reference_parity.bge_base_checkpoint``;
- ``visualized-m3``: EVA02-CLIP-L-14 + an XLM-R-large-sized text model (bge-m3's sizes:
  24 layers, hidden 1024, 250,002 tokens) (Visualized_m3);
- ``bge-vl-base`` / ``bge-vl-large``: transformers' ``CLIPModel`` from ViT-B/16 / ViT-L/14
  configs (BGE-VL-base / -large's shapes), saved as a model folder (no hub, no remote code).

Paths, each in its own interpreter (so the peak memory is that path's), on the same photos
(skimage.data, mixed sizes and modes, read from PNG files: decoding and preprocessing are
timed for every path), one warm-up pass untimed, then ``--repeat`` timed passes:

- Visualized: the reference's ``Visualized_BGE.encode(image=path)`` one image per call
  (fp32, under ``torch.no_grad()``, as its README calls it) and, for scale, its
  ``encode_image`` on one stacked batch; the reference's code is imported as
  ``visualized_reference_parity`` does; its ``preprocess_val`` (torchvision's Resize,
  CenterCrop, ToTensor, Normalize: torchvision is not installed here) is written out below
  as torchvision runs it on a PIL image.
- BGE-VL: transformers' ``CLIPModel.get_image_features`` after its ``AutoProcessor``, one
  image per call and all images in one call (what BGE-VL's remote code wraps), and
  sentence-transformers' ``CLIPModel`` module on the same folder (file paths in, its
  default batch size).
- bgekit: ``Embedder.encode(paths)`` with ``dtype="float32"`` and with the default
  (``"auto"``: bf16 matrix products where the CPU has AMX-BF16 / AVX512-BF16 and the
  load-time check passes); the kernel path each took is printed (``Embedder.compute()``).

Memory: RSS after loading, and the peak RSS while encoding (the high-water mark reset
after the warm-up through ``/proc/self/clear_refs``). Every path's vectors are compared
with the per-call path's (min cosine; the Visualized reference preprocesses with PIL
and bgekit with its own resize, so fp32 cosines may sit a little under 1). RSS counts weights
read through a memory map (transformers' safetensors) only once touched, so the peak
while encoding is the number to compare.

Rounds: every path runs once per ``--rounds`` round (the order alternates), and the best
pass is kept; "others' CPU" is the share of the machine's CPU time other processes took
during that pass (the machine may be shared: a number well above 0 marks a slowed pass).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from benchmarks import visualized_reference_parity as parity  # noqa: E402

SHAPES = {
    "visualized-base": "BGE-Visualized base: EVA02-CLIP-B-16 + bge-base-sized BERT",
    "visualized-m3": "BGE-Visualized m3: EVA02-CLIP-L-14 + XLM-R-large-sized text model",
    "bge-vl-base": "BGE-VL-base: CLIP ViT-B/16",
    "bge-vl-large": "BGE-VL-large: CLIP ViT-L/14",
}
LARGE = ("visualized-m3", "bge-vl-large")
PATHS = {
    "visualized": {
        "reference": "reference encode(image=...), one per call (fp32)",
        "reference-batched": "reference encode_image, one stacked batch (fp32)",
        "bgekit-fp32": "bgekit, batched (fp32)",
        "bgekit-default": "bgekit, batched (default)",
    },
    "clip": {
        "reference": "transformers get_image_features, one per call (fp32)",
        "reference-batched": "transformers get_image_features, one batch (fp32)",
        "st": "sentence-transformers CLIPModel (fp32)",
        "bgekit-fp32": "bgekit, batched (fp32)",
        "bgekit-default": "bgekit, batched (default)",
    },
}
# A timed pass during which other processes took more than this share of the CPU is run
# again (up to --retries more passes); passes first wait for a quiet spell (--wait s in all).
QUIET = 0.1
FLAGS = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]  # fmt: skip


def family(shape: str) -> str:
    return "visualized" if shape.startswith("visualized") else "clip"


# ---------------------------------------------------------------- building the models


def eva_vision(folder: Path, name: str) -> dict[str, Any]:
    cfg = json.loads((folder / f"visual_bge/eva_clip/model_configs/{name}.json").read_text())
    return {"vision": cfg["vision_cfg"], "embed_dim": cfg["embed_dim"]}


def build_m3(folder: Path, out: Path) -> tuple[Path, Path]:
    """EVA02-CLIP-L-14 + an XLM-R model of bge-m3's sizes (a small trained Unigram
    tokenizer: ids stay far below the 250,002-row embedding table, which is still built)."""
    from tests.tiny_models import xlmr_tokenizer
    from transformers import XLMRobertaConfig, XLMRobertaModel

    text_dir = out / "text-m3"
    xlmr_tokenizer().save_pretrained(text_dir)
    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    config.save_pretrained(text_dir)
    torch.manual_seed(0)
    text = XLMRobertaModel(config)
    eva = eva_vision(folder, "EVA02-CLIP-L-14")
    return parity.random_checkpoint(
        out / "Visualized_m3.pth", text, eva["vision"], eva["embed_dim"]
    ), text_dir


def build_clip(out: Path, large: bool) -> Path:
    """A CLIP folder of BGE-VL-base's (ViT-B/16) or -large's (ViT-L/14) sizes, with
    tests/tiny_clip's small BPE vocabulary (the text tower keeps CLIP's 49,408 rows)."""
    from tests.tiny_clip import BOS, preprocessor_config, write_clip_vocab
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    write_clip_vocab(out)
    bos = json.loads((out / "vocab.json").read_text(encoding="utf-8"))[BOS]
    text = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": bos, "eos_token_id": 2}
    text |= {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12} if large else {}
    text |= {} if large else {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}
    vision = {"image_size": 224, "patch_size": 14 if large else 16}
    if large:
        vision |= {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
        }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=768 if large else 512)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(out)
    CLIPTokenizer.from_pretrained(out, model_max_length=77).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(224), indent=2))
    return out


def build(shape: str, reference: Path, work: Path) -> None:
    out = work / shape
    if (out / "meta.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    if shape == "visualized-base":
        checkpoint, text_dir = parity.bge_base_checkpoint(reference, out)
        meta = {"model": str(checkpoint), "text_dir": str(text_dir)} | eva_vision(
            reference, "EVA02-CLIP-B-16"
        )
    elif shape == "visualized-m3":
        checkpoint, text_dir = build_m3(reference, out)
        meta = {"model": str(checkpoint), "text_dir": str(text_dir)} | eva_vision(
            reference, "EVA02-CLIP-L-14"
        )
    else:
        meta = {"model": str(build_clip(out, shape == "bge-vl-large"))}
    (out / "meta.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------- the paths


def torchvision_val(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The reference's ``preprocess_val`` as torchvision runs it on a PIL image: Resize
    (short side to ``size``, long side ``int(size * long / short)``, PIL bicubic),
    CenterCrop (top-left at ``round((h - size) / 2)``), convert to RGB, ToTensor, Normalize."""
    from bgekit.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)

    def run(img: Image.Image) -> torch.Tensor:
        w, h = img.size
        if min(w, h) != size:
            long = int(size * max(w, h) / min(w, h))
            img = img.resize((size, long) if w <= h else (long, size), Image.Resampling.BICUBIC)
        w, h = img.size
        top, left = round((h - size) / 2.0), round((w - size) / 2.0)
        img = img.crop((left, top, left + size, top + size)).convert("RGB")
        pixels = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous()
        return (pixels.float().div(255) - mean) / std

    return run


def visualized_path(path: str, meta: dict[str, Any], reference: Path) -> Callable[[list[Path]], np.ndarray]:
    modeling, eva_model = parity.import_reference(reference)
    ref, _ = parity.reference_model(
        modeling, eva_model, reference, Path(meta["model"]), Path(meta["text_dir"]), meta["vision"],
        embed_dim=meta["embed_dim"],
    )  # fmt: skip
    ref.preprocess_val = torchvision_val(int(meta["vision"]["image_size"]))
    if path == "reference":

        def run(paths: list[Path]) -> np.ndarray:
            with torch.no_grad():
                return np.concatenate([ref.encode(image=str(p)).numpy() for p in paths])

        return run

    def batched(paths: list[Path]) -> np.ndarray:
        with torch.no_grad():
            return ref.encode_image(torch.stack([ref.preprocess_val(Image.open(p)) for p in paths])).numpy()

    return batched


def clip_path(path: str, folder: str, info: dict[str, Any]) -> Callable[[list[Path]], np.ndarray]:
    if path == "st":
        try:
            from sentence_transformers.models import CLIPModel as STClip
        except ImportError:  # where the deprecated alias is gone
            from sentence_transformers.sentence_transformer.modules import CLIPModel as STClip
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(modules=[STClip(folder)], device="cpu")
        info["note"] = "batch_size 32 (its default)"
        return lambda paths: st.encode([str(p) for p in paths], batch_size=32, convert_to_numpy=True)
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    info["note"] = f"{type(processor.image_processor).__name__}"

    def features(images: list[Image.Image]) -> np.ndarray:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        out = model.get_image_features(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(out, dim=-1).numpy()

    def run(paths: list[Path]) -> np.ndarray:
        with torch.no_grad():
            if path == "reference":
                return np.concatenate([features([Image.open(p).convert("RGB")]) for p in paths])
            return features([Image.open(p).convert("RGB") for p in paths])

    return run


def bgekit_path(path: str, meta: dict[str, Any], info: dict[str, Any]) -> Callable[[list[Path]], np.ndarray]:
    from bgekit.engine import EngineConfig
    from bgekit.models.embedder import Embedder, EmbedderSettings

    settings = EmbedderSettings(text_model=meta["text_dir"]) if "text_dir" in meta else None
    dtype = "float32" if path == "bgekit-fp32" else "auto"
    emb = Embedder.from_pretrained(
        meta["model"], settings=settings, engine=EngineConfig(device="cpu", dtype=dtype, progress=False)
    )
    info["kernel"] = "; ".join(emb.compute())
    return lambda paths: emb.encode(paths).dense


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(found.group(1)) * 1024 if found else -1


def _busy() -> float:
    """Seconds of CPU time the whole machine has been busy (``/proc/stat``)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def _wait_quiet(limit: float) -> None:
    """Wait, up to ``limit`` seconds, for 2 seconds in which other processes take under
    :data:`QUIET` of the machine's CPU (this process is idle meanwhile)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        busy = _busy()
        time.sleep(2)
        if (_busy() - busy) / (2 * (os.cpu_count() or 1)) < QUIET:
            return


def child(
    shape: str, path: str, work: Path, reference: Path, n: int, repeat: int, wait: float, retries: int
) -> None:
    meta = json.loads((work / shape / "meta.json").read_text())
    paths = sorted((work / "images").glob("*.png"), key=lambda p: int(p.stem.split("-")[0]))[:n]
    info: dict[str, Any] = {
        "shape": shape,
        "path": path,
        "images": len(paths),
        "threads": torch.get_num_threads(),
    }
    if path.startswith("bgekit"):
        run = bgekit_path(path, meta, info)
    elif family(shape) == "visualized":
        run = visualized_path(path, meta, reference)
    else:
        run = clip_path(path, meta["model"], info)
    info["rss_loaded"], info["peak_load"] = _status("VmRSS"), _status("VmHWM")
    run(paths)  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark: encoding only
    times, others, deadline = [], [], time.monotonic() + wait
    while sum(o <= QUIET for o in others) < repeat and len(times) < repeat + retries:
        _wait_quiet(deadline - time.monotonic())
        busy, mine, start = _busy(), sum(os.times()[:2]), time.perf_counter()
        vectors = run(paths)
        times.append(time.perf_counter() - start)
        # the machine's CPU time spent by other processes during the pass (it is shared)
        other = max(0.0, _busy() - busy - (sum(os.times()[:2]) - mine))
        others.append(other / (times[-1] * (os.cpu_count() or 1)))
    info["peak_encode"], info["times"], info["others"] = _status("VmHWM"), times, others
    np.save(work / shape / f"{path}.npy", np.asarray(vectors, dtype=np.float32))
    print("RESULT " + json.dumps(info), flush=True)


# ---------------------------------------------------------------- the parent


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = dict(ln.split(":", 1) for ln in lscpu.splitlines() if ":" in ln)
    flags = set(field.get("Flags", "").split())
    import transformers

    try:
        import sentence_transformers

        st = sentence_transformers.__version__
    except ImportError:
        st = "not installed"
    return {
        "cpu": field.get("Model name", "?").strip(),
        "flags": [f for f in FLAGS if f in flags],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": st,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg()[0],
    }


def spawn(args: list[str]) -> dict[str, Any] | None:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or (args[0] == "--child" and not lines):
        print(
            f"  ! {' '.join(args[:3])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}",
            file=sys.stderr,
        )
        return None
    return json.loads(lines[-1][7:]) if lines else {}


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def table(results: list[dict[str, Any]], work: Path) -> str:
    head = (
        "| shape | path | images | best s | images/s | vs per-call | RSS loaded MiB "
        "| peak RSS encoding MiB | min cos vs per-call | others' CPU |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows, notes = [head], []
    for r in results:
        base = next((b for b in results if b["shape"] == r["shape"] and b["path"] == "reference"), None)
        best, ratio, cos = min(r["times"]), "–", "–"
        if base:  # throughput over the per-call path's
            ratio = f"{r['images'] / best / (base['images'] / min(base['times'])):.2f}x"
            vec = np.load(work / r["shape"] / f"{r['path']}.npy")
            cos = f"{cosine_min(np.load(work / r['shape'] / 'reference.npy'), vec):.6f}"
        label = PATHS[family(r["shape"])][r["path"]]
        row = f"| {r['shape']} | {label} | {r['images']} | {best:.2f} | {r['images'] / best:.2f} | {ratio} "
        others = f"{r['others'][r['times'].index(best)]:.0%}"  # during the best pass
        rows.append(row + f"| {mib(r['rss_loaded'])} | {mib(r['peak_encode'])} | {cos} | {others} |")
        if r.get("kernel") or r.get("note"):
            notes.append(f"- {r['shape']}, {label}: {r.get('kernel') or r.get('note')}")
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


def measure(
    shape: str, n: int, reference: Path, work: Path, rounds: int, extra: list[str]
) -> list[dict[str, Any]]:
    """Every path of ``shape`` once per round, in alternating order (so a busy spell on a
    shared machine does not land on one path only); times pooled over the rounds."""
    paths = list(PATHS[family(shape)])
    merged: dict[str, dict[str, Any]] = {}
    for i in range(rounds):
        for path in paths if i % 2 == 0 else paths[::-1]:
            cmd = ["--child", shape, path, str(reference), "--work", str(work)]
            r = spawn([*cmd, "--images", str(n), *extra])
            if not r:
                continue
            label = PATHS[family(shape)][path]
            speed = f"{n / min(r['times']):6.2f} images/s, others' CPU {max(r['others']):.0%}"
            print(f"  round {i + 1}: {label:55s} {speed}", flush=True)
            if path in merged:
                m = merged[path]
                m["times"] += r["times"]
                m["others"] += r["others"]
                for key in ("rss_loaded", "peak_load", "peak_encode"):
                    m[key] = max(m[key], r[key])
            else:
                merged[path] = r
    return [merged[p] for p in paths if p in merged]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path, help="FlagEmbedding's research/visual_bge folder")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--large-images", type=int, default=None, help="images for the L-14 shapes")
    ap.add_argument("--quick", action="store_true", help="8 images on the L-14 shapes, one timed pass")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over the paths (order alternates)")
    ap.add_argument("--wait", type=float, default=30, help="seconds a path may wait for a quiet machine")
    ap.add_argument("--retries", type=int, default=2, help="extra passes when others took the CPU")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--work", type=Path, default=None, help="keep the models and images here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build or args.child:  # in a subprocess of the run below
        if args.build:
            build(args.build, args.reference, args.work)
        else:
            child(*args.child, args.work, args.reference, args.images, args.repeat, args.wait, args.retries)
        return
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        sys.exit(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    large = args.large_images or (8 if args.quick else args.images)
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        (work / "photos").mkdir(parents=True, exist_ok=True)
        (work / "images").mkdir(exist_ok=True)
        for i, p in enumerate(parity.photos(work / "photos", max(args.images, large))):
            shutil.copy(p, work / "images" / f"{i}-{p.name}")  # in order; a repeated photo is a new file
        info = machine()
        print(f"{info['cpu']} ({', '.join(info['flags'])}), {info['cores']} cores")
        print(f"torch {info['torch']}, transformers {info['transformers']}, ", end="")
        print(f"sentence-transformers {info['sentence_transformers']}")
        print(f"{info['date']}, load average {info['load_average']:.2f}")
        results = []
        for shape in shapes:
            n = large if shape in LARGE else args.images
            started = time.perf_counter()
            spawn(["--build", shape, str(args.reference), "--work", str(work)])
            print(f"\n{SHAPES[shape]} ({n} images; built in {time.perf_counter() - started:.0f} s)")
            extra = ["--repeat", str(args.repeat), "--wait", str(args.wait), "--retries", str(args.retries)]
            results += measure(shape, n, args.reference, work, rounds, extra)
        info["load_average_end"] = os.getloadavg()[0]
        print(f"\nload average at the end {info['load_average_end']:.2f}\n")
        print(table(results, work))
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
