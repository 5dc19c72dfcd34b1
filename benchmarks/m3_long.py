"""A BGE-M3-sized model on this CPU: tokens/s and peak memory at 128, 512 and 8,192 tokens
per input, all three outputs from one pass, bgekit (fp32, bf16, int8) against FlagEmbedding,
and the dense output alone against sentence-transformers on ONNX Runtime and OpenVINO.

    python benchmarks/m3_long.py --work DIR [--peers-python PY] [--onnx-python PY]
        [--openvino-python PY]
        [--lengths 128,512,8192] [--tokens 8192]
        [--only bgekit:float32,bgekit:bfloat16,FlagEmbedding,st:onnx,st:openvino]

``st:onnx`` / ``st:openvino`` (from ``--onnx-python`` / ``--openvino-python``; FlagEmbedding
from ``--peers-python``: their pins do not resolve in one environment): the same
folder as a sentence-transformers model (CLS pooling, normalised, as bge-m3's dense output),
exported by sentence-transformers itself on first load (ONNX fp32; OpenVINO runs at its
CPU's inference precision, bf16 where the CPU has it); dense only, batch 8 like FlagEmbedding.

Runners ``bgekit:DTYPE:chunk`` and ``bgekit:DTYPE:mcls`` run the long-input policies
(issue 15): ``chunk`` with 512-token windows (64 overlap), ``mcls`` a CLS token every 256
tokens up to the position table (inputs that do not fit with their CLS tokens are cut).

The model is built offline once in ``DIR``: a randomly initialised XLM-RoBERTa with
bge-m3's shape (24 layers, hidden 1024, 16 heads, FFN 4096, 8,194 positions, a
250,002-token embedding table) plus ``colbert_linear.pt`` (1024 -> 1024) and
``sparse_linear.pt`` (1024 -> 1) beside it, and a Unigram tokenizer trained on SciFact
(its ids fall inside the embedding table; only speed and memory are measured, plus
agreement between the libraries on the same weights). Each (runner, length) runs in its own
process: inputs of exactly ``length`` tokens (SciFact abstracts run together and cut), as
many as make about ``--tokens`` tokens, dense + sparse + multi-vector, after a one-input
warm-up; peak RSS is the process's high-water mark (it includes the loaded weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = ("bgekit:float32", "bgekit:bfloat16", "FlagEmbedding", "st:onnx", "st:openvino")
DENSE_ONLY = ("st:onnx", "st:openvino")


def build(folder: Path) -> Path:
    """The bge-m3-shaped random model, written once (2.3 GB of fp32 weights)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import xlmr_tokenizer

    corpus = [json.loads(x)["text"] for x in (ROOT / "data/scifact/corpus.jsonl").open()]
    tok = xlmr_tokenizer(corpus, vocab_size=8000)
    tok.model_max_length = 8192
    tok.save_pretrained(tmp)
    # a class name every transformers version knows (5.x writes one 4.x cannot load)
    config_file = tmp / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.pop("backend", None)
    config_file.write_text(json.dumps(tok_config, indent=2))
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=8194,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(tmp)
    colbert, sparse = torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 1)
    torch.save(colbert.state_dict(), tmp / "colbert_linear.pt")
    torch.save(sparse.state_dict(), tmp / "sparse_linear.pt")
    tmp.rename(folder)
    return folder


