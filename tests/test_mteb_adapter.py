"""mteb evaluates a bgekit model through MtebEncoder, on a task defined here (no download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bgekit import Embedder
from bgekit.eval import MtebEncoder, RetrievalEvalConfig, evaluate_retrieval, load_beir
from tests.test_eval import DOCS, write_beir

mteb = pytest.importorskip("mteb")


def local_task(ds: Any) -> Any:
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="BgekitLocalRetrieval",
            description="A tiny retrieval task built in bgekit's tests.",
            reference="https://example.invalid/bgekit",
            dataset={"path": "NA", "revision": "NA"},
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=["test"],
            eval_langs=["eng-Latn"],
            main_score="ndcg_at_10",
            date=("2026-01-01", "2026-01-02"),
            domains=[],
            task_subtypes=[],
            license="cc-by-4.0",
            annotations_creators="derived",
            dialect=[],
            sample_creation="found",
            bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            split = RetrievalSplitData(
                queries=Dataset.from_list(
                    [{"id": q, "text": t} for q, t in zip(ds.query_ids, ds.queries, strict=True)]
                ),
                corpus=Dataset.from_list(
                    [{"id": d, "title": DOCS[d][0], "text": DOCS[d][1]} for d in ds.doc_ids]
                ),
                relevant_docs={q: dict(v) for q, v in ds.qrels.items()},
                top_ranked=None,
            )
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()


def test_mteb_scores_equal_bgekit_eval(tmp_path: Path, bge_named: Path) -> None:
    queries = {
        "qa": "pets at home",
        "qb": "stock market",
        "qc": "lexical and semantic search",
        "qd": "fast fox",
    }
    qrels = [("qa", "d1", 1), ("qb", "d2", 1), ("qc", "d3", 1), ("qc", "d6", 1), ("qd", "d4", 1)]
    ds = load_beir(write_beir(tmp_path / "local", queries, qrels))
    model = Embedder.from_pretrained(str(bge_named))  # a known name: it has a query instruction
    assert model.info.query_instruction
    ours = evaluate_retrieval(ds, model, RetrievalEvalConfig(progress=False))
    result = mteb.evaluate(MtebEncoder(model), local_task(ds), cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    assert scores["ndcg_at_10"] == pytest.approx(ours.metrics["ndcg@10"], abs=1e-4)
    assert scores["recall_at_10"] == pytest.approx(ours.metrics["recall@10"], abs=1e-4)


def test_mteb_task_lists_write_the_reference_summary_and_report(
    tmp_path: Path, bge_named: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgekit import InputError
    from bgekit.cli.main import main
    from bgekit.eval import evaluate_mteb, mteb_tasks

    queries = {"qa": "pets at home", "qb": "stock market", "qc": "fast fox"}
    qrels = [("qa", "d1", 1), ("qb", "d2", 1), ("qc", "d4", 1)]
    ds = load_beir(write_beir(tmp_path / "local", queries, qrels))
    model = Embedder.from_pretrained(str(bge_named))
    ours = evaluate_retrieval(ds, model, RetrievalEvalConfig(progress=False))
    out = tmp_path / "out"
    evaluate_mteb(model, [local_task(ds)], out)
    summary = json.loads((out / "summary.json").read_text())
    score = (
        100 * ours.metrics["ndcg@10"]
    )  # mteb's and bgekit's differ by ~1e-4 x 100: rounding to 2 places can split
    assert set(summary) == {"Retrieval", "Avg"} and set(summary["Retrieval"]) == {
        "BgekitLocalRetrieval",
        "Avg",
    }
    for value in (summary["Retrieval"]["BgekitLocalRetrieval"], summary["Retrieval"]["Avg"], summary["Avg"]):
        assert value == pytest.approx(score, abs=0.011)
    assert (out / "report.html").is_file() and "BgekitLocalRetrieval" in (out / "report.md").read_text()

    broken = local_task(ds)

    def no_data(*a: Any, **k: Any) -> None:
        raise ConnectionError("offline")

    broken.load_data = no_data  # type: ignore[method-assign]
    with pytest.raises(InputError, match=r"1 of 1 MTEB tasks did not run .*BgekitLocalRetrieval"):
        evaluate_mteb(model, [broken], tmp_path / "out2")
    # names: C-MTEB is mteb's MTEB(cmn, v1); errors name what is wrong, before any model loads
    assert {t.metadata.name for t in mteb_tasks("C-MTEB", task_types=["Retrieval"])} >= {
        "T2Retrieval",
        "DuRetrieval",
    }
    with pytest.raises(InputError, match="no benchmark 'C-MTEX'"):
        mteb_tasks("C-MTEX")
    assert main(["eval", "mteb", "--tasks", "NoSuchTask"]) == 2
    assert "NoSuchTask" in capsys.readouterr().err
