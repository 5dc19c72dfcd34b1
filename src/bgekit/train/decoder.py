"""The decoder embedders' fine-tuning recipes (the reference's ``finetune/embedder/
decoder_only/base`` and ``icl``): LoRA on a frozen base, in-context examples before each
query, added special tokens; on the inference modules, as every bgekit training run.

- **LoRA** (:class:`~bgekit.train.lora.LoraSettings`: rank 64, alpha 16, dropout 0.1 on
  the attention and MLP projections by default): the base model (transformers' ``AutoModel``,
  wrapped as peft's feature extraction) is loaded straight in the precision the run trains
  in (bf16 / fp16; no fp32 copy first) and frozen; the LoRA pairs train in fp32. The output
  folder is the adapter (peft's files, the base's name and resolved folder, the tokenizer,
  resized embeddings when tokens were added), which ``Embedder.from_pretrained`` loads;
  ``merge=True`` also writes ``merged/``, a plain transformers folder with the tokenizer.
- **In-context examples** (:mod:`bgekit.train.icl`): each query laid out as bge-en-icl's
  inference lays it out, with 0..5 examples of its task.
- **Added tokens**: special tokens added to the tokenizer; the embedding matrix grows
  when they do not fit it (the new rows start from transformers' initialisation, and are
  saved with the adapter as the reference saves them).

Decoder embedders pool the last token; bgekit's tokenizer appends the end token the
model's tokenizer appends (as the reference's ``add_eos_token=True`` does for LLaMA /
Mistral tokenizers), and pads on the right, picking each input's own last token (the
same vectors as the reference's left padding: attention is causal).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bgekit.io import atomic_dir, check_output_dir
from bgekit.models import Embedder
from bgekit.models.backbones import TransformersBackbone
from bgekit.models.heads import EncoderWithHeads
from bgekit.models.processor import TextProcessor
from bgekit.models.runtime import WeightsDtype, quiet_hf_bars, training_engine
from bgekit.models.tokenizer import TOKENIZER_FILES, TextTokenizer
from bgekit.train.data import TrainExample, check_for_training
from bgekit.train.distributed import world
from bgekit.train.icl import IclSettings, ShotSampler, format_shots
from bgekit.train.lora import add_lora, save_adapter
from bgekit.train.modeling import EmbedderTrainModel, copy_metadata
from bgekit.train.trainer import (
    EmbedderCollator,
    EmbedderTrainConfig,
    GroupDataset,
    TrainResult,
    _examples,
    _run,
    _teacher,
    _tensors,
    load_for_training,
    training_precision,
)
from bgekit.types import TokenSeq

logger = logging.getLogger(__name__)
MERGED = "merged"


def weights_dtype(cfg: EmbedderTrainConfig) -> WeightsDtype:
    """What the model's weights are loaded in: a LoRA run's frozen base in the run's
    precision; a full fine-tune's in fp32 (the optimiser updates them: mixed precision
    keeps fp32 weights and computes in bf16 / fp16)."""
    precision = training_precision(cfg.precision)
    if cfg.lora is None or precision == "fp32":
        return "float32"
    return "bfloat16" if precision == "bf16" else "float16"


@dataclass(frozen=True)
class ShotExample(TrainExample):
    """A training example with the (query, answer) pairs drawn to precede it."""

    shots: tuple[tuple[str, str], ...] = ()


class IclDataset(GroupDataset):
    """:class:`GroupDataset` whose queries also draw their in-context examples (seeded per
    item and draw, on a stream of their own: the groups are those of a run without them)."""

    def __init__(self, examples: Sequence[TrainExample], group_size: int, seed: int, settings: IclSettings):
        super().__init__(examples, group_size, seed)
        self.sampler = ShotSampler(self.examples, settings)

    def __getitem__(self, i: int) -> tuple[TrainExample, list[str], list[float] | None]:
        ex, passages, scores = super().__getitem__(i)
        rng = np.random.default_rng([self.seed, i, int(self._draws[i]) - 1, 1])
        shots = tuple((self.examples[j].query, self.examples[j].pos[k]) for j, k in self.sampler.draw(i, rng))
        fields = {f.name: getattr(ex, f.name) for f in dataclasses.fields(ex)}
        return ShotExample(**fields, shots=shots), passages, scores


@dataclass(frozen=True)
class IclCollator:
    """Tokenises each query in bge-en-icl's inference layout with its own examples (cut as
    :func:`~bgekit.train.icl.format_shots` says), passages as :class:`EmbedderCollator`."""

    embedder: Embedder
    settings: IclSettings

    def query(self, ex: TrainExample) -> TokenSeq:
        emb = self.embedder
        instruction = ex.prompt if ex.prompt is not None else emb.prompts.instruction("query", ex.task)
        shots = ex.shots if isinstance(ex, ShotExample) else ()
        examples = format_shots(shots, instruction, emb.tokenizer, self.settings)
        prompts = emb.prompts.with_examples(examples)
        return emb.processor.tokenize([ex.query], prompts, kind="query", task=ex.task, instruction=ex.prompt)[
            0
        ]

    def __call__(self, items: Sequence[tuple[TrainExample, list[str], list[float] | None]]) -> dict[str, Any]:
        emb = self.embedder
        queries = [self.query(ex) for ex, _, _ in items]
        passages = [seq for ex, group, _ in items for seq in emb.tokenize(group, task=ex.task)]
        pad = emb.tokenizer.pad_id
        return {**_tensors("q_", queries, pad), **_tensors("p_", passages, pad), **_teacher(items)}


def add_special_tokens(
    emb: Embedder, model: Any, tokens: Sequence[str], folder: Path
) -> tuple[Any, bool] | None:
    """Add ``tokens`` to the embedder's tokenizer as special tokens (the new tokenizer's
    files written to ``folder``) and grow ``model``'s embeddings when the new ids do not
    fit them. ``(transformers tokenizer, resized)``, or ``None`` when every token was
    there already."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(emb.info.path)
    added = hf.add_tokens(list(tokens), special_tokens=True)
    if added == 0:
        logger.warning("the tokens %s are in the tokenizer already; nothing added", list(tokens))
        return None
    hf.save_pretrained(str(folder))
    tok = TextTokenizer.from_folder(folder, with_type_ids=emb.tokenizer.with_type_ids)
    emb.tokenizer = tok
    emb.processor = TextProcessor(tok, emb.info, emb.long)
    rows = int(model.get_input_embeddings().weight.shape[0])
    resized = len(hf) > rows  # a vocabulary padded past the tokenizer may have room for them
    if resized:
        model.resize_token_embeddings(len(hf))
    logger.info("added %d special tokens (%s)", added, "embeddings resized" if resized else "rows were there")
    return hf, resized


