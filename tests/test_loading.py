from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bgekit import Embedder, ModelFormatError, ModelNotFoundError
from bgekit.models.loading import resolve_model_dir


def test_hub_id_offline_and_not_cached_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match=r"cannot be reached .* pass the folder path"):
        Embedder.from_pretrained("BAAI/bge-m3")


def test_hub_id_found_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bert_m3: Path) -> None:
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--BAAI--bge-m3" / "snapshots" / commit
    shutil.copytree(bert_m3, snap)
    (cache / "models--BAAI--bge-m3" / "refs").mkdir()
    (cache / "models--BAAI--bge-m3" / "refs" / "main").write_text(commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    model = Embedder.from_pretrained("BAAI/bge-m3")
    assert model.info.known_as == "bge-m3"
    # the table caps bge-m3 passages at 8192, the tiny folder at its 128 positions
    assert model.info.heads == ("dense", "sparse", "multivector")
    assert model.info.passage_max_length == 128


def test_missing_and_malformed_folders(tmp_path: Path, bert_m3: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        resolve_model_dir(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model_dir(str(tmp_path / "file.txt"))
    with pytest.raises(ModelFormatError, match=r"no config\.json"):
        Embedder.from_pretrained(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(bert_m3, broken)
    torch.save({"weight": torch.zeros(3, 7)}, broken / "sparse_linear.pt")
    with pytest.raises(ModelFormatError, match=r"not a Linear\(32, n\) state dict"):
        Embedder.from_pretrained(str(broken))


def test_head_files_never_run_pickled_code(tmp_path: Path, bert_m3: Path) -> None:
    evil = tmp_path / "evil"
    shutil.copytree(bert_m3, evil)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.write_text, ("ran",))  # executed only by an unsafe load

    torch.save({"weight": Payload()}, evil / "colbert_linear.pt")
    with pytest.raises(
        ModelFormatError, match=r"unsafe pickle.*convert the checkpoint to safetensors"
    ) as err:
        Embedder.from_pretrained(str(evil))
    assert "weights_only=False" not in str(err.value)  # never the advice that would run it
    assert not marker.exists()


def test_a_pickled_checkpoint_with_code_is_refused(
    tmp_path: Path, bert_m3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil-bin"
    shutil.copytree(bert_m3, evil)
    for f in evil.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.write_text, ("ran",))

    torch.save({"embeddings.word_embeddings.weight": Payload()}, evil / "pytorch_model.bin")
    with pytest.raises(ModelFormatError, match=r"unsafe pickle") as err:
        Embedder.from_pretrained(str(evil))
    assert "weights_only=False" not in str(err.value) and not marker.exists()
    from bgekit.cli.main import main

    assert main(["info", str(evil)]) == 2
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and "unsafe pickle" in out and not marker.exists()
