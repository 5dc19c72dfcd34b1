from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from bgekit import Embedder, EngineConfig, InputError, Reranker
from bgekit.cli.main import main
from bgekit.eval import (
    RetrievalEvalConfig,
    StsDataset,
    compute_metrics,
    evaluate_retrieval,
    evaluate_sts,
    load_beir,
    load_sts,
)
from bgekit.retrieval import HybridConfig

ROOT = Path(__file__).resolve().parent.parent

DOCS = {
    "d1": ("Pets", "cats and dogs are popular pets in many homes"),
    "d2": ("", "the stock market fell sharply on monday"),
    "d3": ("Search", "hybrid search mixes lexical and semantic scores"),
    "d4": ("", "the quick brown fox jumps over the lazy dog"),
    "d5": ("BGE", "dense sparse and multi vector retrieval from one forward pass"),
    "d6": ("", "retrieval augmented generation needs good search"),
}


def write_beir(root: Path, queries: dict[str, str], qrels: list[tuple[str, str, int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as f:
        for did, (title, text) in DOCS.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in qrels)]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def exact_match_set(tmp_path: Path) -> Path:
    """Each query is exactly its relevant document's text: a correct dense search ranks it first."""
    queries = {f"q{d}": (f"{t} {x}".strip()) for d, (t, x) in DOCS.items() if d != "d6"}
    qrels = [(f"q{d}", d, 1) for d in DOCS if d != "d6"]
    return write_beir(tmp_path / "exact", queries, qrels)


def test_metrics_equal_pytrec_eval_and_hand_computation() -> None:
    qrels = {"q1": {"a": 1, "b": 0, "c": 2}, "q2": {"d": 1}, "q3": {"e": 1}}
    run = {
        "q1": {"b": 0.9, "a": 0.5, "x": 0.4, "c": 0.1},
        "q2": {f"z{i}": 1.0 - i / 100 for i in range(12)} | {"d": 0.005},  # relevant at rank 13
        # q3 retrieves nothing
    }
    ours = compute_metrics(qrels, run)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "map", "recip_rank"})
    theirs = ev.evaluate(run)
    assert ours["ndcg@10"] == pytest.approx((theirs["q1"]["ndcg_cut_10"] + theirs["q2"]["ndcg_cut_10"]) / 3)
    assert ours["map"] == pytest.approx((theirs["q1"]["map"] + theirs["q2"]["map"]) / 3)
    # by hand, with trec_eval's linear gains: q1 has gains 0,1,0,2 at ranks 1-4; ideal 2,1
    dcg = 1 / np.log2(3) + 2 / np.log2(5)
    idcg = 2 + 1 / np.log2(3)
    assert ours["ndcg@10"] == pytest.approx((dcg / idcg) / 3)
    assert ours["recall@10"] == pytest.approx((2 / 2 + 0) / 3)
    # MRR@10: q1 first relevant at rank 2; q2's is at rank 13, beyond the cut; q3 none
    assert ours["mrr@10"] == pytest.approx((1 / 2) / 3)
    assert theirs["q2"]["recip_rank"] == pytest.approx(1 / 13)  # uncut, pytrec_eval counts it


def test_exact_matches_rank_first_in_every_mode(exact_match_set: Path, bert_m3: Path) -> None:
    ds = load_beir(exact_match_set)
    assert ds.docs[0] == "Pets cats and dogs are popular pets in many homes" and ds.docs[1].startswith(
        "the stock"
    )
    model = Embedder.from_pretrained(str(bert_m3))
    for mode, hybrid in [
        ("dense", HybridConfig()),
        ("multivector", HybridConfig(candidates=None)),
        ("multivector", HybridConfig(candidates=2)),
        ("hybrid", HybridConfig(weights=(0.5, 0.0, 0.5))),
    ]:
        report = evaluate_retrieval(ds, model, RetrievalEvalConfig(mode=mode, hybrid=hybrid, progress=False))  # type: ignore[arg-type]
        assert report.metrics["ndcg@10"] == pytest.approx(1.0), mode
        assert report.metrics["mrr@10"] == pytest.approx(1.0)
    bm25 = evaluate_retrieval(ds, None, RetrievalEvalConfig(mode="bm25", progress=False))
    assert bm25.metrics["ndcg@1"] == pytest.approx(1.0)
    assert (bm25.num_queries, bm25.num_docs, bm25.model) == (5, 6, "bm25s")


def test_rerank_stage_reorders_top_n(
    exact_match_set: Path, bert_m3: Path, bert_reranker: Path, tmp_path: Path
) -> None:
    ds = load_beir(exact_match_set)
    model = Embedder.from_pretrained(str(bert_m3))
    rr = Reranker.from_pretrained(str(bert_reranker))
    run_file = tmp_path / "run.trec"
    report = evaluate_retrieval(
        ds, model, RetrievalEvalConfig(rerank_top=3, progress=False), reranker=rr, run_file=run_file
    )
    assert report.rerank is not None and report.rerank["top"] == 3
    lines = [ln.split() for ln in run_file.read_text().splitlines()]
    q0 = [ln for ln in lines if ln[0] == ds.query_ids[0]]
    assert [int(ln[3]) for ln in q0] == list(range(1, 7))
    top3 = [ln[2] for ln in q0[:3]]
    expected = rr.score([(ds.queries[0], ds.docs[ds.doc_ids.index(d)]) for d in top3])
    assert [float(ln[4]) for ln in q0[:3]] == pytest.approx(expected.tolist(), abs=1e-5)
    assert expected.tolist() == sorted(expected.tolist(), reverse=True)
    # the same documents as the first stage's top 3, so recall@10 is unchanged
    assert report.rerank["metrics"]["recall@10"] == report.metrics["recall@10"]


