"""LLM rerankers: yes/no (bge-reranker-v2-gemma), layer-wise early exit
(bge-reranker-v2-minicpm-layerwise) and layer-wise with token compression
(bge-reranker-v2.5-gemma2-lightweight), following the reference implementation's code.

Input per pair: ``[bos] + tok("A: " + query)[:query_max] + tok("\\n") + tok("B: " + passage)``
(the passage cut so that this part holds at most ``max_length + len(sep) + len(prompt)``
tokens) ``+ tok("\\n") + tok(prompt)``. The score is read at the last real token: the "Yes"
logit (yes/no), or a per-layer head on the final-normed hidden state after ``c`` decoder
layers (layer-wise). Token segments (query+separator / passage / separator+prompt) travel
as the token type ids of each sequence, so batches carry them through the engine
(:class:`~bgekit.models.llm_pairs.PairFormat`, which fine-tuning tokenises with too).

The backbones are transformers' own decoder layers (:mod:`bgekit.models.llm_checkpoints`
loads them). The two scorers are :class:`YesNoScorer` and :class:`LayerwiseScorer` (the
lightweight model is a layer-wise scorer that also compresses passage tokens).
:func:`load_scorer` builds them for scoring and for fine-tuning, merging a LoRA adapter
into the checkpoint's own weights first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from bgekit.engine import EngineConfig, TokenBatch
from bgekit.engine.device import MatmulKind
from bgekit.errors import InputError, ModelFormatError
from bgekit.models.adapters import Adapter, merge_adapter
from bgekit.models.kernels import patch_linears
from bgekit.models.llm_checkpoints import costwise_as_gemma2, fold_minicpm_scalings, minicpm_layout
from bgekit.models.llm_pairs import (
    LIGHTWEIGHT_PROMPT,
    PROMPT_SEGMENT,
    QUERY_SEGMENT,
    YES_NO_PROMPT,
    PairFormat,
)
from bgekit.models.llm_pairs import (
    PASSAGE_SEGMENT as PASSAGE_SEGMENT,  # re-exported: the segments are this module's API too
)
from bgekit.models.loading import FolderMeta, weights_file
from bgekit.models.registry import RerankerVariant
from bgekit.models.reranker import Reranker, WindowParts, register_reranker_builder
from bgekit.models.runtime import load_pretrained
from bgekit.models.tokenizer import TextTokenizer, tokenizer_files
from bgekit.types import ModelInfo, TokenSeq

_T = TypeVar("_T")


# -- token compression and FLOPs ------------------------------------------------------------


def compress_tokens(
    hidden: torch.Tensor, mask: torch.Tensor, query_len: torch.Tensor, prompt_len: torch.Tensor, ratio: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pool each row's passage tokens in consecutive groups of ``ratio`` (a last short
    group averages what it has); query tokens before and prompt tokens after are kept. Rows
    are right-padded; returns the new hidden states and mask (right-padded again)."""
    rows = []
    lengths = mask.sum(dim=1).tolist()
    for b, n in enumerate(lengths):
        q, r = int(query_len[b]), int(prompt_len[b])
        p = n - q - r
        passage = hidden[b, q : q + p]
        groups = math.ceil(p / ratio)
        pad = groups * ratio - p
        summed = torch.cat([passage, passage.new_zeros(pad, passage.shape[1])]).view(groups, ratio, -1).sum(1)
        counts = torch.full((groups, 1), float(ratio), dtype=hidden.dtype, device=hidden.device)
        if pad:
            counts[-1] = ratio - pad
        rows.append(torch.cat([hidden[b, :q], summed / counts, hidden[b, q + p : n]]))
    width = max(len(x) for x in rows)
    out = hidden.new_zeros(len(rows), width, hidden.shape[2])
    new_mask = mask.new_zeros(len(rows), width)
    for b, x in enumerate(rows):
        out[b, : len(x)] = x
        new_mask[b, : len(x)] = 1
    return out, new_mask


