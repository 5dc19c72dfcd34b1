"""LoRA fine-tuning of LLM rerankers, as the reference's decoder-only recipes
(FlagEmbedding ``finetune/reranker/decoder_only/{base,layerwise}``) do it, on bgekit's own
scoring modules (:class:`~bgekit.models.llm_reranker.YesNoScorer`,
:class:`~bgekit.models.llm_reranker.LayerwiseScorer`: one forward, the pairs tokenised by
the :class:`~bgekit.models.llm_reranker.PairFormat` inference uses).

- yes/no (bge-reranker-v2-gemma, any ``*ForCausalLM``): the score is the "Yes" logit at
  the last token. Loss: cross-entropy over each group (positive first), plus, with
  teacher scores, the soft cross-entropy to ``softmax(teacher / teacher_temperature)``
  (1 by default, as the reference).
- layer-wise (bge-reranker-v2-minicpm-layerwise): one score per layer from
  ``start_layer`` to the last. Loss: the group cross-entropy summed over those layers,
  plus, with teacher scores, every layer's soft cross-entropy to ``softmax(teacher)``;
  without, the last layer's softmax (detached) teaches each earlier layer. The per-layer
  heads stay frozen, as in the reference's recipe from the fine-tuned model (LoRA on
  q/k/v/o, nothing in ``modules_to_save``).

bgekit runs MiniCPM with its residual scale ``r`` folded into ``o_proj`` / ``down_proj``;
their LoRA pairs train with alpha ``alpha * r`` (the pairs learn as the reference's, whose
LoRA output is scaled by ``r``) and are saved with ``alpha``: the adapter is the
checkpoint's own (peft loads it onto the reference model; bgekit merges it before folding).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine import TokenBatch
from bgekit.errors import InputError
from bgekit.models.adapters import EMBEDDINGS, merge_adapter, read_adapter
from bgekit.models.llm_checkpoints import minicpm_layout, minicpm_residual_scale
from bgekit.models.llm_reranker import (
    YES_NO_PROMPT,
    LayerwiseScorer,
    PairFormat,
    ScoreSettings,
    YesNoScorer,
    load_scorer,
)
from bgekit.models.loading import read_folder, resolve_model_dir
from bgekit.models.registry import RerankerVariant, lookup
from bgekit.models.reranker import reranker_lengths, reranker_variant
from bgekit.models.runtime import quiet_hf_bars, quiet_hf_load
from bgekit.models.tokenizer import TextTokenizer, tokenizer_files
from bgekit.train.data import TrainExample
from bgekit.train.lora import LoraSettings, add_lora, save_adapter, save_merged
from bgekit.train.losses import soft_cross_entropy, teacher_distribution
from bgekit.train.trainer import GroupDataset, RerankerTrainConfig, TrainResult, _run, _teacher, _tensors
from bgekit.types import TokenSeq

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_SCALED = ("o_proj", "down_proj")  # MiniCPM scales these layers' outputs by r


def llm_reranker_loss(
    scores: torch.Tensor, group_size: int, teacher_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference's LLM-reranker loss from ``scores`` ``(n * g, layers)`` (one column for
    a yes/no model; a layer-wise model's layers ascending): per layer, cross-entropy over
    each group with its positive (first) as target, summed over layers; plus the soft
    cross-entropy of every layer to ``teacher_probs`` ``(n, g)`` when given, else, with
    several layers, of each layer but the last to the last layer's detached softmax."""
    if scores.ndim != 2 or scores.shape[0] % group_size:
        raise ValueError(f"scores {tuple(scores.shape)} are not (n * {group_size}, layers)")
    grouped = scores.float().view(-1, group_size, scores.shape[1])
    target = torch.zeros(grouped.shape[0], dtype=torch.long, device=scores.device)
    layers = [grouped[:, :, i] for i in range(grouped.shape[2])]
    loss = sum((F.cross_entropy(s, target) for s in layers), torch.zeros((), device=scores.device))
    if teacher_probs is not None:
        teacher = teacher_probs.to(scores.device, torch.float32)
        loss = loss + sum(soft_cross_entropy(s, teacher) for s in layers)
    elif len(layers) > 1:
        last = torch.softmax(layers[-1].detach(), dim=-1)
        loss = loss + sum(soft_cross_entropy(s, last) for s in layers[:-1])
    return loss