@dataclass
class Prepared:
    """What a run trains and how it saves: built by :func:`prepare`, run by the Trainer (or
    stepped by hand, as benchmarks/lora_memory.py does)."""

    embedder: Embedder
    train_model: EmbedderTrainModel
    dataset: GroupDataset
    collator: Callable[..., dict[str, Any]]
    save: Callable[[Path], None]
    backbone: TransformersBackbone
    work: Path


def prepare(
    model: str,
    examples: Sequence[TrainExample],
    cfg: EmbedderTrainConfig,
    weights: WeightsDtype | None = None,
) -> Prepared:
    """Load the model on a training engine (weights in ``weights``, default
    :func:`weights_dtype`), add tokens and LoRA as ``cfg`` says, and build the training
    model, data and saving."""
    emb = load_for_training(model, examples, cfg, training_engine(weights or weights_dtype(cfg)))
    source = Path(emb.info.path)
    module = emb.torch_module()
    assert isinstance(module, EncoderWithHeads) and isinstance(module.backbone, TransformersBackbone)
    backbone = module.backbone
    module = EncoderWithHeads(backbone, None, None)  # dense only: M3 heads are a full fine-tune's
    torch.manual_seed(cfg.seed)  # new token rows and LoRA pairs
    work = Path(tempfile.mkdtemp(prefix="bgekit-tokens-"))
    tokens = add_special_tokens(emb, backbone.model, cfg.add_tokens, work) if cfg.add_tokens else None
    hf_tokenizer, resized = tokens if tokens is not None else (None, False)
    if cfg.lora is not None:
        backbone.model = add_lora(backbone.model, cfg.lora, "FEATURE_EXTRACTION")
    if cfg.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    train_model = EmbedderTrainModel(
        module,
        pooling=emb.info.pooling,
        normalize=emb.info.normalize,
        temperature=cfg.temperature,
        group_size=cfg.group_size,
        cross_device_negatives=cfg.cross_device_negatives,
    )
    if cfg.icl is not None:
        dataset: GroupDataset = IclDataset(examples, cfg.group_size, cfg.seed, cfg.icl)
        collator: Callable[..., dict[str, Any]] = IclCollator(emb, cfg.icl)
    else:
        dataset, collator = GroupDataset(examples, cfg.group_size, cfg.seed), EmbedderCollator(emb)

    def save_tokenizer(folder: Path) -> None:
        if hf_tokenizer is not None:
            hf_tokenizer.save_pretrained(str(folder))
            return
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)

    def save(folder: Path) -> None:
        if cfg.lora is not None:
            with quiet_hf_bars():
                save_adapter(
                    backbone.model, folder, base=model, base_path=source, kind="embedder", resized=resized
                )
        else:
            train_model.save(folder)
            copy_metadata(source, folder, embedder=True)
        save_tokenizer(folder)

    return Prepared(emb, train_model, dataset, collator, save, backbone, work)


def save_merged(prepared: Prepared, folder: Path, source: Path) -> None:
    """Merge the trained LoRA pairs into the base in place (training is over; no second
    copy of the model) and write it as a transformers folder with the tokenizer and the
    base's sentence-transformers settings."""
    backbone = prepared.backbone
    merged: nn.Module = backbone.model.merge_and_unload()  # type: ignore[operator]
    backbone.model = merged
    with atomic_dir(folder) as tmp, quiet_hf_bars():
        merged.save_pretrained(str(tmp))  # type: ignore[operator]
        copy_metadata(source, tmp, embedder=True)
        for name in TOKENIZER_FILES:  # the run's tokenizer (added tokens) over the base's
            if (prepared.work / name).is_file():
                shutil.copy2(prepared.work / name, tmp / name)


def train_adapted_embedder(
    model: str,
    data: str | Path | Sequence[TrainExample],
    output: str | Path,
    config: EmbedderTrainConfig,
) -> TrainResult:
    """:func:`~bgekit.train.train_embedder` with LoRA, in-context examples or added tokens."""
    cfg = config
    out = Path(output)
    check_output_dir(out, overwrite=cfg.overwrite)  # fail before training, not after
    examples = _examples(data)
    check_for_training(examples, cfg.group_size)
    prepared = prepare(model, examples, cfg)
    try:
        result = _run(prepared.train_model, prepared.dataset, prepared.collator, cfg, out, prepared.save)
        if cfg.lora is not None and cfg.lora.merge and world()[0] == 0:
            save_merged(prepared, out / MERGED, Path(prepared.embedder.info.path))
    finally:
        shutil.rmtree(prepared.work, ignore_errors=True)
    return result