def make_texts(folder: Path, length: int, count: int) -> list[str]:
    """``count`` texts of exactly ``length`` tokens with this tokenizer (specials included)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    docs = [json.loads(x)["text"] for x in (ROOT / "data/scifact/corpus.jsonl").open()]
    texts, i = [], 0
    while len(texts) < count:
        ids: list[int] = []
        while len(ids) < length:
            ids += tok(docs[i % len(docs)], add_special_tokens=False)["input_ids"]
            i += 1
        texts.append(tok.decode(ids[: length - 2]))
    return texts


def worker(runner: str, folder: str, length: int, texts_file: str, out: str, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    texts = json.loads(Path(texts_file).read_text())
    start = time.perf_counter()
    if runner.startswith("bgekit:"):
        from bgekit import Embedder, EmbedderSettings, EngineConfig

        parts = runner.split(":")
        policy = parts[2] if len(parts) > 2 else "truncate"
        if policy == "chunk":  # windows of 512 (a model fine-tuned on 512-token passages)
            settings = EmbedderSettings(query_max_length=512, passage_max_length=512, long_input="chunk")
        elif policy == "mcls":  # a CLS every 256 tokens, up to the position table
            settings = EmbedderSettings(query_max_length=512, passage_max_length=512, long_input="mcls")
        else:
            settings = EmbedderSettings(query_max_length=length, passage_max_length=length)
        engine = EngineConfig(device="cpu", dtype=parts[1], progress=False)  # type: ignore[arg-type]
        m = Embedder.from_pretrained(folder, settings=settings, engine=engine)
        path = m.compute()[0]

        def run(t: list[str]) -> tuple[Any, Any, Any]:
            e = m.encode(t, outputs=("dense", "sparse", "multivector"))
            assert e.sparse is not None and e.multivector is not None
            if policy != "truncate":
                path_note.append(f"{policy}: {e.chunked} of {len(t)} inputs windowed/MCLS, {e.truncated} cut")
            return e.dense, [s.to_dict() for s in e.sparse], e.multivector

        path_note: list[str] = []

    elif runner in DENSE_ONLY:
        from sentence_transformers import SentenceTransformer, models

        backend = runner.split(":", 1)[1]
        export = Path(folder).parent / f"st-{backend}"  # exported once, beside the model
        source = str(export) if export.exists() else folder
        body = models.Transformer(source, max_seq_length=length, backend=backend)
        st = SentenceTransformer(
            modules=[body, models.Pooling(1024, pooling_mode="cls"), models.Normalize()], device="cpu"
        )
        if not export.exists():
            st.save(str(export))
        path = f"sentence-transformers {backend}"
        if backend == "openvino":
            import openvino as ov

            path += f", {ov.Core().get_property('CPU', 'INFERENCE_PRECISION_HINT')}"
        path_note = []

        def run(t: list[str]) -> tuple[Any, Any, Any]:
            return st.encode(t, batch_size=8, show_progress_bar=False), None, None

    else:
        from FlagEmbedding import BGEM3FlagModel

        fm = BGEM3FlagModel(
            folder, use_fp16=False, devices="cpu", passage_max_length=length, query_max_length=length
        )
        path = "FlagEmbedding BGEM3FlagModel, fp32"
        path_note = []

        def run(t: list[str]) -> tuple[Any, Any, Any]:
            o = fm.encode(
                t,
                batch_size=8,
                max_length=length,
                return_dense=True,
                return_sparse=True,
                return_colbert_vecs=True,
            )
            return (
                o["dense_vecs"],
                [{int(k): float(v) for k, v in w.items()} for w in o["lexical_weights"]],
                o["colbert_vecs"],
            )

    load = time.perf_counter() - start
    run(texts[:1])
    start = time.perf_counter()
    dense, sparse, multi = run(texts)
    seconds = time.perf_counter() - start
    np.save(out + ".dense.npy", np.asarray(dense, dtype=np.float32))
    if multi is not None:
        np.save(out + ".mv0.npy", np.asarray(multi[0], dtype=np.float32))
        Path(out + ".sparse0.json").write_text(json.dumps({str(k): v for k, v in sparse[0].items()}))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    if runner.startswith("bgekit:") and path_note:
        path = f"{path}; {path_note[-1]}"
    return {"runner": runner, "seconds": seconds, "load_seconds": load, "peak_rss_gib": rss, "path": path}


def _outputs(prefix: str) -> tuple[Any, Any, dict[int, float] | None]:
    """Dense vectors, and the first input's multi-vectors and sparse weights (``None`` for
    the dense-only runners)."""
    import numpy as np

    dense = np.load(prefix + ".dense.npy")
    if not Path(prefix + ".sparse0.json").exists():
        return dense, None, None
    sparse = json.loads(Path(prefix + ".sparse0.json").read_text())
    return dense, np.load(prefix + ".mv0.npy"), {int(k): v for k, v in sparse.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--peers-python", default=sys.executable)
    ap.add_argument("--onnx-python", default=sys.executable)
    ap.add_argument("--openvino-python", default=sys.executable)
    ap.add_argument("--lengths", default="128,512,8192")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per measurement (at least one input)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(RUNNERS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker:
        print(
            json.dumps(
                worker(ns.worker, str(ns.work / "model"), ns.length, ns.texts_file, ns.out, ns.threads)
            )
        )
        return
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from encode_throughput import cpu_line

    folder = build(ns.work / "model")
    model, flags = cpu_line()
    print(f"cpu: {model}; flags used: {', '.join(flags)}; threads: {ns.threads}\n")
    print(
        "| length | inputs | runner | seconds | tokens/s | peak RSS | dense cosine to bgekit fp32 | sparse / multi-vector max diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for length in (int(x) for x in ns.lengths.split(",")):
        count = max(1, ns.tokens // length)
        texts_file = ns.work / f"texts-{length}.json"
        texts_file.write_text(json.dumps(make_texts(folder, length, count)))
        for runner in ns.only.split(","):
            out = str(ns.work / f"out-{runner.replace(':', '_')}-{length}")
            python = sys.executable if runner.startswith("bgekit:") else ns.peers_python
            if runner == "st:openvino":
                python = ns.openvino_python
            elif runner == "st:onnx":
                python = ns.onnx_python
            cmd = [python, __file__, "--work", str(ns.work), "--worker", runner, "--length", str(length)]
            cmd += ["--texts-file", str(texts_file), "--out", out, "--threads", str(ns.threads)]
            ref: dict[str, Any] | None = None
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(
                    f"| {length} | {count} | {runner} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | | |"
                )
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            dense, mv, sparse = _outputs(out)
            agree = "-"
            diffs = "-"
            reference = ns.work / f"out-bgekit_float32-{length}"
            same_inputs = runner.count(":") < 2  # chunk / mcls outputs differ from truncate by design
            if runner != "bgekit:float32" and same_inputs and Path(str(reference) + ".dense.npy").exists():
                # bgekit fp32's outputs, from this run or an earlier one on the same inputs
                ref_dense, ref_mv, ref_sparse = _outputs(str(reference))
                ref = {"dense": ref_dense, "mv": ref_mv, "sparse": ref_sparse}
            if ref is not None:
                cos = (
                    (dense * ref["dense"]).sum(1)
                    / np.linalg.norm(dense, axis=1)
                    / np.linalg.norm(ref["dense"], axis=1)
                )
                agree = f"{cos.min():.6f}"
            if ref is not None and sparse is not None and mv is not None:
                keys = sparse.keys() | ref["sparse"].keys()
                sd = max((abs(sparse.get(k, 0.0) - ref["sparse"].get(k, 0.0)) for k in keys), default=0.0)
                md = float(np.abs(mv - ref["mv"]).max()) if mv.shape == ref["mv"].shape else float("nan")
                diffs = f"{sd:.2e} / {md:.2e}"
            tps = length * count / r["seconds"]
            print(
                f"| {length} | {count} | {runner} | {r['seconds']:.1f} | {tps:,.0f} | {r['peak_rss_gib']:.2f} GiB | {agree} | {diffs} |",
                flush=True,
            )
            if runner.startswith("bgekit:"):
                print(f"|  |  | ({r['path']}) |  |  |  |  |  |", flush=True)


if __name__ == "__main__":
    main()
