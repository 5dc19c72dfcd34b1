"""Damaged model folders (issue 22): each is one ModelFormatError naming the file, on every
load path (bgekit's packed encoder, transformers, cross-encoders, LLM rerankers) and on the
command line as one stderr line; never a traceback or a model with random or missing parts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bgekit import (
    Document,
    Embedder,
    EngineConfig,
    Index,
    IndexConfig,
    InputError,
    ModelFormatError,
    Reranker,
)
from bgekit.cli.main import main
from bgekit.models import model_fingerprint
from tests.tiny_llms import build_gemma_reranker

FP32 = EngineConfig(device="cpu", dtype="float32", progress=False)
TRANSFORMERS = EngineConfig(device="cpu", dtype="float32", progress=False, backend="transformers")
RELATED = ["A man is eating food.", "A man is eating a piece of bread."]
UNRELATED = ["A man is eating food.", "The stock market fell sharply on Monday."]
TINY_TEXTS = ["what is bge m3", "cats and dogs are popular pets", "the stock market fell"]


def _copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of a model folder; its large weights file linked, not copied."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name in skip:
            continue
        if f.is_dir():
            shutil.copytree(f, dst / f.name)
        elif f.name == "model.safetensors":
            os.symlink(f, dst / f.name)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def _set_config(folder: Path, **values: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = dict(load_file(str(folder / "model.safetensors")))
    edit(state)
    (folder / "model.safetensors").unlink()  # a link to the original in MiniLM copies
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _cli_error(capsys: pytest.CaptureFixture[str], folder: Path) -> str:
    """``bgekit similarity --model folder``'s one stderr line (status 2, no traceback)."""
    assert main(["similarity", "--no-progress", "--model", str(folder), *UNRELATED]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith("bgekit: error: ")
    return captured.err


def _cosine(model: Embedder, pair: list[str]) -> float:
    vecs = model.encode(pair).dense
    assert vecs is not None
    return float(vecs[0] @ vecs[1])


# -- the packaged real model ----------------------------------------------------------------


def test_an_intact_copy_of_the_packaged_model_gives_the_same_vectors(minilm: Path, tmp_path: Path) -> None:
    copy = _copy(minilm, tmp_path / "copy")
    original = Embedder.from_pretrained(str(minilm), engine=FP32)
    copied = Embedder.from_pretrained(str(copy), engine=FP32)
    np.testing.assert_array_equal(copied.encode(UNRELATED).dense, original.encode(UNRELATED).dense)
    assert model_fingerprint(copied) == model_fingerprint(original)  # moving a folder changes nothing
    assert _cosine(copied, RELATED) > 0.6 > 0.2 > _cosine(copied, UNRELATED)


def test_a_folder_without_tokenizer_files_is_refused(
    minilm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: transformers built a 5-token vocabulary ([PAD] [UNK] [CLS] [SEP] [MASK]), every
    # word became [UNK] and any two sentences scored about 0.99.
    tokenizer_files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
    folder = _copy(minilm, tmp_path / "no-tokenizer", skip=tokenizer_files)
    with pytest.raises(ModelFormatError, match=r"has no tokenizer: tokenizer\.json and a vocabulary file"):
        Embedder.from_pretrained(str(folder), engine=FP32)
    err = _cli_error(capsys, folder)
    assert str(folder) in err and "tokenizer.json" in err and "vocab.txt" in err


def test_a_vocabulary_of_special_tokens_only_is_refused(
    minilm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(minilm, tmp_path / "specials-only", skip=("tokenizer.json",))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(ModelFormatError, match=r"vocab\.txt: the tokenizer's vocabulary holds only special"):
        Embedder.from_pretrained(str(folder), engine=FP32)
    assert str(folder / "vocab.txt") in _cli_error(capsys, folder)


def test_more_layers_in_the_config_than_in_the_weights(
    minilm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: 6 random layers on top of the real 6 (cosine 0.85 to the real model).
    folder = _copy(minilm, tmp_path / "twelve")
    _set_config(folder, num_hidden_layers=12)
    with pytest.raises(ModelFormatError, match=r"model\.safetensors does not fit config\.json") as err:
        Embedder.from_pretrained(str(folder), engine=FP32)
    assert "12 layers" in str(err.value) and "missing encoder.layer.6." in str(err.value)
    assert str(folder / "model.safetensors") in _cli_error(capsys, folder)


def test_fewer_layers_in_the_config_than_in_the_weights(minilm: Path, tmp_path: Path) -> None:
    # Before: the packed encoder ran the first 3 layers and dropped the rest silently.
    folder = _copy(minilm, tmp_path / "three")
    _set_config(folder, num_hidden_layers=3)
    for engine in (FP32, TRANSFORMERS):
        with pytest.raises(
            ModelFormatError, match=r"model\.safetensors does not fit .*unexpected encoder\.layer\.3\."
        ):
            Embedder.from_pretrained(str(folder), engine=engine)


# -- tiny models: every load path ----------------------------------------------------------


def _drop(*keys: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        for key in keys:
            del state[key]

    return edit


def _add(key: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda state: state.__setitem__(key, value)


@pytest.mark.parametrize("engine", [FP32, TRANSFORMERS], ids=["packed", "transformers"])
@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (_drop("encoder.layer.1.output.dense.bias"), "missing encoder.layer.1.output.dense.bias"),
        (
            _add("encoder.layer.0.attention.self.extra", torch.zeros(2)),
            "unexpected encoder.layer.0.attention.self.extra",
        ),
        (
            _add("embeddings.word_embeddings.weight", torch.zeros(7, 32)),
            "wrong shape embeddings.word_embeddings.weight",
        ),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_weights_that_do_not_fit_the_encoder(
    bert_m3: Path,
    tmp_path: Path,
    engine: EngineConfig,
    edit: Callable[[dict[str, torch.Tensor]], None],
    says: str,
) -> None:
    folder = _copy(bert_m3, tmp_path / "m", skip=("model.safetensors",))
    shutil.copy(bert_m3 / "model.safetensors", folder / "model.safetensors")
    _edit_weights(folder, edit)
    with pytest.raises(ModelFormatError, match=r"model\.safetensors does not fit config\.json") as err:
        Embedder.from_pretrained(str(folder), engine=engine)
    assert str(folder / "model.safetensors") in str(err.value) and says in str(err.value)


def test_task_heads_beside_the_encoder_are_left_out_as_before(bert_m3: Path, tmp_path: Path) -> None:
    """A pre-training head in the checkpoint, or no pooler, is not damage: an embedder
    never runs them (transformers drops them too); the vectors are the intact folder's."""
    folder = _copy(bert_m3, tmp_path / "m", skip=("model.safetensors",))
    shutil.copy(bert_m3 / "model.safetensors", folder / "model.safetensors")

    def edit(state: dict[str, torch.Tensor]) -> None:
        state["cls.predictions.bias"] = torch.zeros(5)
        for key in [k for k in state if k.startswith("pooler.")]:
            del state[key]

    _edit_weights(folder, edit)
    for engine in (FP32, TRANSFORMERS):
        want = Embedder.from_pretrained(str(bert_m3), engine=engine).encode(TINY_TEXTS).dense
        got = Embedder.from_pretrained(str(folder), engine=engine).encode(TINY_TEXTS).dense
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda f: _set_config(f, num_hidden_layers=4), "missing bert.encoder.layer.2."),
        (lambda f: _set_config(f, num_hidden_layers=1), "unexpected bert.encoder.layer.1."),
        (
            lambda f: _edit_weights(f, _drop("classifier.weight", "classifier.bias")),
            "missing classifier.bias, classifier.weight",
        ),
    ],
    ids=["more-layers", "fewer-layers", "no-classifier"],
)
def test_a_cross_encoder_whose_weights_do_not_fit(
    bert_reranker: Path, tmp_path: Path, damage: Callable[[Path], None], says: str
) -> None:
    folder = tmp_path / "r"
    shutil.copytree(bert_reranker, folder)
    damage(folder)
    with pytest.raises(ModelFormatError, match=r"model\.safetensors does not fit config\.json") as err:
        Reranker.from_pretrained(str(folder), engine=FP32)
    assert str(folder / "model.safetensors") in str(err.value) and says in str(err.value)


def test_an_intact_cross_encoder_copy_scores_as_before(bert_reranker: Path, tmp_path: Path) -> None:
    folder = tmp_path / "r"
    shutil.copytree(bert_reranker, folder)
    pairs = [("cats", "cats and dogs are popular pets"), ("cats", "the stock market fell")]
    want = Reranker.from_pretrained(str(bert_reranker), engine=FP32).score(pairs)
    np.testing.assert_array_equal(Reranker.from_pretrained(str(folder), engine=FP32).score(pairs), want)


def test_a_yes_no_llm_reranker_missing_a_weight(tmp_path: Path) -> None:
    folder = build_gemma_reranker(tmp_path / "gemma")
    pairs = [("cats", "cats and dogs")]
    assert np.isfinite(Reranker.from_pretrained(str(folder), engine=FP32).score(pairs)).all()
    _edit_weights(folder, _drop("model.layers.0.mlp.down_proj.weight"))
    with pytest.raises(
        ModelFormatError, match=r"model\.safetensors does not fit .*missing model\.layers\.0\.mlp"
    ):
        Reranker.from_pretrained(str(folder), engine=FP32)


# -- damaged settings and head files --------------------------------------------------------


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _head(name: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        state = torch.load(folder / name, weights_only=True)
        edit(state)
        torch.save(state, folder / name)

    return damage


DAMAGE = [
    ("config a list", _write("config.json", "[]"), "config.json", "must hold a JSON object"),
    (
        "hidden_size a word",
        lambda f: _set_config(f, hidden_size="abc"),
        "config.json",
        "hidden_size must be a whole number of at least 1, not 'abc'",
    ),
    (
        "modules.json of strings",
        _write("modules.json", '["x", "y"]'),
        "modules.json",
        "must be a list of module objects",
    ),
    (
        "colbert head extra key",
        _head("colbert_linear.pt", _add("extra", torch.zeros(1))),
        "colbert_linear.pt",
        "unexpected keys ['extra']",
    ),
    (
        "sparse head bias shape",
        _head("sparse_linear.pt", _add("bias", torch.zeros(3))),
        "sparse_linear.pt",
        "bias shape (3,) does not match weight shape (1, 32)",
    ),
    (
        "colbert head random bytes",
        lambda f: (f / "colbert_linear.pt").write_bytes(np.random.default_rng(0).bytes(2000)),
        "colbert_linear.pt",
        "is not a PyTorch weights file",
    ),
    (
        "sparse head a text file",
        _write("sparse_linear.pt", "not weights\n"),
        "sparse_linear.pt",
        "is not a PyTorch weights file",
    ),
]


@pytest.mark.parametrize(("what", "damage", "named", "says"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_folders_are_one_line_naming_the_file(
    bert_m3: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    what: str,
    damage: Callable[[Path], None],
    named: str,
    says: str,
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(bert_m3, folder)
    damage(folder)
    with pytest.raises(ModelFormatError) as err:
        Embedder.from_pretrained(str(folder), engine=FP32)
    assert str(folder / named) in str(err.value) and says in str(err.value), (what, str(err.value))
    assert "unsafe" not in str(err.value)
    err_line = _cli_error(capsys, folder)
    assert str(folder / named) in err_line and says in err_line


def test_a_head_that_runs_code_is_still_called_unsafe(bert_m3: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(bert_m3, folder)

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("ran",))

    for legacy in (False, True):  # the zip format and the old plain pickle
        torch.save(
            {"weight": Payload()}, folder / "colbert_linear.pt", _use_new_zipfile_serialization=not legacy
        )
        with pytest.raises(
            ModelFormatError, match=r"colbert_linear\.pt holds Python code .*an unsafe pickle"
        ):
            Embedder.from_pretrained(str(folder), engine=FP32)


# -- the model's identity covers its tokenizer ---------------------------------------------


def _swap_two_tokens(folder: Path) -> None:
    """The same weights under another tokenizer: two ordinary words trade ids."""
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = "cats", "dogs"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert not (folder / "vocab.txt").exists()  # tokenizer.json is the whole tokenizer


def test_an_index_refuses_the_same_weights_with_another_tokenizer(bert_m3: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(bert_m3, other)
    _swap_two_tokens(other)
    original = Embedder.from_pretrained(str(bert_m3), engine=FP32)
    swapped = Embedder.from_pretrained(str(other), engine=FP32)
    assert original.tokenize(["cats"])[0].ids != swapped.tokenize(["cats"])[0].ids
    assert model_fingerprint(original) != model_fingerprint(swapped)

    index = Index(original, IndexConfig(outputs=("dense",)))
    index.add([Document("d1", "cats and dogs are popular pets")])
    index.save(tmp_path / "ix")
    assert len(Index.load(tmp_path / "ix", original)) == 1
    with pytest.raises(InputError, match="is a different model"):
        Index.load(tmp_path / "ix", swapped)
