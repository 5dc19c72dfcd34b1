"""``bgekit index sync`` on a 5,000-file folder: unchanged, one file changed, one removed.

    python benchmarks/sync_time.py [--docs 5000] [--work DIR]

The folder: the first ``--docs`` SciFact abstracts as ``.txt`` files; the index: built from
it with the packaged all-MiniLM-L6-v2 (``bgekit index build``, timed too). Each sync is the
CLI in its own process, as a user runs it (Python start, model load, reading and hashing
every file, the save), wall time; the CLI's summary line says what was encoded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from encode_throughput import cpu_line  # noqa: E402


def run(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bgekit.cli.main", *args], capture_output=True, text=True, check=True
    )
    return time.perf_counter() - start, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--work", type=Path, default=None)
    ns = ap.parse_args()
    work = ns.work or Path(tempfile.mkdtemp(prefix="bgekit-sync-"))
    folder, index = work / "docs", work / "index"
    folder.mkdir(parents=True, exist_ok=True)
    for i, line in enumerate((ROOT / "data/scifact/corpus.jsonl").open()):
        if i == ns.docs:
            break
        d = json.loads(line)
        (folder / f"{d['_id']}.txt").write_text(f"{d['title']}\n\n{d['text']}")
    model, flags = cpu_line()
    print(f"cpu: {model}; flags: {', '.join(flags)}; {ns.docs} files\n")
    print("| step | wall seconds | summary |")
    print("|---|---|---|")
    steps = [("build", ["index", "build", str(folder), "--index", str(index), "--overwrite"])]
    steps.append(("sync, nothing changed", ["index", "sync", str(folder), "--index", str(index)]))
    for name, args in steps:
        seconds, summary = run(*args)
        print(f"| {name} | {seconds:.1f} | {summary} |", flush=True)
    files = sorted(folder.iterdir())
    files[0].write_text(files[0].read_text() + "\n\nAn added closing paragraph.")
    files[1].unlink()
    seconds, summary = run("index", "sync", str(folder), "--index", str(index))
    print(f"| sync, one file changed and one removed | {seconds:.1f} | {summary} |")
    seconds, summary = run("index", "info", str(index))
    print(f"| index info (no model) | {seconds:.1f} | {summary} |")


if __name__ == "__main__":
    main()
