"""bgekit's suite metrics against the reference evaluator's, on the same search results.

    python benchmarks/suite_parity.py --work DIR --peers-python PY [--flagembedding-src SRC]

Data: SciFact in the reference's MIRACL layout (one subset ``en``: the corpus, the test
queries and qrels) and in its MKQA layout (the same corpus; each test query's "answers" are
the first three words of the titles of its relevant abstracts). bgekit runs ``evaluate_suite``
with the packaged all-MiniLM-L6-v2 (dense and BM25) and writes the reference's search-result
files; then ``--peers-python`` (an environment with FlagEmbedding and pytrec_eval) scores those
same files with FlagEmbedding's ``AbsEvaluator.compute_metrics`` and ``MKQAEvaluator.compute_metrics``
(the PyPI wheel lacks ``evaluation/mkqa/utils``: give a source checkout with
``--flagembedding-src``). Every metric key is compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

K_VALUES = (1, 3, 5, 10, 100, 1000)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build(work: Path) -> tuple[Path, Path]:
    corpus = [json.loads(x) for x in (ROOT / "data/scifact/corpus.jsonl").open()]
    queries = {
        json.loads(x)["_id"]: json.loads(x)["text"] for x in (ROOT / "data/scifact/queries.jsonl").open()
    }
    qrels: dict[str, list[str]] = {}
    for line in (ROOT / "data/scifact/qrels/test.tsv").open():
        q, d, r = line.rstrip("\n").split("\t")
        if q != "query-id" and int(r) > 0:
            qrels.setdefault(q, []).append(d)
    rows = [{"id": d["_id"], "title": d.get("title", ""), "text": d["text"]} for d in corpus]
    miracl, mkqa = work / "miracl", work / "mkqa"
    _jsonl(miracl / "en" / "corpus.jsonl", rows)
    _jsonl(miracl / "en" / "dev_queries.jsonl", [{"id": q, "text": queries[q]} for q in qrels])
    _jsonl(
        miracl / "en" / "dev_qrels.jsonl",
        [{"qid": q, "docid": d, "relevance": 1} for q, ds in qrels.items() for d in ds],
    )
    titles = {d["_id"]: d.get("title", "") for d in corpus}
    _jsonl(mkqa / "corpus.jsonl", rows)
    _jsonl(mkqa / "en" / "test_queries.jsonl", [{"id": q, "text": queries[q]} for q in qrels])
    _jsonl(
        mkqa / "en" / "test_qrels.jsonl",
        [{"qid": q, "answers": [" ".join(titles[d].split()[:3]) for d in ds]} for q, ds in qrels.items()],
    )
    return miracl, mkqa


REFERENCE = r"""
import json, sys
sys.path.insert(0, sys.argv[2]) if sys.argv[2] else None
from FlagEmbedding.abc.evaluation import AbsEvaluator
args = json.loads(open(sys.argv[1]).read())
out = {}
for name, job in args.items():
    results = json.loads(open(job["results"]).read())["search_results"]
    ks = job["k_values"]
    if job["kind"] == "qrels":
        out[name] = AbsEvaluator.compute_metrics(job["qrels"], results, ks)
    else:
        from FlagEmbedding.evaluation.mkqa.evaluator import MKQAEvaluator
        out[name] = MKQAEvaluator.compute_metrics(job["corpus"], job["answers"], results, ks)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--peers-python", required=True)
    ap.add_argument("--flagembedding-src", default="")
    ns = ap.parse_args()
    from bgekit import Embedder, EngineConfig
    from bgekit.eval.suite_run import SuiteRunConfig, evaluate_suite, model_name
    from bgekit.eval.suites import SUITES, load_subset
    from bgekit.models.packaged import packaged_model_dir

    miracl, mkqa = build(ns.work)
    embedder = Embedder.from_pretrained(str(packaged_model_dir()), engine=EngineConfig(progress=False))
    model = model_name(embedder)
    jobs, ours = {}, {}
    for suite_name, data, split in (("miracl", miracl, "dev"), ("mkqa", mkqa, "test")):
        out = ns.work / f"out-{suite_name}"
        result = evaluate_suite(
            suite_name,
            data,
            embedder,
            out,
            SuiteRunConfig(modes=("dense", "bm25"), k_values=K_VALUES, overwrite=True),
        )
        loaded = load_subset(SUITES[suite_name], data, "en", split)
        for mode in ("dense", "bm25"):
            name = f"{suite_name}-{mode}"
            ours[name] = result.scores[mode]["en"]
            job: dict = {
                "results": str(out / mode / model / "NoReranker" / f"en-{split}.json"),
                "k_values": list(K_VALUES),
            }
            if loaded.answers is None:
                job |= {"kind": "qrels", "qrels": loaded.dataset.qrels}
            else:
                corpus = dict(zip(loaded.dataset.doc_ids, loaded.dataset.docs, strict=True))
                job |= {"kind": "answers", "answers": loaded.answers, "corpus": corpus}
            jobs[name] = job
    (ns.work / "jobs.json").write_text(json.dumps(jobs))
    script = ns.work / "reference_metrics.py"
    script.write_text(REFERENCE)
    proc = subprocess.run(
        [ns.peers_python, str(script), str(ns.work / "jobs.json"), ns.flagembedding_src],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        "| run | metrics compared | equal | largest difference | nDCG@10 or qa_recall@10 (bgekit / reference) |"
    )
    print("|---|---|---|---|---|")
    for name in jobs:
        a, b = ours[name], theirs[name]
        keys = sorted(set(a) | set(b))
        diffs = [abs(a[k] - b[k]) for k in keys if k in a and k in b]
        missing = [k for k in keys if k not in a or k not in b]
        head = "ndcg_at_10" if "ndcg_at_10" in a else "qa_recall_at_10"
        print(
            f"| {name} | {len(keys)} | {sum(d == 0 for d in diffs)} of {len(diffs)}{'; missing ' + ','.join(missing) if missing else ''} "
            f"| {max(diffs):.2e} | {a[head]:.5f} / {b[head]:.5f} |"
        )


if __name__ == "__main__":
    main()
