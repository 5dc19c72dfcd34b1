"""Several processes writing one index at once (issue 22): are acknowledged changes lost,
is the index left unloadable, do readers fail while writers save?

Each repetition builds a fresh index of ``--base`` documents, then starts ``--writers``
processes (and one reader that loads and searches the index in a loop) that each make
``--ops`` changes; a change counts as acknowledged when the call that saved it returned.
Modes:

- ``edit``: every change through ``Index.edit`` (the writer lock held from load to save):
  add, update one of the writer's own base documents, add, delete an earlier add, ...
- ``save``: each writer loads the index once and calls ``Index.save()`` after each add, as
  the issue's reproduction did; a save refused as stale (``IndexConflictError``) reloads and
  repeats the add. With ``--src`` pointing at an older bgekit's ``src`` folder, the same
  loop runs that code (there, nothing refuses a stale save).

    python benchmarks/concurrent_writers.py --mode edit --writers 4 --ops 10 --reps 20
    python benchmarks/concurrent_writers.py --mode save --writers 3 --ops 10 --reps 20 [--src OLD/src]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _setup(src: str | None) -> None:
    if src:
        sys.path.insert(0, src)


def _embedder(model: str, src: str | None) -> Any:
    _setup(src)
    logging.getLogger("bgekit").setLevel(logging.ERROR)  # not "waiting for PID ..." a hundred times
    from bgekit import Embedder, EngineConfig

    return Embedder.from_pretrained(model, engine=EngineConfig(dtype="float32", progress=False))


def _edit_writer(model: str, src: str | None, root: str, p: int, ops: int, start: Any, out: Any) -> None:
    emb = _embedder(model, src)
    from bgekit import Document, Index

    start.wait()
    done: list[tuple[str, str, str]] = []
    added: list[str] = []
    for j in range(ops):
        kind = ("add", "update", "add", "delete")[j % 4]
        try:
            with Index.edit(root, emb) as index:
                if kind == "add":
                    new = f"w{p}-{j}"
                    index.add([Document(new, f"added by writer {p} in step {j}")])
                    change = (kind, new, "")
                elif kind == "update":
                    text = f"updated by writer {p} in step {j}"
                    index.add([Document(f"b{p}", text)], update=True)
                    change = (kind, f"b{p}", text)
                else:
                    gone = added[0]
                    index.delete([gone])
                    change = (kind, gone, "")
            if kind == "add":
                added.append(change[1])
            elif kind == "delete":
                added.pop(0)
            done.append(change)
        except Exception as e:  # reported, not acknowledged
            done.append(("error", f"{type(e).__name__}: {e}", ""))
    out.put(done)


def _save_writer(model: str, src: str | None, root: str, p: int, ops: int, start: Any, out: Any) -> None:
    emb = _embedder(model, src)
    from bgekit import Document, Index

    try:
        from bgekit.index import IndexConflictError
    except ImportError:  # an older bgekit: nothing refuses a stale save

        class IndexConflictError(Exception):  # type: ignore[no-redef]
            pass

    start.wait()
    done: list[tuple[str, str, str]] = []
    conflicts = 0
    try:
        index = Index.load(root, emb)
        for j in range(ops):
            new = f"w{p}-{j}"
            while True:
                index.add([Document(new, f"saved by writer {p} in step {j}")])
                try:
                    index.save()
                    break
                except IndexConflictError:
                    conflicts += 1
                    index = Index.load(root, emb)
            done.append(("add", new, ""))
    except Exception as e:
        done.append(("error", f"{type(e).__name__}: {e}", ""))
    done.append(("conflicts", str(conflicts), ""))
    out.put(done)


def _reader(model: str, src: str | None, root: str, stop: Any, out: Any) -> None:
    emb = _embedder(model, src)
    from bgekit import Index

    loads, errors = 0, []
    while not stop.is_set():
        try:
            Index.load(root, emb).search(["document"], 3)
            loads += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e)[:200]}")
    out.put((loads, errors))


def _one(args: argparse.Namespace, work: Path, rep: int) -> dict[str, Any]:
    _setup(args.src)
    from bgekit import Document, Embedder, EngineConfig, Index

    root = work / f"idx-{rep}"
    shutil.rmtree(root, ignore_errors=True)
    emb = Embedder.from_pretrained(args.model, engine=EngineConfig(dtype="float32", progress=False))
    base = Index(emb)
    base.add([Document(f"b{i}", f"base document {i}") for i in range(args.base)])
    base.save(root)
    ctx = mp.get_context("spawn")
    start, stop, out, reads = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    target = _edit_writer if args.mode == "edit" else _save_writer
    writers = [
        ctx.Process(target=target, args=(args.model, args.src, str(root), p, args.ops, start, out))
        for p in range(args.writers)
    ]
    reader = ctx.Process(target=_reader, args=(args.model, args.src, str(root), stop, reads))
    for proc in [*writers, reader]:
        proc.start()
    t0 = time.perf_counter()
    start.set()
    logs = [out.get(timeout=1800) for _ in writers]
    seconds = time.perf_counter() - t0
    stop.set()
    loads, read_errors = reads.get(timeout=600)
    for proc in [*writers, reader]:
        proc.join(timeout=120)
    ids = {f"b{i}" for i in range(args.base)}
    texts: dict[str, str] = {}
    acked = errors = conflicts = 0
    for log in logs:
        for kind, key, text in log:
            if kind == "error":
                errors += 1
                print(f"  writer error: {key[:200]}", flush=True)
            elif kind == "conflicts":
                conflicts += int(key)
            else:
                acked += 1
                if kind == "add":
                    ids.add(key)
                elif kind == "delete":
                    ids.discard(key)
                else:
                    texts[key] = text
    try:
        final = Index.load(root, emb)
        have = dict(zip(final.ids() if hasattr(final, "ids") else [], final.chunk_texts(), strict=False))
        if not have:  # an older bgekit: no ids()
            have = {d.id: t for d, t in zip(final._docs, final.chunk_texts(), strict=True)}
        lost = len(ids - set(have)) + len(set(have) - ids)
        lost += sum(have.get(k) != v for k, v in texts.items())
        loadable = True
    except Exception as e:
        print(f"  unloadable: {type(e).__name__}: {str(e)[:200]}", flush=True)
        lost, loadable = acked, False
    left = sorted(p.name for p in root.iterdir()) if root.exists() else []
    return {
        "acked": acked,
        "lost": lost,
        "loadable": loadable,
        "errors": errors,
        "conflicts": conflicts,
        "reader_loads": loads,
        "reader_errors": len(read_errors),
        "reader_example": read_errors[0] if read_errors else "",
        "seconds": seconds,
        "left": left,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["edit", "save"], default="edit")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--ops", type=int, default=10)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--base", type=int, default=50)
    ap.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    ap.add_argument("--src", default=None, help="run another bgekit (its src folder)")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    if args.model is None:
        _setup(args.src)
        from bgekit.models.packaged import packaged_model_dir

        args.model = str(packaged_model_dir())
    work = Path(args.work or tempfile.mkdtemp(prefix="bgekit-writers-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"cpu: {_cpu()}; mode {args.mode}, {args.writers} writers x {args.ops} ops, {args.reps} reps",
        flush=True,
    )
    totals = {
        "acked": 0,
        "lost": 0,
        "unloadable": 0,
        "errors": 0,
        "conflicts": 0,
        "reader_loads": 0,
        "reader_errors": 0,
    }
    for rep in range(args.reps):
        r = _one(args, work, rep)
        totals["acked"] += r["acked"]
        totals["lost"] += r["lost"]
        totals["unloadable"] += not r["loadable"]
        for key in ("errors", "conflicts", "reader_loads", "reader_errors"):
            totals[key] += r[key]
        print(
            f"rep {rep + 1:>2}: acked {r['acked']}, lost {r['lost']}, loadable {r['loadable']}, "
            f"writer errors {r['errors']}, stale saves refused {r['conflicts']}, reader loads {r['reader_loads']} "
            f"(errors {r['reader_errors']}{': ' + r['reader_example'] if r['reader_example'] else ''}), "
            f"{r['seconds']:.1f}s, left {r['left']}",
            flush=True,
        )
    print("total: " + ", ".join(f"{k} {v}" for k, v in totals.items()), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} CPUs"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