class LLMRerankerTrainModel(nn.Module):
    """An LLM scorer (with its LoRA pairs) returning the loss of a batch of groups;
    ``layers``: the layer-wise model's scored layers (empty for yes/no)."""

    def __init__(
        self,
        scorer: YesNoScorer | LayerwiseScorer,
        *,
        group_size: int,
        layers: Sequence[int] = (),
        teacher_temperature: float = 1.0,
    ):
        super().__init__()
        if isinstance(scorer, LayerwiseScorer) != bool(layers):
            raise ValueError("a layer-wise scorer trains on its layers; a yes/no scorer on none")
        self.scorer = scorer
        self.group_size = group_size
        self.layers = tuple(layers)
        self.teacher_temperature = teacher_temperature

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """``(pairs, layers)``: what inference scores, in one forward."""
        batch = TokenBatch.from_padded(input_ids, attention_mask, token_type_ids)
        settings = ScoreSettings(cutoff_layers=self.layers) if self.layers else None
        return self.scorer(batch, settings)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        teacher_scores: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        scores = self.scores(input_ids, attention_mask, token_type_ids)
        teacher = teacher_distribution(teacher_scores, self.teacher_temperature)
        return {"loss": llm_reranker_loss(scores, self.group_size, teacher), "logits": scores}


@dataclass(frozen=True)
class LLMRerankerCollator:
    """Tokenises each group's pairs with the model's :class:`PairFormat` (a line's
    ``prompt`` replaces the yes/no prompt, as in the reference's data)."""

    pair_format: PairFormat

    def __call__(self, items: Sequence[tuple[TrainExample, list[str], list[float] | None]]) -> dict[str, Any]:
        by_prompt: dict[str | None, list[int]] = {}
        for i, (ex, _, _) in enumerate(items):
            by_prompt.setdefault(ex.prompt, []).append(i)
        groups: list[list[TokenSeq]] = [[] for _ in items]
        for prompt, rows in by_prompt.items():
            fmt = self.pair_format if prompt is None else dataclasses.replace(self.pair_format, prompt=prompt)
            seqs = fmt.tokenize([(items[i][0].query, p) for i in rows for p in items[i][1]])
            at = 0
            for i in rows:
                groups[i] = seqs[at : at + len(items[i][1])]
                at += len(items[i][1])
        flat = [s for group in groups for s in group]
        return {**_tensors("", flat, self.pair_format.tokenizer.pad_id), **_teacher(items)}


def llm_variant(model: str) -> RerankerVariant | None:
    """The LLM reranker kind ``model`` is (``None``: a cross-encoder or an encoder)."""
    path = resolve_model_dir(model)
    known = lookup(model, str(path))
    variant = reranker_variant(read_folder(path), known[1].reranker_variant if known else None)
    return None if variant in (None, "cross_encoder") else variant


@dataclass
class LLMRerankerRun:
    """What a run trains and how it saves: the training model, its collator, the peft
    wrapper (whose LoRA pairs the model runs) and the save of an output folder."""

    model: LLMRerankerTrainModel
    collator: LLMRerankerCollator
    wrapped: nn.Module
    save: Callable[[Path], None]
    work: Path | None = None  # the tokenizer with added tokens, until the run ends

    def close(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


def _check(model: str, variant: RerankerVariant, cfg: RerankerTrainConfig) -> LoraSettings:
    if cfg.lora is None:
        raise InputError(
            f"{model} is a {variant} LLM reranker, fine-tuned with LoRA: set lora=LoraSettings(...) "
            "(bgekit train reranker --lora)"
        )
    if variant == "lightweight":
        raise InputError(
            f"{model}: bgekit fine-tunes yes/no and layer-wise LLM rerankers, not the lightweight one"
        )
    if cfg.lora.modules_to_save:
        raise InputError(
            "modules_to_save is not supported for LLM rerankers: their heads stay frozen and only "
            "the LoRA pairs train (the reference's recipes)"
        )
    if variant != "layerwise" and cfg.start_layer is not None:
        raise InputError(f"start_layer is for layer-wise rerankers; {model} is a {variant} reranker")
    return cfg.lora


def _with_tokens(path: Path, special_tokens: Sequence[str]) -> Path:
    """A temporary copy of the base's tokenizer with ``special_tokens`` added."""
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="bgekit-tokenizer-"))
    with quiet_hf_load():  # a layer-wise checkpoint's config is a model type transformers lacks
        hf = AutoTokenizer.from_pretrained(str(path))
    hf.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    hf.save_pretrained(str(work))
    return work