def layer_flops(config: Any, tokens: int) -> float:
    """Multiply-add FLOPs (x2) of one decoder layer over a sequence of ``tokens`` tokens:
    q/k/v/o projections, the gated MLP, and the attention products (causal: half of L^2)."""
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    kv = int(getattr(config, "num_key_value_heads", heads) or heads)
    proj = 2 * tokens * h * head_dim * (2 * heads + 2 * kv)
    mlp = 2 * tokens * 3 * h * int(config.intermediate_size)
    attn = 2 * 2 * heads * head_dim * tokens * (tokens + 1) / 2
    return float(proj + mlp + attn)


@dataclass
class FlopCounter:
    """Decoder-layer FLOPs actually spent (from the real sequence lengths each layer ran on)."""

    flops: float = 0.0
    layer_calls: int = 0
    per_layer_tokens: list[int] = field(default_factory=list)

    def add(self, config: Any, lengths: Sequence[int]) -> None:
        self.flops += sum(layer_flops(config, n) for n in lengths)
        self.layer_calls += 1
        self.per_layer_tokens.append(int(sum(lengths)))


# -- the scoring module -----------------------------------------------------------------------


def _masks(mask: torch.Tensor, dtype: torch.dtype, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive 4-D masks (causal + padding; and the sliding-window variant)."""
    n = mask.shape[1]
    i = torch.arange(n, device=mask.device)
    causal = i[None, :] <= i[:, None]
    allowed = causal[None] & mask.bool()[:, None, :]
    low = torch.finfo(dtype).min
    full = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, low)[:, None]
    if window is None or window >= n:
        return full, full
    near = (i[:, None] - i[None, :]) < window
    sliding = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
        ~(allowed & near[None]), low
    )
    return full, sliding[:, None]


@dataclass(frozen=True)
class ScoreSettings:
    """What one scoring call asks of a layer-wise model: the layers to read (none: the
    last), and passage compression before ``compress_layers`` (ratio 1: none)."""

    cutoff_layers: tuple[int, ...] = ()
    compress_ratio: int = 1
    compress_layers: tuple[int, ...] = ()


class _DecoderScorer(nn.Module):
    """A transformers decoder and the cap on its scores; switchable CPU kernels (FastPath)."""

    layerwise = False
    compresses = False

    def __init__(self, base: nn.Module, softcap: float | None):
        super().__init__()
        self.base = base
        self.softcap = softcap

    def _cap(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / self.softcap) * self.softcap if self.softcap else x

    def set_matmul(self, kind: MatmulKind) -> int:
        return patch_linears(self.base, kind)

    def hidden(self, batch: TokenBatch) -> torch.Tensor:
        """The decoder's last hidden states as flat rows (run on the batch's padded view)."""
        base: Any = self.base
        view = batch.padded()
        return batch.unpad(
            base(input_ids=view.input_ids, attention_mask=view.attention_mask).last_hidden_state
        )


class YesNoScorer(_DecoderScorer):
    """The "Yes" logit at the last real token (bge-reranker-v2-gemma, any causal LM): only
    that row of the LM head is computed."""

    def __init__(self, base: nn.Module, yes_row: torch.Tensor, softcap: float | None = None):
        super().__init__(base, softcap)
        self.yes_row = nn.Parameter(yes_row, requires_grad=False)

    def forward(
        self, batch: TokenBatch, settings: ScoreSettings | None = None, counter: FlopCounter | None = None
    ) -> torch.Tensor:
        """``(rows, 1)``: the Yes logit."""
        if batch.padding_side != "right":
            raise ModelFormatError("LLM rerankers run on right-padded batches")
        last = self.hidden(batch)[batch.last]
        return self._cap(last @ self.yes_row)[:, None]


class LayerwiseScorer(_DecoderScorer):
    """Runs the decoder layer by layer: records the final-normed state at the requested
    cutoff layers, stops after the deepest one, and — when ``compresses`` (the lightweight
    model) — mean-pools passage tokens before the layers in ``compress_layers``.

    ``head_per_request``: the reference reads head ``c - start_layer`` for cutoff ``c``
    (layer-wise MiniCPM) but, for the lightweight model, the i-th head for the i-th
    requested layer; published scores depend on it."""

    layerwise = True

    def __init__(
        self,
        base: nn.Module,
        heads: torch.Tensor,
        *,
        start_layer: int,
        layer_sep: int = 1,
        softcap: float | None = None,
        compresses: bool = False,
        head_per_request: bool = False,
    ):
        super().__init__(base, softcap)
        self.heads = nn.Parameter(heads, requires_grad=False)
        self.start_layer = start_layer
        self.layer_sep = layer_sep
        self.compresses = compresses
        self.head_per_request = head_per_request

    @property
    def num_layers(self) -> int:
        return int(getattr(self.base, "config").num_hidden_layers)  # noqa: B009

    def allowed_cutoffs(self) -> list[int]:
        return list(range(self.start_layer, self.num_layers + 1, self.layer_sep))

    def forward(
        self, batch: TokenBatch, settings: ScoreSettings | None = None, counter: FlopCounter | None = None
    ) -> torch.Tensor:
        """``(rows, layers)``: one score per requested layer (ascending; none asked: the last).
        ``counter`` adds up the decoder FLOPs the layer loop spends."""
        if batch.padding_side != "right":
            raise ModelFormatError("LLM rerankers run on right-padded batches")
        view = batch.padded()  # the layer loop runs transformers' decoder layers on padded rows
        assert view.token_type_ids is not None
        settings = settings or ScoreSettings()
        base: Any = self.base
        cfg = base.config
        cutoffs = sorted(set(settings.cutoff_layers or (self.num_layers,)))
        deepest = cutoffs[-1]
        types = view.token_type_ids
        mask = view.attention_mask
        query_len = (types == QUERY_SEGMENT).logical_and(mask.bool()).sum(dim=1)
        prompt_len = (types == PROMPT_SEGMENT).logical_and(mask.bool()).sum(dim=1)
        hidden = base.embed_tokens(view.input_ids)
        window = getattr(cfg, "sliding_window", None)
        layer_types = getattr(cfg, "layer_types", None)
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        compress = settings.compress_ratio != 1
        fresh = True
        for idx in range(self.num_layers):
            if idx in cutoffs:
                records.append((base.norm(hidden), mask))
            if idx == deepest:
                break
            if compress and idx in settings.compress_layers and idx != 0:
                hidden, mask = compress_tokens(hidden, mask, query_len, prompt_len, settings.compress_ratio)
                fresh = True
            if fresh:  # positions restart at 0 and masks follow the (possibly new) layout
                positions = torch.arange(hidden.shape[1], device=hidden.device)[None].expand(
                    hidden.shape[0], -1
                )
                rotary = base.rotary_emb(hidden, positions)
                full, sliding = _masks(mask, hidden.dtype, window)
                fresh = False
            sliding_layer = layer_types is not None and layer_types[idx] == "sliding_attention"
            hidden = base.layers[idx](
                hidden,
                attention_mask=sliding if sliding_layer else full,
                position_ids=positions,
                position_embeddings=rotary,
            )
            if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
                hidden = hidden[0]
            if counter is not None:
                counter.add(cfg, mask.sum(dim=1).tolist())
        if deepest == self.num_layers:
            records.append((base.norm(hidden), mask))
        scores = []
        for i, (state, m) in enumerate(records):
            last = state[torch.arange(state.shape[0]), m.sum(dim=1) - 1]
            head = i if self.head_per_request else cutoffs[i] - self.start_layer
            scores.append(self._cap(last @ self.heads[head]))
        return torch.stack(scores, dim=1)


DecoderScorer = YesNoScorer | LayerwiseScorer


class _ScoreRunner:
    def __init__(
        self,
        model: YesNoScorer | LayerwiseScorer,
        device: torch.device,
        settings: ScoreSettings,
        counter: FlopCounter,
    ):
        self.model = model
        self._device = device
        self.settings = settings
        self.counter = counter

    @property
    def device(self) -> torch.device:
        return self._device

    def __call__(self, batch: TokenBatch) -> list[tuple[float, ...]]:
        scores = self.model(batch, self.settings, self.counter)
        return [tuple(row) for row in scores.float().cpu().tolist()]


class LLMReranker(Reranker):
    """Scores pairs with a decoder LLM (see the module docstring). ``score`` takes
    ``cutoff_layers`` (layer-wise models: one score list per layer), and ``compress_ratio``
    / ``compress_layers`` (lightweight model). Loaded by :func:`bgekit.models.reranker.load_reranker`."""

    prompt: str = YES_NO_PROMPT
    last_flops: FlopCounter | None = None

    @property
    def scorer(self) -> YesNoScorer | LayerwiseScorer:
        module = self.torch_module()
        assert isinstance(module, YesNoScorer | LayerwiseScorer)
        return module

    def pair_format(self) -> PairFormat:
        """How this model lays out pairs (its lengths and current ``prompt``)."""
        return PairFormat(
            self.tokenizer,
            self.info.query_max_length,
            self.max_pair_length,
            self.prompt,
            self.scorer.layerwise,
        )

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[TokenSeq]:
        return self.pair_format().tokenize(pairs)

    def can_window(self) -> bool:
        return True  # pairs are built from token ids already

    def _window_parts(self, queries: Sequence[str], passages: Sequence[str]) -> list[WindowParts]:
        return self.pair_format().window_parts(queries, passages)

    def _pair_seq(self, query: list[int], passage: list[int]) -> TokenSeq:
        fmt = self.pair_format()
        return fmt.layout(query, fmt.sep() + passage, False)

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        normalize: bool = False,
        cutoff_layers: Sequence[int] | None = None,
        compress_ratio: int = 1,
        compress_layers: Sequence[int] = (8,),
    ) -> np.ndarray:
        """Scores, shape ``(pairs,)``, or ``(layers, pairs)`` when several ``cutoff_layers``
        are asked for (ascending order). Sigmoid when ``normalize``."""
        layers = self._check_layers(self.scorer, cutoff_layers)
        if compress_ratio != 1:
            if not self.scorer.compresses:
                raise InputError("token compression (compress_ratio) needs the lightweight reranker")
            if compress_ratio < 1:
                raise InputError(f"compress_ratio must be at least 1, got {compress_ratio}")
        settings = ScoreSettings(layers, compress_ratio, tuple(int(c) for c in compress_layers))
        plan = self.prepare(pairs)
        out = plan.combine(self._run(plan.seqs, settings)).T
        if normalize:
            out = 1.0 / (1.0 + np.exp(-out))
        return out[0] if out.shape[0] == 1 else out

    def score_tokens(self, seqs: Sequence[TokenSeq], *, normalize: bool = False) -> np.ndarray:
        """Pre-tokenised pairs (from :meth:`tokenize`), scored at the model's last layer."""
        out = self._run(seqs, ScoreSettings())[:, -1]
        return 1.0 / (1.0 + np.exp(-out)) if normalize else out

    def _run(self, seqs: Sequence[TokenSeq], settings: ScoreSettings) -> np.ndarray:
        """``(pairs, outputs)`` float32 through the engine, one runner per replica;
        ``last_flops`` holds what the call spent."""
        counter = FlopCounter()
        self.last_flops = counter
        width = max(1, len(settings.cutoff_layers))
        if not seqs:
            return np.zeros((0, width), dtype=np.float32)
        runners = [
            _ScoreRunner(cast(YesNoScorer | LayerwiseScorer, model), device, settings, counter)
            for model, device in self._replicas
        ]
        rows = self._engine.run(list(seqs), runners, pad_id=self.tokenizer.pad_id, desc="reranking")
        return np.asarray(rows, dtype=np.float32)

    def _check_layers(
        self, scorer: YesNoScorer | LayerwiseScorer, cutoff_layers: Sequence[int] | None
    ) -> tuple[int, ...]:
        if cutoff_layers is None:
            return ()
        if not isinstance(scorer, LayerwiseScorer):
            raise InputError("cutoff_layers needs a layer-wise reranker")
        allowed = scorer.allowed_cutoffs()
        layers = tuple(sorted({int(c) for c in cutoff_layers}))
        bad = [c for c in layers if c not in allowed]
        if bad or not layers:
            raise InputError(
                f"cutoff layers {bad or list(cutoff_layers)} not available; choose from {allowed[0]}..{allowed[-1]}"
            )
        return layers


