"""Image documents end to end: a folder of photographs (and JSONL captions) indexed with a
tiny BGE-VL and a tiny BGE-Visualized, searched by text, image and both, through the
Python API and the CLI; scores checked against the model's own vectors ranked in numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from bgekit import Embedder, EngineConfig
from bgekit.cli.main import main
from bgekit.errors import InputError
from bgekit.images import Composed, ImageInput
from bgekit.index import Index, IndexConfig, read_source
from tests.tiny_visualized import build_visualized

FP32 = EngineConfig(dtype="float32", progress=False)
PHOTOS = {"astronaut": "png", "coffee": "jpg", "chelsea": "png", "rocket": "jpg", "camera": "png"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name, suffix in PHOTOS.items():
        Image.fromarray(getattr(data, name)()).save(root / f"{name}.{suffix}")
    (root / "notes.txt").write_text("A cup of coffee on a saucer, seen from above.", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> Embedder:
    return Embedder.from_pretrained(str(clip_dir), engine=FP32)


def _ranked(embedder: Embedder, query: object, docs: list[object]) -> np.ndarray:
    """Inner products of the query's vector with each document's, from the model alone."""
    q = embedder.encode_queries([query]).dense  # type: ignore[list-item]
    d = embedder.encode_corpus(docs).dense  # type: ignore[arg-type]
    assert q is not None and d is not None
    return (d @ q[0]).astype(np.float64)


def test_folder_of_images_indexed_by_path_and_searched_three_ways(photos: Path, clip: Embedder) -> None:
    docs = read_source(photos)
    by_id = {d.id: d for d in docs}
    assert set(by_id) == {f"{n}.{s}" for n, s in PHOTOS.items()} | {"notes.txt"}
    assert by_id["coffee.jpg"].image == str((photos / "coffee.jpg").resolve())
    assert by_id["notes.txt"].image is None
    index = Index(clip, IndexConfig(outputs=("dense",)))
    report = index.add(docs)
    assert (report.documents, report.chunks) == (6, 6)
    # what each document is to the model: the image, or the text file's title and text
    items = [ImageInput.of(d.image) if d.image else f"{d.title} {d.text}" for d in docs]
    queries = [
        "a cat",
        ImageInput.of(photos / "chelsea.png"),
        Composed("in red", ImageInput.of(photos / "rocket.jpg")),
    ]
    for query in queries:
        hits = index.search([query], k=6, mode="dense")[0]
        expected = _ranked(clip, query, items)
        order = np.argsort(-expected, kind="stable")
        assert [h.id for h in hits] == [docs[i].id for i in order]
        np.testing.assert_allclose([h.score for h in hits], expected[order], rtol=1e-5, atol=1e-6)
        for h in hits:
            assert h.image == by_id[h.id].image
    # hybrid: BM25 has no words of an image query to match, so the dense order stands
    image_query = [ImageInput.of(photos / "chelsea.png")]
    dense_ids = [h.id for h in index.search(image_query, k=6, mode="dense")[0]]
    assert [h.id for h in index.search(image_query, k=6, mode="hybrid")[0]] == dense_ids
    # an image is nearest to itself
    assert index.search([ImageInput.of(photos / "camera.png")], k=1, mode="dense")[0][0].id == "camera.png"


def test_jsonl_captions_compose_with_their_image_and_round_trip(
    photos: Path, clip: Embedder, tmp_path: Path
) -> None:
    lines = [
        {"id": "a", "image": "photos/astronaut.png", "text": "an astronaut with a flag"},
        {"id": "c", "image": "photos/coffee.jpg"},
        {"id": "t", "text": "a rocket on the launch pad", "title": "launch"},
    ]
    (tmp_path / "photos").symlink_to(photos)
    source = tmp_path / "captions.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in lines), encoding="utf-8")
    docs = read_source(source)
    assert docs[0].image == str((photos / "astronaut.png").resolve())
    index = Index(clip, IndexConfig(outputs=("dense",)))
    index.add(docs)
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", engine=FP32)
    items = [
        Composed("an astronaut with a flag", ImageInput.of(docs[0].image or "")),
        ImageInput.of(docs[1].image or ""),
        "launch a rocket on the launch pad",
    ]
    expected = _ranked(clip, "a space rocket", items)
    hits = loaded.search(["a space rocket"], k=3, mode="dense")[0]
    order = np.argsort(-expected, kind="stable")
    assert [h.id for h in hits] == [["a", "c", "t"][i] for i in order]
    np.testing.assert_allclose([h.score for h in hits], expected[order], rtol=1e-5, atol=1e-6)
    assert {h.id: h.image for h in hits} == {"a": docs[0].image, "c": docs[1].image, "t": None}


def test_text_model_refuses_image_documents_and_queries(photos: Path, minilm: Path) -> None:
    model = Embedder.from_pretrained(str(minilm), engine=FP32)
    index = Index(model, IndexConfig(outputs=("dense",)))
    with pytest.raises(InputError, match="image") as err:
        index.add(read_source(photos))
    assert "\n" not in str(err.value)
    index.add(read_source(photos / "notes.txt"))
    with pytest.raises(InputError, match="image"):
        index.search([ImageInput.of(photos / "coffee.jpg")], k=1)


def test_cli_build_and_search_by_image_and_text(
    photos: Path, clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ix = tmp_path / "ix"
    args = ["--dtype", "float32", "--no-progress"]
    assert main(["index", "build", str(photos), "--index", str(ix), "--model", str(clip_dir), *args]) == 0
    assert "indexed 6 documents" in capsys.readouterr().out
    assert main(["index", "info", str(ix), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 6

    query = photos / "rocket.jpg"
    assert main(["search", str(ix), "in red", "--image", str(query), "--json", "-k", "3", *args]) == 0
    shown = json.loads(capsys.readouterr().out)
    clip = Embedder.from_pretrained(str(clip_dir), engine=FP32)
    docs = read_source(photos)
    items = [ImageInput.of(d.image) if d.image else f"{d.title} {d.text}" for d in docs]
    expected = _ranked(clip, Composed("in red", ImageInput.of(query)), items)
    top = np.argsort(-expected, kind="stable")[:3]
    assert [h["id"] for h in shown["hits"]] == [docs[i].id for i in top]
    assert shown["image"] == str(query)
    assert shown["hits"][0]["image"] == docs[top[0]].image

    # the text form names the query and prints each hit's image
    assert main(["search", str(ix), "--image", str(query), *args]) == 0
    out = capsys.readouterr().out
    assert f"image: {(photos / 'rocket.jpg').resolve()}" in out
    assert "results for" in out and "rocket.jpg" in out.splitlines()[0]


def test_cli_info_names_the_inputs_a_model_takes(
    clip_dir: Path, minilm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(clip_dir)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("inputs"))
    assert "image" in line and "text" in line
    assert main(["info", str(minilm)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("inputs"))
    assert "image" not in line


def test_visualized_index_from_cli_records_its_text_model(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = build_visualized(tmp_path / "vis", image_size=32, patch=8)
    ix = tmp_path / "ix"
    monkeypatch.chdir(tmp_path)  # a relative --text-model must still be found after a chdir
    args = ["--dtype", "float32", "--no-progress"]
    rel = str(tiny.text_dir.relative_to(tmp_path))
    build = ["index", "build", str(photos), "--index", str(ix), "--model", str(tiny.checkpoint)]
    assert main([*build, "--text-model", rel, *args]) == 0
    capsys.readouterr()
    monkeypatch.chdir(photos)
    assert main(["search", str(ix), "--image", "coffee.jpg", "--json", "-k", "1", *args]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == "coffee.jpg"
    # without the text model, a checkpoint whose name does not tell it is one clear error
    code = main(
        ["index", "build", str(photos), "--index", str(tmp_path / "ix2"), "--model", str(tiny.checkpoint)]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert "text model" in err and "Traceback" not in err