def test_encodings_are_cached(exact_match_set: Path, bert_m3: Path, tmp_path: Path) -> None:
    ds = load_beir(exact_match_set)
    model = Embedder.from_pretrained(str(bert_m3))
    cfg = RetrievalEvalConfig(cache_dir=tmp_path / "cache", progress=False)
    first = evaluate_retrieval(ds, model, cfg)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded again despite the cache")

    model.encode = refuse  # type: ignore[method-assign]
    again = evaluate_retrieval(ds, model, cfg)
    assert again.metrics == first.metrics


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "queries.jsonl").unlink(), r"missing file .*queries\.jsonl"),
        (lambda r: (r / "qrels" / "test.tsv").unlink(), r"missing file .*test\.tsv \(splits found: none\)"),
        (
            lambda r: (r / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": \n'),
            r"corpus\.jsonl:2: malformed JSON",
        ),
        (
            lambda r: (r / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nqd1\tnope\t1\n"),
            r"test\.tsv:2: corpus id 'nope' is not in corpus\.jsonl",
        ),
        (
            lambda r: (r / "qrels" / "test.tsv").write_text("qx\td1\t1\n"),
            r"test\.tsv:1: query id 'qx' is not in queries\.jsonl",
        ),
        (
            lambda r: (r / "corpus.jsonl").write_text(
                '{"_id": "d1", "text": "x"}\n{"_id": "d1", "text": "y"}\n'
            ),
            r"corpus\.jsonl:2: duplicate _id 'd1'",
        ),
    ],
)
def test_bad_datasets_name_file_and_line(exact_match_set: Path, damage: object, message: str) -> None:
    damage(exact_match_set)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        load_beir(exact_match_set)


def test_sts_against_independent_correlation(tmp_path: Path, bert_st_mean: Path) -> None:
    from scipy.stats import spearmanr

    rows = [
        ("cats", "dogs", 3.0),
        ("the fox", "the quick brown fox", 4.5),
        ("market fell", "cats and dogs", 0.5),
    ]
    f = tmp_path / "pairs.tsv"
    f.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    ds = load_sts(f)
    assert ds == StsDataset("pairs", [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    model = Embedder.from_pretrained(str(bert_st_mean))
    report = evaluate_sts(ds, model)
    a = model.encode([r[0] for r in rows]).dense
    b = model.encode([r[1] for r in rows]).dense
    assert a is not None and b is not None
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert report.metrics["spearman"] == pytest.approx(spearmanr(cos, [r[2] for r in rows]).statistic)
    f.write_text("only one column\n")
    with pytest.raises(InputError, match=r"pairs\.tsv:1: expected two sentences"):
        load_sts(f)


def test_cli_eval_retrieval_writes_report(
    exact_match_set: Path, bert_m3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    rc = main(
        [
            "eval",
            "retrieval",
            str(exact_match_set),
            "--model",
            str(bert_m3),
            "--mode",
            "hybrid",
            "--weights",
            "0.5,0,0.5",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("metrics", "model", "mode", "dataset", "split", "num_queries", "num_docs", "seconds"):
        assert key in report
    assert report["metrics"]["ndcg@10"] == pytest.approx(1.0) and report["mode"] == "hybrid"
    assert all(0.0 <= v <= 1.0 for v in report["metrics"].values())
    assert "| retrieval | 100.00" in capsys.readouterr().out
    rc = main(["eval", "retrieval", str(tmp_path / "nowhere"), "--mode", "bm25"])
    assert rc == 2 and "no dataset folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "retrieval", str(exact_match_set), "--weights", "1,2"])


# -- the real data shipped in the repo ------------------------------------------------------


def test_stsb_reproduces_published_minilm_score(minilm: Path) -> None:
    report = evaluate_sts(
        load_sts(ROOT / "data/stsbenchmark/sts-test.csv"), Embedder.from_pretrained(str(minilm))
    )
    assert report.num_pairs == 1379
    assert abs(100 * report.metrics["spearman"] - 82.03) <= 0.3


def test_bm25_on_scifact_is_in_the_published_range() -> None:
    ds = load_beir(ROOT / "data/scifact")
    assert (len(ds.query_ids), len(ds.doc_ids)) == (300, 5183)
    report = evaluate_retrieval(ds, None, RetrievalEvalConfig(mode="bm25", progress=False))
    assert 66.5 <= 100 * report.metrics["ndcg@10"] <= 68.7


@pytest.mark.slow
def test_scifact_reproduces_published_minilm_score(minilm: Path) -> None:
    model = Embedder.from_pretrained(str(minilm), engine=EngineConfig(device="cpu"))
    report = evaluate_retrieval(load_beir(ROOT / "data/scifact"), model, RetrievalEvalConfig(progress=False))
    assert abs(100 * report.metrics["ndcg@10"] - 64.51) <= 0.3


def test_a_corpus_with_empty_documents_evaluates(tmp_path: Path, bert_m3: Path) -> None:
    root = tmp_path / "beir"
    write_beir(root, {"q1": "cats and dogs"}, [("q1", "d1", 1)])
    with (root / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "empty", "title": "", "text": ""}) + "\n")
        f.write(json.dumps({"_id": "blank", "title": "", "text": "   "}) + "\n")
    data = load_beir(root)
    assert data.docs[-2:] == ["", ""]
    model = Embedder.from_pretrained(str(bert_m3))
    for mode in ("dense", "sparse", "multivector", "hybrid", "bm25"):
        report = evaluate_retrieval(data, model, RetrievalEvalConfig(mode=mode, progress=False))  # type: ignore[arg-type]
        assert report.num_docs == len(DOCS) + 2 and 0 <= report.metrics["ndcg@10"] <= 1, mode
