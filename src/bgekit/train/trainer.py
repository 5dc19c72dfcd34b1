"""Fine-tuning on the transformers Trainer, so torchrun, DDP, accelerate and DeepSpeed
launch it unchanged: ``torchrun --nproc_per_node N -m bgekit train embedder ...``."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from bgekit.engine import EngineConfig, pad_batch
from bgekit.errors import InputError
from bgekit.io import atomic_dir, check_output_dir
from bgekit.models import Embedder, EmbedderSettings, Reranker
from bgekit.models.backbones import CrossEncoderForward, TransformersBackbone
from bgekit.models.heads import EncoderWithHeads
from bgekit.models.reranker import load_reranker
from bgekit.models.runtime import TRAINING_ENGINE
from bgekit.train.data import TrainExample, check_for_training, load_train_data, sample_group
from bgekit.train.icl import IclSettings
from bgekit.train.lora import LoraSettings
from bgekit.train.modeling import EmbedderTrainModel, RerankerTrainModel, copy_metadata
from bgekit.types import TokenSeq

logger = logging.getLogger(__name__)
Precision = Literal["fp32", "fp16", "bf16", "auto"]


def training_precision(precision: Precision) -> Literal["fp32", "fp16", "bf16"]:
    """``"auto"``: bf16 where the hardware computes it (a CUDA GPU that supports it, else a
    CPU with AMX-BF16 or AVX512-BF16: :func:`bgekit.engine.cpu_features`), fp32 otherwise."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise InputError("fp16 training needs a GPU; on the CPU use bf16 (AMX / AVX512-BF16) or fp32")
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from bgekit.engine import cpu_features

    return "bf16" if cpu_features().bf16 else "fp32"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What every training run takes. ``batch_size`` counts queries per device and step,
    each with a group of ``group_size`` passages (1 positive + negatives). ``warmup`` is a
    fraction of the steps."""

    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    group_size: int = 8
    learning_rate: float = 2e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    grad_accum: int = 1
    seed: int = 42
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int | None = None
    deepspeed: str | None = None
    overwrite: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0 or self.max_steps > 0, "epochs must be positive"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.group_size >= 1, "group_size must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.warmup < 1, "warmup must be a fraction in [0, 1)"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (
                self.precision in ("fp32", "fp16", "bf16", "auto"),
                "precision must be fp32, fp16, bf16 or auto",
            ),
            (self.save_steps is None or self.save_steps >= 1, "save_steps must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass(frozen=True, kw_only=True)
class EmbedderTrainConfig(TrainConfig):
    """Embedder training: InfoNCE with in-batch negatives (and, with
    ``cross_device_negatives``, every process's passages), distillation when the data has
    teacher scores, and BGE-M3's unified loss with ``m3``. Lengths, the query instruction
    and the query format default to the model's own.

    ``lora``: train LoRA pairs on a frozen base (loaded in the run's precision) and save
    the adapter (see :mod:`bgekit.train.decoder`); ``icl``: in-context examples before
    each query, as bge-en-icl (:mod:`bgekit.train.icl`); ``add_tokens``: special tokens
    added to the tokenizer, the embeddings resized."""

    temperature: float = 0.02
    query_max_length: int | None = None
    passage_max_length: int | None = None
    query_instruction: str | None = None
    cross_device_negatives: bool = False
    m3: bool = False
    self_distill: bool = True
    multivector_dim: int | None = None
    query_format: str | None = None
    lora: LoraSettings | None = None
    icl: IclSettings | None = None
    add_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        if self.m3 and self.adapted:
            raise InputError(
                "m3 trains BGE-M3's heads by full fine-tuning; it takes no LoRA, ICL or added tokens"
            )

    @property
    def adapted(self) -> bool:
        """Whether the run takes the LoRA / in-context / added-token path."""
        return self.lora is not None or self.icl is not None or bool(self.add_tokens)


@dataclass(frozen=True, kw_only=True)
class RerankerTrainConfig(TrainConfig):
    """Cross-encoder training: cross-entropy over each group. A pair holds at most
    ``max_length`` tokens, its query at most ``query_max_length`` (3/4 of it by default).

    LLM rerankers (yes/no, layer-wise; :mod:`bgekit.train.llm_reranker`) train with
    ``lora`` (required for them); ``start_layer``: a layer-wise model's first scored layer
    (default: the model's own); ``special_tokens``: tokens added to the vocabulary (the
    resized embeddings are saved with the adapter).

    With teacher scores in the data, the loss adds the soft cross-entropy to
    ``softmax(teacher / teacher_temperature)`` (cross-encoders and LLM rerankers alike): bi-encoder cosines (within ±1) need a small
    temperature (e.g. 0.05) to carry an ordering; reranker logits use the default 1."""

    max_length: int = 512
    query_max_length: int | None = None
    lora: LoraSettings | None = None
    start_layer: int | None = None
    special_tokens: tuple[str, ...] = ()
    teacher_temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher_temperature > 0:
            raise InputError(f"teacher_temperature must be positive, got {self.teacher_temperature}")


@dataclass(frozen=True)
class TrainResult:
    output: Path
    steps: int
    seconds: float
    final_loss: float | None
    log: list[dict[str, Any]] = field(default_factory=list)


class GroupDataset(Dataset):
    """Each item: a query and a freshly sampled group (the positive first). Draws are seeded
    by (seed, item, how often the item was drawn), so a run is reproducible."""

    def __init__(self, examples: Sequence[TrainExample], group_size: int, seed: int):
        self.examples = list(examples)
        self.group_size = group_size
        self.seed = seed
        self._draws = np.zeros(len(self.examples), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[TrainExample, list[str], list[float] | None]:
        rng = np.random.default_rng([self.seed, i, int(self._draws[i])])
        self._draws[i] += 1
        ex = self.examples[i]
        passages, scores = sample_group(ex, self.group_size, rng)
        return ex, passages, scores


def _tensors(prefix: str, seqs: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
    view = pad_batch(seqs, pad_id, torch.device("cpu")).padded()
    out = {f"{prefix}input_ids": view.input_ids, f"{prefix}attention_mask": view.attention_mask}
    if view.token_type_ids is not None:
        out[f"{prefix}token_type_ids"] = view.token_type_ids
    return out


def _teacher(items: Sequence[tuple[TrainExample, list[str], list[float] | None]]) -> dict[str, torch.Tensor]:
    if items[0][2] is None:
        return {}
    return {"teacher_scores": torch.tensor([s for _, _, s in items], dtype=torch.float32)}


@dataclass(frozen=True)
class EmbedderCollator:
    """Tokenises a batch of groups exactly as the embedder does at inference
    (:meth:`Embedder.tokenize`): queries with the model's instruction and query format (a
    line's ``task`` picks both sides' instructions from the model's table; its ``prompt``
    replaces the query's), passages with the passage instruction; each side padded to its
    batch's longest."""

    embedder: Embedder

    def __call__(self, items: Sequence[tuple[TrainExample, list[str], list[float] | None]]) -> dict[str, Any]:
        emb = self.embedder
        by_prompt: dict[tuple[str | None, str | None], list[int]] = {}
        for i, (ex, _, _) in enumerate(items):
            by_prompt.setdefault((ex.prompt, ex.task), []).append(i)
        queries: list[TokenSeq | None] = [None] * len(items)
        passages: list[list[TokenSeq]] = [[] for _ in items]
        for (prompt, task), rows in by_prompt.items():
            seqs = emb.tokenize(
                [items[i][0].query for i in rows], kind="query", instruction=prompt, task=task
            )
            group_seqs = emb.tokenize([p for i in rows for p in items[i][1]], task=task)
            at = 0
            for i, seq in zip(rows, seqs, strict=True):
                queries[i] = seq
                passages[i] = group_seqs[at : at + len(items[i][1])]
                at += len(items[i][1])
        pad = emb.tokenizer.pad_id
        return {
            **_tensors("q_", [q for q in queries if q is not None], pad),
            **_tensors("p_", [p for group in passages for p in group], pad),
            **_teacher(items),
        }


@dataclass(frozen=True)
class RerankerCollator:
    """Tokenises every (query, passage) pair of a batch of groups through the reranker's own
    :meth:`Reranker.tokenize` (its lengths and query rule)."""

    reranker: Reranker

    def __call__(self, items: Sequence[tuple[TrainExample, list[str], list[float] | None]]) -> dict[str, Any]:
        pairs = [(ex.query, p) for ex, group, _ in items for p in group]
        seqs = self.reranker.tokenize(pairs)
        return {**_tensors("", seqs, self.reranker.tokenizer.pad_id), **_teacher(items)}


def _examples(data: str | Path | Sequence[TrainExample]) -> list[TrainExample]:
    if isinstance(data, str | Path):
        return load_train_data(data)
    out = list(data)
    for i, ex in enumerate(out):
        if not isinstance(ex, TrainExample):
            raise InputError(f"data[{i}] is {type(ex).__name__}, expected a TrainExample")
    return out


def _run(
    model: nn.Module,
    dataset: GroupDataset,
    collator: Any,
    cfg: TrainConfig,
    output: Path,
    save: Any,
) -> TrainResult:
    """Train with the transformers Trainer, then save atomically on the main process."""
    from transformers import Trainer, TrainingArguments

    class _Trainer(Trainer):
        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            folder = Path(output_dir or str(self.args.output_dir))
            folder.mkdir(parents=True, exist_ok=True)
            save(folder)

    work = (
        Path(tempfile.mkdtemp(prefix="bgekit-train-"))
        if cfg.save_steps is None
        else output.with_name(output.name + "-checkpoints")
    )
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    precision = training_precision(cfg.precision)
    # transformers 5 reads a fraction from warmup_steps; 4.x has warmup_ratio for it.
    fields = TrainingArguments.__dataclass_fields__
    warmup: dict[str, Any] = {"warmup_ratio" if "warmup_ratio" in fields else "warmup_steps": cfg.warmup}
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        **warmup,
        weight_decay=cfg.weight_decay,
        gradient_accumulation_steps=cfg.grad_accum,
        seed=cfg.seed,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=not progress,
        deepspeed=cfg.deepspeed,
        ddp_find_unused_parameters=False,
        dataloader_drop_last=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # torchrun on CPUs: gloo data parallel
    )
    trainer = _Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    start = time.perf_counter()
    try:
        state = trainer.train()
    finally:
        if cfg.save_steps is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    if trainer.is_world_process_zero():
        with atomic_dir(output, overwrite=cfg.overwrite) as tmp:
            save(tmp)
    trainer.accelerator.wait_for_everyone()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return TrainResult(
        output,
        int(state.global_step),
        seconds,
        losses[-1] if losses else None,
        list(trainer.state.log_history),
    )


def load_for_training(
    model: str, examples: Sequence[TrainExample], cfg: EmbedderTrainConfig, engine: EngineConfig
) -> Embedder:
    """The embedder a run trains, on a training engine. The run's lengths, instruction and
    query format become its settings, so that training tokenises as inference does (and
    the embedder checks them against the model); an unknown task fails before training."""
    from bgekit.models.adapters import is_adapter_folder

    if is_adapter_folder(model):
        raise InputError(
            f"{model} is a LoRA adapter; train from its base, or from a merged model "
            "(what training with --merge writes under OUTPUT/merged)"
        )
    settings = EmbedderSettings(
        query_max_length=cfg.query_max_length,
        passage_max_length=cfg.passage_max_length,
        query_instruction=cfg.query_instruction,
        query_format=cfg.query_format,
    )
    emb = Embedder.from_pretrained(model, settings=settings, engine=engine)
    for task in sorted({ex.task for ex in examples if ex.task is not None}):
        emb.prompts.pick(task)  # names the model's tasks
    return emb


def train_embedder(
    model: str,
    data: str | Path | Sequence[TrainExample],
    output: str | Path,
    config: EmbedderTrainConfig | None = None,
) -> TrainResult:
    """Fine-tune an embedder and save it to ``output`` (loadable with ``Embedder.from_pretrained``)."""
    cfg = config or EmbedderTrainConfig()
    if cfg.adapted:  # LoRA, in-context examples, added tokens: the decoder embedders' recipes
        from bgekit.train.decoder import train_adapted_embedder

        return train_adapted_embedder(model, data, output, cfg)
    out = Path(output)
    check_output_dir(out, overwrite=cfg.overwrite)  # fail before training, not after
    examples = _examples(data)
    check_for_training(examples, cfg.group_size)
    # the inference modules, in exact fp32 (see EmbedderTrainModel)
    emb = load_for_training(model, examples, cfg, TRAINING_ENGINE)
    info = emb.info
    source = Path(info.path)
    module = emb.torch_module()  # the inference modules themselves: backbone and heads
    assert isinstance(module, EncoderWithHeads)
    torch.manual_seed(cfg.seed)
    colbert, sparse = module.colbert_linear, module.sparse_linear
    hidden = info.hidden_size
    if cfg.m3 and (colbert is None or sparse is None):
        logger.info("%s has no M3 heads; adding freshly initialised sparse and multi-vector heads", model)
        colbert = nn.Linear(hidden, cfg.multivector_dim or hidden)
        sparse = nn.Linear(hidden, 1)
    if not cfg.m3:
        colbert = sparse = None
    module = EncoderWithHeads(module.backbone, colbert, sparse)
    backbone = module.backbone
    assert isinstance(backbone, TransformersBackbone)
    for (
        name,
        param,
    ) in backbone.named_parameters():  # not part of any loss: frozen, so DDP sees no unused parameter
        if ".pooler." in f".{name}":
            param.requires_grad_(False)
    if cfg.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    model_vocab = int(getattr(getattr(backbone.model, "config", None), "vocab_size", 0) or 0)
    train_model = EmbedderTrainModel(
        module,
        pooling=info.pooling,
        normalize=info.normalize,
        temperature=cfg.temperature,
        group_size=cfg.group_size,
        special_ids=emb.tokenizer.special_ids,
        vocab_size=max(emb.tokenizer.vocab_size, model_vocab),
        cross_device_negatives=cfg.cross_device_negatives,
        self_distill=cfg.self_distill,
    )
    collator = EmbedderCollator(emb)

    def save(folder: Path) -> None:
        train_model.save(folder)
        copy_metadata(source, folder, embedder=True)

    return _run(train_model, GroupDataset(examples, cfg.group_size, cfg.seed), collator, cfg, out, save)


def train_reranker(
    model: str,
    data: str | Path | Sequence[TrainExample],
    output: str | Path,
    config: RerankerTrainConfig | None = None,
) -> TrainResult:
    """Fine-tune a cross-encoder (or start one from an encoder checkpoint, adding a fresh
    one-logit head) and save it to ``output`` (loadable with ``Reranker.from_pretrained``);
    an LLM reranker (yes/no or layer-wise) trains a LoRA adapter (``config.lora``), saved
    to ``output`` with its base's name (and merged under ``output/merged`` on request)."""
    cfg = config or RerankerTrainConfig()
    out = Path(output)
    check_output_dir(out, overwrite=cfg.overwrite)  # fail before training, not after
    examples = _examples(data)
    check_for_training(examples, cfg.group_size)
    from bgekit.train.llm_reranker import llm_variant, train_llm_reranker

    variant = llm_variant(model)
    if variant is not None:  # yes/no and layer-wise LLM rerankers: LoRA on the LLM scorers
        return train_llm_reranker(model, variant, examples, out, cfg)
    if cfg.lora is not None or cfg.start_layer is not None or cfg.special_tokens:
        raise InputError(
            f"{model} is a cross-encoder: lora, start_layer and special_tokens are for LLM rerankers"
        )
    torch.manual_seed(cfg.seed)  # a fresh head is drawn as the model loads
    # the inference loader itself: the same checked weights, and the Reranker tokenises as
    # inference does
    reranker = load_reranker(
        model, max_length=cfg.max_length, query_max_length=cfg.query_max_length, training=True
    )
    source = Path(reranker.info.path)
    module = reranker.torch_module()
    assert isinstance(module, CrossEncoderForward) and isinstance(module.backbone, TransformersBackbone)
    if cfg.gradient_checkpointing:
        module.backbone.enable_gradient_checkpointing()
    train_model = RerankerTrainModel(
        module, group_size=cfg.group_size, teacher_temperature=cfg.teacher_temperature
    )

    def save(folder: Path) -> None:
        train_model.save(folder)
        copy_metadata(source, folder, embedder=False)

    collator = RerankerCollator(reranker)
    return _run(train_model, GroupDataset(examples, cfg.group_size, cfg.seed), collator, cfg, out, save)
