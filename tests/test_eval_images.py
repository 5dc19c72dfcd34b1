"""Retrieval evaluation on BEIR-layout data with images (issue 24): image queries over text
documents, text queries over image documents, image + text queries over image documents,
each checked against an independent computation (the library's Embedder, numpy ranking,
nDCG / recall / MRR by hand); bad datasets, models and modes refused in one line before
anything is encoded; the encoding cache told apart by the image files."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

from bgekit import Embedder, EngineConfig, InputError, Reranker
from bgekit.cli.main import main
from bgekit.eval import RetrievalEvalConfig, evaluate_retrieval, load_beir
from bgekit.images import Composed, ImageInput, Item
from bgekit.models.settings import EmbedderSettings
from tests.tiny_clip import build_clip
from tests.tiny_visualized import TinyVisualized, build_visualized

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)
Record = dict[str, Any]

# name -> (pixels, format, caption)
PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str, str]] = {
    "astronaut": (photos.astronaut, "jpeg", "a photo of an astronaut in a white space suit"),
    "coffee": (photos.coffee, "png", "a cup of coffee on a wooden table"),
    "chelsea": (photos.chelsea, "jpeg", "a cat sitting on a chair looking at the camera"),
    "rocket": (photos.rocket, "png", "a rocket on the launch pad at night"),
    "camera": (photos.camera, "png", "a man with a camera on a tripod"),
    "cells": (photos.immunohistochemistry, "jpeg", "stained cells under a microscope"),
    "wheel": (photos.colorwheel, "png", "a wheel of colours"),
    "coins": (photos.coins, "jpeg", "old coins on a table"),
}
# Extra image documents: flipped and cropped copies, judged less relevant than the original.
EXTRAS = {
    "astronaut-flip": ("astronaut", lambda a: a[:, ::-1], "png"),
    "coffee-crop": ("coffee", lambda a: a[50:350, 100:500], "jpeg"),
    "chelsea-flip": ("chelsea", lambda a: a[::-1], "png"),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name, (pixels, fmt, _) in PHOTOS.items():
        Image.fromarray(pixels()).save(root / f"{name}.{'jpg' if fmt == 'jpeg' else fmt}", format=fmt)
    for name, (source, change, fmt) in EXTRAS.items():
        changed = np.ascontiguousarray(change(PHOTOS[source][0]()))
        Image.fromarray(changed).save(root / f"{name}.{'jpg' if fmt == 'jpeg' else fmt}", format=fmt)
    return root


def image_file(images: Path, name: str) -> Path:
    return next(images.glob(f"{name}.*"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder.from_pretrained(
        str(build_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")), engine=FP32
    )


@pytest.fixture(scope="module")
def tiny_vis(tmp_path_factory: pytest.TempPathFactory) -> TinyVisualized:
    return build_visualized(tmp_path_factory.mktemp("visualized") / "bert", "bert", seed=3)


@pytest.fixture(scope="module")
def visualized(tiny_vis: TinyVisualized) -> Embedder:
    settings = EmbedderSettings(text_model=str(tiny_vis.text_dir))
    return Embedder.from_pretrained(str(tiny_vis.checkpoint), settings=settings, engine=FP32)


def write_set(
    root: Path, corpus: list[Record], queries: list[Record], qrels: list[tuple[str, str, int]]
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in qrels)]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def rel(images: Path, root: Path, name: str) -> str:
    """An image's path as a record names it: relative to the dataset folder."""
    return os.path.relpath(image_file(images, name), root)


def image_queries_text_docs(images: Path, root: Path) -> Path:
    corpus = [{"_id": f"d-{n}", "title": "", "text": caption} for n, (_, _, caption) in PHOTOS.items()]
    corpus.append({"_id": "d-other", "text": "the stock market fell sharply on monday"})
    queries = [{"_id": f"q-{n}", "image": rel(images, root, n)} for n in PHOTOS]
    qrels = [(f"q-{n}", f"d-{n}", 1) for n in PHOTOS] + [
        ("q-rocket", "d-astronaut", 2),
        ("q-coins", "d-other", 0),
    ]
    return write_set(root, corpus, queries, qrels)