def prepare_llm_reranker(model: str, variant: RerankerVariant, cfg: RerankerTrainConfig) -> LLMRerankerRun:
    """Load ``model`` in the training precision (no fp32 copy of a bf16 run), add LoRA
    pairs and build the run (see the module docstring)."""
    settings = _check(model, variant, cfg)
    path = resolve_model_dir(model)
    meta = read_folder(path)
    config = meta.config
    max_length, q_max = reranker_lengths(meta, cfg.max_length, cfg.query_max_length)
    work = _with_tokens(path, cfg.special_tokens) if cfg.special_tokens else None
    tokenizer_dir = work or path
    tokenizer = TextTokenizer.from_folder(tokenizer_dir, with_type_ids=True)
    dtype = _DTYPES[cfg.precision]
    scorer, root = load_scorer(path, config, variant, tokenizer, dtype=dtype)
    embeddings: Any = root.get_input_embeddings()  # type: ignore[operator]
    resized = tokenizer.vocab_size > embeddings.weight.shape[0]
    if resized:
        with quiet_hf_load():  # transformers says how it draws the new rows, every time
            root.resize_token_embeddings(tokenizer.vocab_size)  # type: ignore[operator]
    hf_model: Any = root if variant == "yes_no" else getattr(root, "model")  # noqa: B009
    hf_model.config.use_cache = False  # a training forward keeps no key/value cache
    layers: tuple[int, ...] = ()
    alphas: dict[str, float] = {}
    if isinstance(scorer, LayerwiseScorer):
        allowed = scorer.allowed_cutoffs()
        start = scorer.start_layer if cfg.start_layer is None else cfg.start_layer
        if start not in allowed:
            raise InputError(
                f"start_layer {start} is not a scored layer of {model}; choose from {allowed[0]}..{allowed[-1]}"
            )
        layers = tuple(c for c in allowed if c >= start)
        r = minicpm_residual_scale(config)
        alphas = {name: settings.alpha * r for name in _SCALED if name in settings.target_modules}
    torch.manual_seed(cfg.seed)  # the LoRA pairs' initial A
    wrapped = add_lora(
        root, settings, "CAUSAL_LM" if variant == "yes_no" else "FEATURE_EXTRACTION", alpha_pattern=alphas
    )
    if cfg.gradient_checkpointing:  # non-reentrant: the frozen embeddings need no gradient
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fmt = PairFormat(tokenizer, q_max, max_length, YES_NO_PROMPT, isinstance(scorer, LayerwiseScorer))

    def save(folder: Path) -> None:
        save_adapter(wrapped, folder, base=model, base_path=path, kind="reranker", resized=resized)
        if variant == "layerwise":
            _as_checkpoint_adapter(folder, config)
        for f in tokenizer_files(tokenizer_dir):
            shutil.copy2(f, folder / f.name)
        if settings.merge:
            merged = folder / "merged"
            if variant == "layerwise":
                _save_merged_layerwise(path, config, folder, merged, dtype)
            else:
                with quiet_hf_bars():
                    save_merged(wrapped, merged, dtype)
            for f in tokenizer_files(tokenizer_dir):
                shutil.copy2(f, merged / f.name)

    train_model = LLMRerankerTrainModel(
        scorer, group_size=cfg.group_size, layers=layers, teacher_temperature=cfg.teacher_temperature
    )
    return LLMRerankerRun(train_model, LLMRerankerCollator(fmt), wrapped, save, work)


def _as_checkpoint_adapter(folder: Path, config: dict[str, Any]) -> None:
    """Make a layer-wise adapter the checkpoint's own: alphas without the training-time
    residual scale, a causal LM's task (the reference's model class), and added-token
    embeddings without the folded ``scale_emb``."""
    path = folder / "adapter_config.json"
    adapter = json.loads(path.read_text(encoding="utf-8"))
    adapter["alpha_pattern"] = {
        k: v for k, v in (adapter.get("alpha_pattern") or {}).items() if k not in _SCALED
    }
    adapter["task_type"] = "CAUSAL_LM"
    path.write_text(json.dumps(adapter, indent=2, sort_keys=True), encoding="utf-8")
    if (folder / EMBEDDINGS).is_file():
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / EMBEDDINGS))
        state["input_embeddings"] = state["input_embeddings"] / float(config.get("scale_emb", 1.0))
        save_file(state, str(folder / EMBEDDINGS))


def _save_merged_layerwise(
    path: Path, config: dict[str, Any], adapter_folder: Path, folder: Path, dtype: torch.dtype
) -> None:
    """The checkpoint with the saved adapter merged in, in its own layout (MiniCPM names,
    scalings not folded): what ``Reranker.from_pretrained`` loads like the original."""
    from safetensors.torch import save_file

    layout = minicpm_layout(path, config, dtype=dtype)
    merge_adapter(read_adapter(adapter_folder), layout)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in layout.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    merged_config = {**config, "vocab_size": int(state["model.embed_tokens.weight"].shape[0])}
    (folder / "config.json").write_text(json.dumps(merged_config, indent=2), encoding="utf-8")


def train_llm_reranker(
    model: str,
    variant: RerankerVariant,
    examples: Sequence[TrainExample],
    output: Path,
    cfg: RerankerTrainConfig,
) -> TrainResult:
    """Train a LoRA adapter of an LLM reranker (what ``train_reranker`` runs for one)."""
    run = prepare_llm_reranker(model, variant, cfg)
    try:
        return _run(
            run.model, GroupDataset(examples, cfg.group_size, cfg.seed), run.collator, cfg, output, run.save
        )
    finally:
        run.close()