def _converted(convert: Callable[[], _T], path: Path) -> _T:
    """A converted checkpoint (MiniCPM, CostWise-Gemma); its errors name the weights file."""
    try:
        return convert()
    except ModelFormatError as e:
        if str(path) in str(e):
            raise
        raise ModelFormatError(f"{weights_file(path)}: {e}") from None


def load_scorer(
    path: Path,
    config: dict[str, Any],
    variant: RerankerVariant,
    tokenizer: TextTokenizer,
    *,
    dtype: torch.dtype = torch.float32,
    adapter: Adapter | None = None,
) -> tuple[YesNoScorer | LayerwiseScorer, nn.Module]:
    """The scoring module of ``variant`` from its folder, in ``dtype``, and the module whose
    parameter names are the checkpoint's (the causal LM; :class:`MiniCPMLayout`), which
    LoRA adapters name. ``adapter`` is merged into the checkpoint's weights first: before
    the MiniCPM scalings are folded in, so that the merged model is the adapted one.

    The yes/no model's weights are checked against its config (nothing left at random:
    the "Yes" row is read from the LM head)."""
    if variant == "layerwise":
        layout = _converted(lambda: minicpm_layout(path, config, dtype=dtype), path)
        if adapter is not None:
            merge_adapter(adapter, layout)
        fold_minicpm_scalings(layout.model, config)
        scorer = LayerwiseScorer(
            layout.model.eval(), layout.heads(), start_layer=int(config.get("start_layer", 8))
        )
        return scorer, layout
    if variant == "lightweight":
        if adapter is not None:
            raise ModelFormatError(
                f"{adapter.folder}: bgekit loads adapters of yes/no and layer-wise rerankers only"
            )
        base, heads = _converted(lambda: costwise_as_gemma2(path, config), path)
        lightweight = LayerwiseScorer(
            base,
            heads,
            start_layer=int(config.get("start_layer", 8)),
            layer_sep=int(config.get("layer_sep", 1)),
            softcap=config.get("final_logit_softcapping"),
            compresses=True,
            head_per_request=True,
        )
        return lightweight, base
    from transformers import AutoModelForCausalLM

    lm: Any = load_pretrained(AutoModelForCausalLM, path, attn_implementation="eager", dtype=dtype)
    if adapter is not None:
        merge_adapter(adapter, lm)
    yes = tokenizer.ids(["Yes"])[0]
    if not yes:
        raise ModelFormatError(f"{path}: the tokenizer has no token for 'Yes'")
    row = lm.get_output_embeddings().weight[yes[0]].detach().clone()
    return YesNoScorer(lm.get_decoder().eval(), row, softcap=config.get("final_logit_softcapping")), lm


def build_llm_reranker(
    name: str,
    path: Path,
    meta: FolderMeta,
    variant: RerankerVariant,
    info: ModelInfo,
    engine: EngineConfig | None,
    *,
    adapter: Adapter | None = None,
) -> LLMReranker:
    """An LLM reranker of ``variant`` from its folder (registered with the reranker loader);
    with ``adapter``, the base in ``path`` adapted (its tokenizer the adapter's own when it
    has one: added tokens)."""
    tokenizer_dir = adapter.folder if adapter is not None and tokenizer_files(adapter.folder) else path
    tokenizer = TextTokenizer.from_folder(tokenizer_dir, with_type_ids=True)
    scorer, _ = load_scorer(path, meta.config, variant, tokenizer, adapter=adapter)
    model = LLMReranker(scorer, tokenizer, info, engine)
    model.prompt = LIGHTWEIGHT_PROMPT if variant == "lightweight" else YES_NO_PROMPT
    return model


register_reranker_builder(("yes_no", "layerwise", "lightweight"), build_llm_reranker)