def text_queries_image_docs(images: Path, root: Path) -> Path:
    corpus: list[Record] = []
    for i, (n, (_, _, caption)) in enumerate(PHOTOS.items()):
        doc: Record = {"_id": f"d-{n}", "image": rel(images, root, n)}
        if i % 3 == 0:  # some image documents carry a caption, encoded with the image
            doc |= {"title": n.title(), "text": caption}
        corpus.append(doc)
    # an absolute path, and a text document among the images
    corpus += [{"_id": f"d-{n}", "image": str(image_file(images, n))} for n in EXTRAS]
    corpus.append({"_id": "d-text", "title": "Coins", "text": "a handful of coins"})
    queries = [{"_id": f"q-{n}", "text": caption} for n, (_, _, caption) in PHOTOS.items()]
    qrels = [(f"q-{n}", f"d-{n}", 2) for n in PHOTOS]
    qrels += [(f"q-{src}", f"d-{n}", 1) for n, (src, _, _) in EXTRAS.items()] + [("q-coins", "d-text", 1)]
    return write_set(root, corpus, queries, qrels)


def composed_queries_image_docs(images: Path, root: Path) -> Path:
    corpus = [{"_id": f"d-{n}", "image": rel(images, root, n)} for n in [*PHOTOS, *EXTRAS]]
    edits = {"astronaut": "the same, mirrored", "coffee": "closer to the cup", "chelsea": "upside down"}
    queries = [
        {"_id": f"q-{src}", "image": rel(images, root, src), "text": edits[src]}
        for src, _, _ in EXTRAS.values()
    ]
    queries.append(
        {"_id": "q-rocket", "image": rel(images, root, "rocket"), "text": "  "}
    )  # whitespace: image alone
    qrels = [(f"q-{src}", f"d-{n}", 2) for n, (src, _, _) in EXTRAS.items()]
    qrels += [(f"q-{src}", f"d-{src}", 1) for src, _, _ in EXTRAS.values()] + [("q-rocket", "d-rocket", 1)]
    return write_set(root, corpus, queries, qrels)


LAYOUTS = {
    "image queries, text documents": image_queries_text_docs,
    "text queries, image documents": text_queries_image_docs,
    "image + text queries, image documents": composed_queries_image_docs,
}


def item_of(record: Record, root: Path, *, document: bool) -> Item:
    """What the record means, built here from the file (not by the library's reader)."""
    text = record.get("text", "")
    if document and record.get("title"):
        text = f"{record['title']} {text}"
    if "image" not in record:
        return text.strip() if document else text
    image = ImageInput(path=str((root / record["image"]).resolve()))
    return Composed(text.strip(), image) if text.strip() else image


