"""Peak memory of one training step: LoRA against a full fine-tune of a Qwen2-0.5B-shaped
decoder embedder (random weights), and of loading it for training in bf16 against fp32.

    python benchmarks/lora_memory.py --work DIR [--precision bf16] [--seq 128] [--queries 2] [--group 2]

The model (24 layers, hidden 896, 14 heads / 2 key-value heads, FFN 4864, Qwen2's 151,936-
row vocabulary, saved in bf16 as Qwen2-0.5B is) is built once in ``DIR``; its tokenizer is a
small BPE one (token ids stay below 400: the embedding matrix keeps its real size, which is
what memory depends on). Every configuration runs in a fresh subprocess:

- ``load-fp32`` / ``load-bf16``: ``Embedder.from_pretrained`` on a training engine (what
  ``train_embedder`` does) in that precision: the process's resident high-water mark
  (``VmHWM``) and the peak of its anonymous memory (``RssAnon``, sampled every 2 ms: the
  high-water mark also counts the weight file's mapped pages);
- ``lora`` (r 64, alpha 16, dropout 0.1 on q/k/v/o/gate/up/down: the reference's defaults;
  the frozen base loaded in ``--precision``), ``full`` (every weight trained, kept in fp32
  as mixed precision does, the forward autocast to ``--precision``), ``full-bf16`` (every
  weight trained and stored in bf16: the base in the same precision as LoRA's): one step of
  the transformers Trainer as ``train_embedder`` runs it (AdamW, gradient clipping,
  ``--queries`` queries x ``--group`` passages, every text ``--seq`` tokens), the high-water
  mark reset once the model and data are built (``/proc/self/clear_refs``), so it measures
  the step: forward, backward, optimiser state and update.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from qwen2_shape import build_qwen2_shape  # noqa: E402

GIB = 1024**3


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size (Linux 4.0+)


class AnonPeak:
    """The highest RssAnon seen while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> AnonPeak:
        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _status("RssAnon"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def _examples(n: int) -> list:
    from bgekit.train import TrainExample

    words = "retrieval models rank passages by the similarity of their vectors to the query "
    return [
        TrainExample(f"{i} " + words * 20, (f"pos {i} " + words * 20,), (f"neg {i} " + words * 20,) * 3)
        for i in range(n)
    ]


def child_load(model: str, weights: str) -> dict:
    import torch  # noqa: F401  (imported before the baseline is read)

    from bgekit.models import Embedder
    from bgekit.models.runtime import training_engine

    base = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    with AnonPeak() as anon:
        emb = Embedder.from_pretrained(model, engine=training_engine(weights))  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    params = sum(p.numel() * p.element_size() for p in emb.torch_module().parameters())
    return {
        "baseline_rss": base,
        "load_hwm": _status("VmHWM"),
        "anon_peak": anon.peak,
        "rss_after": _status("VmRSS"),
        "param_bytes": params,
        "seconds": seconds,
    }


def child_step(
    model: str, kind: str, precision: str, seq: int, queries: int, group: int, steps: int, checkpointing: bool
) -> dict:
    import tempfile

    import torch

    from bgekit.train import EmbedderTrainConfig
    from bgekit.train.decoder import prepare
    from bgekit.train.lora import LoraSettings
    from bgekit.train.trainer import _run

    torch.manual_seed(0)
    cfg = EmbedderTrainConfig(
        max_steps=steps,
        batch_size=queries,
        group_size=group,
        precision=precision,  # type: ignore[arg-type]
        query_max_length=seq,
        passage_max_length=seq,
        learning_rate=1e-4,
        warmup=0.0,
        logging_steps=1,
        progress=False,
        lora=LoraSettings() if kind == "lora" else None,
        gradient_checkpointing=checkpointing,
    )
    weights = "bfloat16" if kind == "full-bf16" else None
    base = _status("VmRSS")
    prepared = prepare(model, _examples(queries * steps), cfg, weights=weights)  # type: ignore[arg-type]
    trainable = sum(p.numel() for p in prepared.train_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in prepared.train_model.parameters())
    lengths = [len(s) for s in prepared.collator([prepared.dataset[0]])["q_input_ids"]]
    ready = _status("VmRSS")
    _reset_peak()
    out = Path(tempfile.mkdtemp()) / "out"
    start = time.perf_counter()
    result = _run(prepared.train_model, prepared.dataset, prepared.collator, cfg, out, lambda folder: None)
    seconds = time.perf_counter() - start
    return {
        "baseline_rss": base,
        "rss_ready": ready,
        "step_hwm": _status("VmHWM"),
        "trainable": trainable,
        "params": total,
        "tokens_per_text": lengths[0],
        "steps": result.steps,
        "loss": result.final_loss,
        "seconds": seconds,
    }


def _run_child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--configs", default="load-fp32,load-bf16,lora,full-bf16,full")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in every step")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child is not None:
        if ns.child.startswith("load-"):
            out = child_load(ns.model, {"load-fp32": "float32", "load-bf16": "bfloat16"}[ns.child])
        else:
            out = child_step(
                ns.model, ns.child, ns.precision, ns.seq, ns.queries, ns.group, ns.steps, ns.checkpointing
            )
        print(json.dumps(out))
        return
    from bgekit.engine import cpu_features
    from bgekit.train.trainer import training_precision

    precision = training_precision(ns.precision)
    model = build_qwen2_shape(ns.work / "qwen2-0.5b-shape", vocab_size=151936, max_positions=32768, bf16=True)
    cpu = cpu_features()
    print(
        f"CPU: {cpu.model}; bf16: {cpu.bf16}; training precision: {precision}; checkpointing: {ns.checkpointing}"
    )
    common = ["--work", str(ns.work), "--model", str(model), "--precision", precision, "--seq", str(ns.seq)]
    common += ["--queries", str(ns.queries), "--group", str(ns.group), "--steps", str(ns.steps)]
    common += ["--checkpointing"] if ns.checkpointing else []
    rows = {}
    for name in ns.configs.split(","):
        rows[name] = r = _run_child(["--child", name, *common])
        print(name, json.dumps(r), flush=True)
    print()
    print("| load for training | weights in memory | VmHWM | peak RssAnon | seconds |")
    print("|---|---|---|---|---|")
    for name in ("load-fp32", "load-bf16"):
        if name in rows:
            r = rows[name]
            print(
                f"| {name[5:]} | {r['param_bytes'] / GIB:.2f} GiB | {r['load_hwm'] / GIB:.2f} GiB | "
                f"{r['anon_peak'] / GIB:.2f} GiB | {r['seconds']:.1f} |"
            )
    print()
    print("| one step | trainable / all params | RSS before the step | step peak (VmHWM) | seconds |")
    print("|---|---|---|---|---|")
    for name in ("lora", "full-bf16", "full"):
        if name in rows:
            r = rows[name]
            print(
                f"| {name} | {r['trainable'] / 1e6:.1f}M / {r['params'] / 1e6:.1f}M | "
                f"{r['rss_ready'] / GIB:.2f} GiB | {r['step_hwm'] / GIB:.2f} GiB | {r['seconds']:.1f} |"
            )
    if "lora" in rows:
        for name in ("full-bf16", "full"):
            if name in rows:
                ratio = rows["lora"]["step_hwm"] / rows[name]["step_hwm"]
                print(f"LoRA / {name} step peak: {ratio:.2f}")


if __name__ == "__main__":
    main()
