"""Benchmark suites in the reference's layout: loading, metrics against hand computations
(MKQA's answer matching included), the result files, resuming, the report, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bgekit import Embedder, InputError
from bgekit.cli.main import main
from bgekit.eval.suite_run import SuiteRunConfig, evaluate_suite
from bgekit.eval.suites import (
    SUITES,
    answer_recall,
    has_answer,
    load_subset,
    reference_metrics,
    without_excluded,
)

LANGS = {
    "sw": [
        "paka hulala juani",
        "mbwa hubweka usiku",
        "soko la hisa lilianguka",
        "jua linawaka",
        "mvua inanyesha",
    ],
    "yo": ["ologbo sun", "aja n gbo", "oja oja ti lo sile", "oorun n tan", "ojo n ro"],
}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def miracl_folder(root: Path) -> Path:
    for lang, texts in LANGS.items():
        base = root / lang
        _jsonl(
            base / "corpus.jsonl",
            [{"id": f"{lang}-d{i}", "title": f"T{i}", "text": t} for i, t in enumerate(texts)],
        )
        _jsonl(
            base / "dev_queries.jsonl",
            [{"id": f"{lang}-q{i}", "text": texts[i].split()[0]} for i in range(3)],
        )
        qrels = [{"qid": f"{lang}-q{i}", "docid": f"{lang}-d{i}", "relevance": 1} for i in range(3)]
        qrels.append({"qid": f"{lang}-q0", "docid": f"{lang}-d4", "relevance": 0})
        _jsonl(base / "dev_qrels.jsonl", qrels)
    return root


@pytest.fixture(scope="module")
def m3(bert_m3: Path) -> Embedder:
    return Embedder.from_pretrained(str(bert_m3))


def _ndcg(run: dict[str, float], rel: dict[str, int], k: int) -> float:
    ranked = [d for d, _ in sorted(run.items(), key=lambda kv: -kv[1])][:k]
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
    ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def test_metrics_by_hand() -> None:
    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"c": 2, "d": 1}, "q3": {"e": 1}}
    run = {"q1": {"b": 0.9, "a": 0.8, "x": 0.1}, "q2": {"d": 0.9, "x": 0.5, "c": 0.4}}  # q3 not searched
    got = reference_metrics(qrels, run, (1, 2, 10))
    # MRR: 1/2 (q1), 1/1 (q2), 0 (q3), over the 3 judged queries
    assert got["mrr_at_10"] == round((0.5 + 1.0) / 3, 5)
    assert got["mrr_at_1"] == round(1.0 / 3, 5)
    # capped recall at 2: q1 1/1, q2 1/2 (d only), q3 0 -> over 3
    assert got["recall_cap_at_2"] == round((1 + 0.5) / 3, 5)
    # nDCG@10 by pytrec_eval over the queries it scores (q3 has no run: pytrec leaves it out)
    want = (_ndcg(run["q1"], qrels["q1"], 10) + _ndcg(run["q2"], qrels["q2"], 10)) / 2
    assert got["ndcg_at_10"] == pytest.approx(round(want, 5), abs=1e-5)
    # BRIGHT: a document judged 0 (excluded) leaves the results before scoring
    assert without_excluded(run, qrels)["q1"] == {"a": 0.8, "x": 0.1}


def test_mkqa_answer_matching() -> None:
    assert has_answer(["U.S."], "The U.S. army marched")  # punctuation tokens kept, matched in order
    assert has_answer(["Café"], "a cafe\u0301 on the corner")  # NFD on both sides
    assert has_answer(["new york"], "NEW   York city")  # lower-cased, whitespace only separates
    assert not has_answer(["York"], "the New Yorker")  # whole tokens only
    assert not has_answer(["US"], "the U.S. army")  # "U.S." is four tokens, not "us"
    assert has_answer(["北京"], "首都是 北京 。")
    answers = {"q1": ["paris"], "q2": ["berlin"], "q3": ["rome"]}
    passages = {"a": "Paris is big", "b": "nothing here", "c": "Berlin wall", "d": "Rome"}
    run = {"q1": {"b": 0.9, "a": 0.8}, "q2": {"b": 0.5, "a": 0.4, "c": 0.3}, "q3": {}}
    got = answer_recall(answers, run, passages, (1, 2, 3))
    assert got == {"qa_recall_at_1": 0.0, "qa_recall_at_2": 1 / 3, "qa_recall_at_3": 2 / 3}


def test_miracl_run_files_resume_and_report(
    m3: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = miracl_folder(tmp_path / "miracl")
    out = tmp_path / "out"
    cfg = SuiteRunConfig(modes=("dense", "bm25"), k_values=(1, 10))
    result = evaluate_suite("miracl", data, m3, out, cfg)
    model = Path(m3.info.name).name
    for mode in ("dense", "bm25"):
        folder = out / mode / model / "NoReranker"
        evals = json.loads((folder / "EVAL" / "eval_results.json").read_text())
        assert sorted(evals) == ["sw-dev", "yo-dev"]
        for lang in LANGS:
            body = json.loads((folder / f"{lang}-dev.json").read_text())
            assert body["eval_name"] == "miracl" and body["dataset_name"] == lang and body["split"] == "dev"
            assert body["reranker_name"] == "NoReranker" and body["model_name"] == model
            run = body["search_results"]
            assert sorted(run) == [f"{lang}-q{i}" for i in range(3)]
            qrels = load_subset(SUITES["miracl"], data, lang, "dev").dataset.qrels
            want = sum(_ndcg(run[q], qrels[q], 10) for q in run) / len(run)
            assert evals[f"{lang}-dev"]["ndcg_at_10"] == pytest.approx(round(want, 5), abs=1e-5)
            assert result.scores[mode][lang] == evals[f"{lang}-dev"]
    # documents are "title text", as the reference joins them
    assert load_subset(SUITES["miracl"], data, "sw", "dev").dataset.docs[0] == "T0 paka hulala juani"
    for name in ("report.md", "report.html"):
        assert (out / name).is_file()
    page = (out / "report.html").read_text()
    assert "<table" in page and "<svg" in page and "sw" in page and "average" in page
    try:
        import matplotlib  # noqa: F401  (the report extra)
    except ImportError:
        assert not (out / "report.png").exists() and 'alt="the same chart' not in page
    else:
        assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 'src="report.png"' in page

    # run again: scored from the files on disk, nothing encoded
    def no_encoding(*a: object, **k: object) -> None:
        raise AssertionError("encoded again")

    monkeypatch.setattr(m3, "encode", no_encoding)
    again = evaluate_suite("miracl", data, m3, out, cfg)
    assert again.scores == result.scores


def test_mkqa_shared_corpus_and_answers(m3: Embedder, tmp_path: Path) -> None:
    root = tmp_path / "mkqa"
    _jsonl(
        root / "corpus.jsonl",
        [{"id": "n1", "title": "Paris", "text": "capital of France"}, {"id": "n2", "text": "Berlin"}],
    )
    for lang in ("en", "de"):
        _jsonl(
            root / lang / "test_queries.jsonl",
            [{"id": "1", "text": "capital of france"}, {"id": "2", "text": "berlin"}],
        )
        _jsonl(
            root / lang / "test_qrels.jsonl",
            [{"qid": "1", "answers": ["Paris"]}, {"qid": "2", "answers": ["Berlin"]}],
        )
    result = evaluate_suite(
        "mkqa", root, m3, tmp_path / "out", SuiteRunConfig(subsets=("en", "de"), k_values=(1, 2))
    )
    # two passages only: with k=2 every question finds its answer
    assert result.scores["dense"]["en"]["qa_recall_at_2"] == 1.0
    assert result.metric == "qa_recall_at_1"  # the suite's headline (at 20) was not computed


def test_missing_files_and_bad_choices_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bert_m3: Path
) -> None:
    with pytest.raises(
        InputError, match=r"mldr ar test: missing .*corpus.jsonl .* --download \(from hub Shitao/MLDR\)"
    ):
        load_subset(SUITES["mldr"], tmp_path, "ar", "test")
    with pytest.raises(InputError, match="has no subset 'xx'"):
        load_subset(SUITES["mldr"], tmp_path, "xx", "test")
    data = miracl_folder(tmp_path / "miracl")
    argv = ["eval", "miracl", str(data), "--model", str(bert_m3), "--subsets", "sw", "--modes", "dense,bm25"]
    assert main([*argv, "--output", str(tmp_path / "o"), "--k-values", "10"]) == 0
    out = capsys.readouterr().out
    assert "| sw |" in out and "dense" in out and "bm25" in out and "report.html" in out
    assert (
        main(["eval", "miracl", str(tmp_path / "none"), "--subsets", "sw", "--output", str(tmp_path / "o2")])
        == 2
    )
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1


def test_downloads_write_the_reference_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub records (stand-ins in the hub datasets' shapes) become the layout's files."""
    import zipfile

    from bgekit.eval import suite_download as dl

    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "topics.tsv").write_text("q1\twhat is a cat\nq2\tdogs\n")
    (hub / "qrels.tsv").write_text("q1\tQ0\td1\t1\nq1\tQ0\td2\t0\nq2\tQ0\td2\t1\n")
    with zipfile.ZipFile(hub / "mkqa.zip", "w") as z:
        z.writestr(
            "mkqa/en.jsonl",
            json.dumps({"id": 7, "question": "capital?", "answers": ["Paris", "paris, france"]}) + "\n",
        )
    records = {
        ("miracl/miracl-corpus", "sw"): [
            {"docid": "d1", "title": "Paka", "text": "cat"},
            {"docid": "d2", "title": "", "text": "dog"},
        ],
        ("Shitao/MLDR", "corpus-en"): [{"docid": "m1", "text": "long doc"}, {"docid": "m2", "text": "other"}],
        ("Shitao/MLDR", "en"): [
            {
                "query_id": "x",
                "query": "q",
                "positive_passages": [{"docid": "m1"}],
                "negative_passages": [{"docid": "m2"}],
            }
        ],
        ("xlangai/bright", "documents"): [
            {"id": "b1", "content": "gold"},
            {"id": "b2", "content": "excluded"},
        ],
        ("xlangai/bright", "examples"): [
            {"id": "0", "query": "why", "gold_ids": ["b1"], "excluded_ids": ["b2", "N/A"]}
        ],
        ("BeIR/nq", "corpus"): [
            {
                "_id": "n1",
                "title": "Paris",
                "text": "The capital \u2014 of France\u2019s \u201cstate\u201d\u2026",
            }
        ],
    }
    files = {"topics": hub / "topics.tsv", "qrels": hub / "qrels.tsv", "MKQA": hub / "mkqa.zip"}
    monkeypatch.setattr(dl, "_load", lambda repo, config=None, split=None: records[(repo, config)])
    monkeypatch.setattr(dl, "_hub_file", lambda repo, name: next(p for k, p in files.items() if k in name))
    data = tmp_path / "data"
    for name, subset, split in (
        ("miracl", "sw", "dev"),
        ("mldr", "en", "test"),
        ("bright", "biology", "examples"),
        ("mkqa", "en", "test"),
    ):
        dl.download(SUITES[name], data / name, subset, split)
        loaded = load_subset(SUITES[name], data / name, subset, split)
        assert loaded.dataset.query_ids, name
    assert load_subset(SUITES["miracl"], data / "miracl", "sw", "dev").dataset.qrels == {
        "q1": {"d1": 1, "d2": 0},
        "q2": {"d2": 1},
    }
    assert load_subset(SUITES["mldr"], data / "mldr", "en", "test").dataset.qrels == {"x": {"m1": 1, "m2": 0}}
    bright = load_subset(SUITES["bright"], data / "bright", "biology", "examples").dataset
    assert bright.query_ids == ["examples-0"] and bright.qrels == {"examples-0": {"b1": 1, "b2": 0}}
    mkqa = load_subset(SUITES["mkqa"], data / "mkqa", "en", "test")
    assert mkqa.answers == {"7": ["Paris", "paris, france"]}
    assert mkqa.dataset.docs == ['paris the capital - of france\'s "state"...']  # normalised, lower-cased

    def offline(*a: object, **k: object) -> None:
        raise InputError("cannot fetch Shitao/MLDR (ConnectionError: offline)")

    monkeypatch.setattr(dl, "_load", offline)
    with pytest.raises(InputError, match="cannot fetch Shitao/MLDR"):
        dl.download(SUITES["mldr"], data / "mldr", "de", "test")


