"""Fine-tuning loads through the inference loader (issue 23): a damaged folder is the same
one-line ModelFormatError before any training, and a fresh head goes only on an encoder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bgekit import InputError, ModelFormatError
from bgekit.cli.main import main
from bgekit.models import load_reranker
from bgekit.models.backbones import CrossEncoderForward
from bgekit.train import RerankerTrainConfig, TrainExample, train_reranker, write_train_data
from tests.test_model_folders import FP32, _drop, _edit_weights
from tests.tiny_llms import build_gemma_reranker


def _drop_matching(suffix: str) -> Callable[[Path], None]:
    """Drop the tensor whose key ends with ``suffix`` (``bert.``-prefixed in a cross-encoder's
    file, bare in an encoder's)."""

    def damage(folder: Path) -> None:
        _edit_weights(folder, lambda state: state.pop(next(k for k in state if k.endswith(suffix))))

    return damage


@pytest.mark.parametrize("start", ["cross-encoder", "encoder"])
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda f: (f / "model.safetensors").unlink(), "no file named model.safetensors"),
        (
            _drop_matching("encoder.layer.1.output.dense.bias"),
            "does not fit config.json (BertForSequenceClassification, 2 layers): "
            "missing bert.encoder.layer.1.output.dense.bias",
        ),
    ],
    ids=["no-weights-file", "a-weight-missing"],
)
def test_training_on_a_damaged_folder_is_one_line(
    bert_reranker: Path,
    bert_st_mean: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    start: str,
    damage: Callable[[Path], None],
    says: str,
) -> None:
    """A reranker fine-tuned from a damaged folder (its own head or a fresh one added to an
    encoder) is refused as inference refuses it, before any training."""
    folder = tmp_path / "m"
    shutil.copytree(bert_reranker if start == "cross-encoder" else bert_st_mean, folder)
    damage(folder)
    examples = [TrainExample("cats", ("cats and dogs are popular pets",), ("the stock market fell",))]
    cfg = RerankerTrainConfig(batch_size=1, group_size=2, max_steps=1, max_length=32, progress=False)
    with pytest.raises(ModelFormatError) as err:
        train_reranker(str(folder), examples, tmp_path / "out", cfg)
    assert str(folder) in str(err.value) and says in str(err.value), str(err.value)
    write_train_data(tmp_path / "train.jsonl", examples)
    args = ["train", "reranker", "--model", str(folder), "--data", str(tmp_path / "train.jsonl")]
    args += ["--output", str(tmp_path / "out"), "--max-length", "32", "--group-size", "2", "--no-progress"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("bgekit: error: "), captured.err
    assert says in captured.err
    assert not (tmp_path / "out").exists()


def test_training_adds_a_head_only_to_an_encoder(bert_reranker: Path, tmp_path: Path) -> None:
    """A fresh head is for an encoder checkpoint: a cross-encoder that lost its classifier is
    damaged, for training as for scoring."""
    folder = tmp_path / "r"
    shutil.copytree(bert_reranker, folder)
    _edit_weights(folder, _drop("classifier.weight", "classifier.bias"))
    with pytest.raises(ModelFormatError, match=r"missing classifier\.bias, classifier\.weight"):
        load_reranker(str(folder), training=True)


def test_a_fresh_head_for_an_encoder_without_a_pooler(bert_st_mean: Path, tmp_path: Path) -> None:
    """BERT's classification head is its pooler and classifier: an encoder saved without the
    pooler gets both fresh; its encoder weights are the checkpoint's."""
    folder = tmp_path / "e"
    shutil.copytree(bert_st_mean, folder)
    _edit_weights(folder, lambda state: [state.pop(k) for k in list(state) if k.startswith("pooler.")])
    with pytest.raises(ModelFormatError, match="is not a cross-encoder"):
        load_reranker(str(folder))
    model = load_reranker(str(folder), max_length=32, training=True)
    module = model.torch_module()
    assert isinstance(module, CrossEncoderForward) and module.pooler is not None
    want = load_file(str(folder / "model.safetensors"))["encoder.layer.1.output.dense.bias"]
    torch.testing.assert_close(
        dict(module.named_parameters())["backbone.model.encoder.layer.1.output.dense.bias"], want
    )
    assert np.isfinite(model.score([("cats", "cats and dogs are popular pets")])).all()
    gemma = build_gemma_reranker(tmp_path / "gemma")
    with pytest.raises(
        ModelFormatError, match="is a yes_no LLM reranker; bgekit fine-tunes cross-encoders only"
    ):
        load_reranker(str(gemma), training=True)
    with pytest.raises(InputError, match="leave engine unset"):
        load_reranker(str(folder), training=True, engine=FP32)