def reference_metrics(root: Path, model: Embedder) -> dict[str, float]:
    """nDCG@{1,3,10} (trec_eval's linear gains), Recall@10 and MRR@10 of a dense search,
    by hand."""
    corpus = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    queries = {r["_id"]: r for r in map(json.loads, (root / "queries.jsonl").read_text().splitlines())}
    qrels: dict[str, dict[str, int]] = {}
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    qids = list(qrels)
    d_vec = model.encode_corpus([item_of(r, root, document=True) for r in corpus]).dense
    q_vec = model.encode_queries([item_of(queries[q], root, document=False) for q in qids]).dense
    assert d_vec is not None and q_vec is not None
    scores = q_vec @ d_vec.T
    out: dict[str, list[float]] = {"ndcg@1": [], "ndcg@3": [], "ndcg@10": [], "recall@10": [], "mrr@10": []}
    for qi, q in enumerate(qids):
        ranked = [corpus[j]["_id"] for j in np.argsort(-scores[qi], kind="stable")]
        gains = qrels[q]
        for k in (1, 3, 10):
            dcg = sum(gains.get(d, 0) / np.log2(i + 2) for i, d in enumerate(ranked[:k]))
            ideal = sorted((g for g in gains.values() if g > 0), reverse=True)[:k]
            out[f"ndcg@{k}"].append(dcg / sum(g / np.log2(i + 2) for i, g in enumerate(ideal)))
        relevant = {d for d, g in gains.items() if g > 0}
        out["recall@10"].append(len(relevant & set(ranked[:10])) / len(relevant))
        first = next((i for i, d in enumerate(ranked[:10]) if d in relevant), None)
        out["mrr@10"].append(0.0 if first is None else 1 / (first + 1))
    return {name: float(np.mean(v)) for name, v in out.items()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("model_name", ["clip", "visualized"])
def test_metrics_equal_an_independent_computation(
    layout: str, model_name: str, images: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model: Embedder = request.getfixturevalue(model_name)
    root = LAYOUTS[layout](images, tmp_path / "set")
    report = evaluate_retrieval(load_beir(root), model, RetrievalEvalConfig(progress=False))
    expected = reference_metrics(root, model)
    for name, value in expected.items():
        assert report.metrics[name] == pytest.approx(value, abs=1e-6), name
    assert report.num_docs == len((root / "corpus.jsonl").read_text().splitlines())


def test_an_image_dataset_is_read_without_decoding_an_image(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = text_queries_image_docs(images, tmp_path / "set")
    monkeypatch.chdir(images)  # relative paths come from the dataset folder, not the working one

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was opened while reading the dataset")

    monkeypatch.setattr(Image, "open", refuse)
    ds = load_beir(root)
    assert ds.has_images and ds.modalities == {"text", "image", "text+image"}
    items = dict(zip(ds.doc_ids, ds.doc_items(), strict=True))
    assert isinstance(items["d-coffee"], ImageInput) and items["d-coffee"].path == str(
        image_file(images, "coffee")
    )
    assert isinstance(items["d-astronaut"], Composed)
    assert items["d-astronaut"].text == "Astronaut " + PHOTOS["astronaut"][2]
    assert items["d-text"] == "Coins a handful of coins"
    assert ds.query_items() == ds.queries  # text queries stay texts


def test_a_text_dataset_keeps_its_fingerprint(tmp_path: Path) -> None:
    root = write_set(
        tmp_path / "t", [{"_id": "d", "text": "x"}], [{"_id": "q", "text": "y"}], [("q", "d", 1)]
    )
    blob = b"".join((root / f).read_bytes() for f in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"))
    ds = load_beir(root)
    assert ds.fingerprint == hashlib.sha256(blob).hexdigest()[:16]  # caches made before images stay valid
    assert not ds.has_images and ds.doc_images is None and ds.doc_items() == ["x"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"_id": "d-new", "image": "nope.jpg"},
            r"corpus\.jsonl:13: image 'nope\.jpg' of 'd-new': no such file: .*nope\.jpg "
            r"\(\"image\" paths are relative to .*set\)$",
        ),
        (
            {"_id": "d-new", "image": "/no/such/dir/x.png"},
            r"corpus\.jsonl:13: .*no such file: /no/such/dir/x\.png$",
        ),
        ({"_id": "d-new", "image": "."}, r"corpus\.jsonl:13: image '\.' of 'd-new' is not a file"),
        ({"_id": "d-new", "image": 5}, r'corpus\.jsonl:13: "image" must be a file path'),
        ({"_id": "d-new", "image": " "}, r'corpus\.jsonl:13: "image" must be a file path'),
        ({"_id": "d-new", "image": "x.png", "text": 3}, r'corpus\.jsonl:13: expected .*"text" string'),
        (
            {"_id": "d-new", "title": "no text, no image"},
            r'corpus\.jsonl:13: expected .*\(or an "image" path\)',
        ),
    ],
)
def test_bad_document_images_name_the_file_and_record(
    images: Path, tmp_path: Path, record: Record, message: str
) -> None:
    root = text_queries_image_docs(images, tmp_path / "set")
    with (root / "corpus.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    with pytest.raises(InputError, match=message):
        load_beir(root)


def test_a_path_relative_to_the_wrong_folder_is_refused_with_a_hint(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = image_queries_text_docs(images, tmp_path / "set")
    # written relative to the photos' parent folder, where the command is run from
    wrong = f"{images.name}/{image_file(images, 'astronaut').name}"
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q-astronaut", "image": wrong}) + "\n")
    (root / "qrels" / "test.tsv").write_text("q-astronaut\td-astronaut\t1\n")
    monkeypatch.chdir(images.parent)
    assert Path(wrong).is_file()  # right from the working folder, wrong from the dataset's
    with pytest.raises(
        InputError,
        match=rf"queries\.jsonl:1: image '{wrong}' of 'q-astronaut': no such file: "
        rf"{root}/{wrong} \(\"image\" paths are relative to {root}\)$",
    ):
        load_beir(root)


def test_only_the_splits_query_images_must_exist(images: Path, tmp_path: Path) -> None:
    root = image_queries_text_docs(images, tmp_path / "set")
    with (root / "queries.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "q-unjudged", "image": "gone.png"}) + "\n")
    assert "q-unjudged" not in load_beir(root).query_ids
    (root / "qrels" / "test.tsv").write_text("q-unjudged\td-coffee\t1\n")
    with pytest.raises(
        InputError, match=r"queries\.jsonl:9: image 'gone\.png' of 'q-unjudged': no such file"
    ):
        load_beir(root)


def test_a_corrupt_image_is_named_before_the_corpus_is_encoded(
    images: Path, tmp_path: Path, clip: Embedder
) -> None:
    shots = tmp_path / "photos"
    shots.mkdir()
    for p in images.iterdir():
        (shots / p.name).write_bytes(p.read_bytes())
    root = text_queries_image_docs(shots, tmp_path / "set")
    image_file(shots, "coffee").write_bytes(b"not a picture at all")
    ds = load_beir(root)  # the file is there; what it holds is read when encoded
    ran: list[int] = []
    model = copy.copy(clip)
    encode_tokens = clip.encode_tokens

    def counting(*args: Any, **kwargs: Any) -> Any:
        ran.append(len(args[0]))
        return encode_tokens(*args, **kwargs)

    model.encode_tokens = counting  # type: ignore[method-assign]
    with pytest.raises(
        InputError, match=r"^.*coffee\.png \(document 'd-coffee'\): not an image Pillow can read$"
    ):
        evaluate_retrieval(ds, model, RetrievalEvalConfig(progress=False))
    assert ran == [8]  # the 8 queries ran; the corpus failed at its header check, before any encoding


def never(*args: object, **kwargs: object) -> None:
    raise AssertionError("encoded although the evaluation was refused")


def test_a_text_model_is_refused_before_encoding(
    images: Path, tmp_path: Path, minilm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = text_queries_image_docs(images, tmp_path / "set")
    model = Embedder.from_pretrained(str(minilm), engine=FP32)
    model.encode = never  # type: ignore[method-assign]
    with pytest.raises(
        InputError, match=r"^set holds images, but .* reads text only; evaluate it with an image model"
    ):
        evaluate_retrieval(load_beir(root), model, RetrievalEvalConfig(progress=False))
    rc = main(["eval", "retrieval", str(root), "--model", str(minilm), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "reads text only" in err and len(err.splitlines()) == 1


def test_text_scorers_and_rerankers_are_refused_on_images(
    images: Path, tmp_path: Path, clip: Embedder, bert_reranker: Path
) -> None:
    ds = load_beir(text_queries_image_docs(images, tmp_path / "set"))
    for mode in ("hybrid", "sparse", "multivector"):
        with pytest.raises(InputError, match=rf"holds images: evaluate it in dense mode \(the {mode} mode"):
            evaluate_retrieval(ds, clip, RetrievalEvalConfig(mode=mode, progress=False))
    with pytest.raises(InputError, match=r"the bm25 mode scores text tokens"):
        evaluate_retrieval(ds, None, RetrievalEvalConfig(mode="bm25", progress=False))
    reranker = Reranker.from_pretrained(str(bert_reranker))
    with pytest.raises(InputError, match=r"a reranker reads text, and set holds images"):
        evaluate_retrieval(ds, clip, RetrievalEvalConfig(progress=False), reranker=reranker)


def test_a_model_without_composed_inputs_is_refused(images: Path, tmp_path: Path, clip: Embedder) -> None:
    ds = load_beir(composed_queries_image_docs(images, tmp_path / "set"))
    images_only = copy.copy(clip)
    images_only.info = dataclasses.replace(clip.info, modalities=("text", "image"))
    images_only.encode = never  # type: ignore[method-assign]
    with pytest.raises(InputError, match=r"holds image \+ text \(composed\) inputs, which .* does not take"):
        evaluate_retrieval(ds, images_only, RetrievalEvalConfig(progress=False))


def test_the_cache_follows_the_image_files(images: Path, tmp_path: Path, clip: Embedder) -> None:
    shots = tmp_path / "photos"
    shots.mkdir()
    for p in images.iterdir():
        (shots / p.name).write_bytes(p.read_bytes())
    root = text_queries_image_docs(shots, tmp_path / "set")
    calls: list[int] = []
    counted = copy_with_counter(clip, calls)
    cfg = RetrievalEvalConfig(cache_dir=tmp_path / "cache", progress=False)

    first = evaluate_retrieval(load_beir(root), counted, cfg)
    assert len(calls) == 2
    again = evaluate_retrieval(load_beir(root), counted, cfg)
    assert len(calls) == 2 and again.metrics == first.metrics  # nothing changed: both sides cached

    # the same path, another picture: encoded again, and the metrics are the new picture's
    target = image_file(shots, "coffee")
    Image.open(image_file(shots, "wheel")).save(target, format="PNG")
    changed = evaluate_retrieval(load_beir(root), counted, cfg)
    assert len(calls) == 4
    assert changed.metrics["ndcg@10"] == pytest.approx(reference_metrics(root, clip)["ndcg@10"], abs=1e-6)
    assert changed.metrics != first.metrics

    # a file rewritten in place keeps its size; its modification time tells it apart
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    evaluate_retrieval(load_beir(root), counted, cfg)
    assert len(calls) == 6


def copy_with_counter(model: Embedder, calls: list[int]) -> Embedder:
    other = copy.copy(model)
    encode = model.encode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return encode(*args, **kwargs)

    other.encode = counting  # type: ignore[method-assign]
    return other


def test_cli_evaluates_an_image_folder(
    images: Path,
    tmp_path: Path,
    tiny_vis: TinyVisualized,
    visualized: Embedder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = composed_queries_image_docs(images, tmp_path / "set")
    out = tmp_path / "report.json"
    args = ["eval", "retrieval", str(root), "--model", str(tiny_vis.checkpoint), "--no-progress"]
    rc = main([*args, "--text-model", str(tiny_vis.text_dir), "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["mode"] == "dense" and report["num_queries"] == 4
    for name, value in reference_metrics(root, visualized).items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-6), name
    rc = main([*args, "--mode", "hybrid", "--text-model", str(tiny_vis.text_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "evaluate it in dense mode" in err and len(err.splitlines()) == 1


def test_fine_tuning_refuses_an_image_dataset(images: Path, tmp_path: Path) -> None:
    from bgekit.train.data import beir_train_examples

    root = text_queries_image_docs(images, tmp_path / "set")
    with pytest.raises(InputError, match=r"set holds images; fine-tuning reads text examples only"):
        beir_train_examples(root, "test")