def test_large_corpora_can_be_held_quantised(
    m3: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bgekit.retrieval import dense_store

    built: list[str] = []
    real = dense_store.DenseStore.build.__func__  # type: ignore[attr-defined]

    def spy(cls, vectors, dtype="float32", **kw):  # type: ignore[no-untyped-def]
        built.append(dtype)
        return real(cls, vectors, dtype, **kw)

    monkeypatch.setattr(dense_store.DenseStore, "build", classmethod(spy))
    data = miracl_folder(tmp_path / "miracl")
    full = evaluate_suite("miracl", data, m3, tmp_path / "f", SuiteRunConfig(subsets=("sw",)))
    small = evaluate_suite(
        "miracl", data, m3, tmp_path / "b", SuiteRunConfig(subsets=("sw",), dense_dtype="binary")
    )
    assert "binary" in built and "float32" in built
    assert set(small.scores["dense"]["sw"]) == set(full.scores["dense"]["sw"])
    with pytest.raises(InputError, match="dense_dtype"):
        SuiteRunConfig(dense_dtype="int4")  # type: ignore[arg-type]


def test_air_bench_layout_results_and_download(
    m3: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgekit.eval import suite_download as dl

    records = {
        ("AIR-Bench/qa_wiki_en", "corpus_default"): [
            {"id": f"w{i}", "text": t} for i, t in enumerate(LANGS["sw"])
        ],
        ("AIR-Bench/qa_wiki_en", "queries_default_dev"): [
            {"id": "q1", "text": "paka"},
            {"id": "q2", "text": "mbwa"},
        ],
        ("AIR-Bench/qrels-qa_wiki_en-dev", "qrels_default_dev"): [
            {"qid": "q1", "docid": "w0", "relevance": 1},
            {"qid": "q2", "docid": "w1", "relevance": 1},
        ],
    }
    monkeypatch.setattr(dl, "_load", lambda repo, config=None, split=None: records[(repo, split)])
    data = tmp_path / "air"
    with pytest.raises(InputError, match="test qrels are private"):
        dl.download(SUITES["airbench"], data, "qa/wiki/en/default", "test")
    result = evaluate_suite(
        "air-bench",
        data,
        m3,
        tmp_path / "out",
        SuiteRunConfig(subsets=("qa/wiki/en/default",), download=True),
    )
    model = Path(m3.info.name).name
    body = json.loads(
        (
            tmp_path / "out" / "dense" / model / "NoReranker" / "qa" / "wiki" / "en_default_dev.json"
        ).read_text()
    )
    assert (body["task_type"], body["domain"], body["language"], body["dataset_name"], body["split"]) == (
        "qa", "wiki", "en", "default", "dev",
    )  # fmt: skip
    assert body["benchmark_version"] == "AIR-Bench_24.05" and sorted(body["search_results"]) == ["q1", "q2"]
    assert "ndcg_at_50" in result.scores["dense"]["qa/wiki/en/default"]
    # the local copy is used from then on (no download): the CLI by its reference name
    monkeypatch.setattr(dl, "_load", lambda *a, **k: pytest.fail("downloaded again"))
    assert (
        main(["eval", "air-bench", str(data), "--model", str(m3.info.path), "--output", str(tmp_path / "o2")])
        == 0
    )
    assert "qa/wiki/en/default" in capsys.readouterr().out


def _write_many(folder: str, who: int, n: int) -> None:
    from bgekit.eval.suites import write_eval_results

    for i in range(n):
        write_eval_results(Path(folder), {f"p{who}-{i}-dev": {"ndcg_at_10": who + i / 100}})


def test_eval_results_from_several_processes_at_once_all_land(tmp_path: Path) -> None:
    """Runs of different subsets into the same output merge EVAL/eval_results.json under a
    lock: every entry any of them wrote is there."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    got = json.loads((tmp_path / "EVAL" / "eval_results.json").read_text())
    assert set(got) == {f"p{w}-{i}-dev" for w in range(4) for i in range(15)}
