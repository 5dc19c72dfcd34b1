"""Loading transformers weights and placing replicas on devices."""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine import Engine, EngineConfig, Precision, TokenBatch, resolve_device, resolve_precision
from bgekit.engine.device import DType
from bgekit.errors import BgekitError, ModelFormatError
from bgekit.models.kernels import Calibrated, fast_paths, kernel_counts
from bgekit.models.loading import key_mismatch, weights_error, weights_file
from bgekit.types import ModelInfo, TokenSeq

if TYPE_CHECKING:
    from typing_extensions import Self

    from bgekit.models.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


@contextmanager
def quiet_hf_bars() -> Iterator[None]:
    """No transformers progress bar inside the block (a bar per load or save is noise;
    bgekit shows its own on long work)."""
    from transformers.utils import logging as hf_logging

    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not bars_were_off:
            hf_logging.enable_progress_bar()


@contextmanager
def quiet_hf_load() -> Iterator[None]:
    """No transformers progress bars and no load report inside the block (what the report
    says becomes one error, see :func:`check_loading_info`)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with quiet_hf_bars():
            yield
    finally:
        hf_logging.set_verbosity(level)


def check_loading_info(
    path: Path, model: nn.Module, info: Mapping[str, Any], unused: Sequence[str] = ()
) -> None:
    """Refuse weights that do not cover ``model`` (transformers would initialise the rest at
    random) or hold more of it than ``config.json`` says (layers beyond its count), or a
    tensor of another shape. Keys outside the model (a pre-training head in a checkpoint
    loaded as an encoder) are what transformers drops on purpose; ``unused``: prefixes of
    the model's parameters (with or without the base model's prefix, ``bert.``) that bgekit
    never runs or initialises itself (may be missing)."""
    base = str(getattr(model, "base_model_prefix", ""))
    own = {name for name, _ in model.named_children()} | {base}

    def may_miss(key: str) -> bool:  # ``unused`` names parts of the base model without its prefix
        inner = key[len(base) + 1 :] if base and key.startswith(f"{base}.") else key
        return key.startswith(tuple(unused)) or inner.startswith(tuple(unused))

    missing = [k for k in info.get("missing_keys") or () if not may_miss(k)]
    unexpected = [k for k in info.get("unexpected_keys") or () if k.split(".", 1)[0] in own]
    # transformers lists (key, shape in the file, shape the config gives)
    wrong = [
        f"{m[0]} ({tuple(m[1])} in the file, {tuple(m[2])} in the model)"
        for m in info.get("mismatched_keys") or ()
    ]
    if missing or unexpected or wrong:
        n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        layers = f", {n} layers" if isinstance(n, int) else ""
        raise key_mismatch(
            weights_file(path),
            f"config.json ({type(model).__name__}{layers})",
            missing=missing,
            unexpected=unexpected,
            wrong_shape=wrong,
        )


def load_pretrained(
    auto_class: Any,
    path: Path,
    *,
    unused: Sequence[str] = (),
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> nn.Module:
    """``auto_class.from_pretrained(path, **kwargs)`` in ``dtype`` (fp32 for inference, whose
    kernels choose their own precision; training may load in the precision it trains in,
    with no fp32 copy), its weights checked against the config (:func:`check_loading_info`),
    any failure one :class:`ModelFormatError`."""
    try:
        with quiet_hf_load():
            model, info = auto_class.from_pretrained(
                str(path),
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )
    except Exception as e:  # transformers raises many types for a bad or unsafe checkpoint
        raise weights_error(path, e) from None
    check_loading_info(path, model, info, unused)
    return cast(nn.Module, model)


WeightsDtype = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingEngine(EngineConfig):
    """How fine-tuning builds the inference modules: the transformers forward (bgekit's
    packed forward and the bf16 / int8 CPU kernels are inference-only: no backward), the
    weights loaded straight in ``weights`` (a LoRA run's frozen base in the precision it
    trains in, with no fp32 copy first) and the model never placed: no device move, dtype
    conversion or kernel switch; the Trainer moves it."""

    device: str = "cpu"
    dtype: DType = "float32"
    backend: Literal["auto", "transformers"] = "transformers"
    progress: bool | None = False
    weights: WeightsDtype = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weights not in _WEIGHTS:
            raise ModelFormatError(
                f"training weights must be one of {', '.join(_WEIGHTS)}, got {self.weights!r}"
            )
        if self.backend != "transformers":
            raise ModelFormatError("training runs the transformers forward (backend='transformers')")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _WEIGHTS[self.weights]


_WEIGHTS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Exact fp32 training (full fine-tunes: the optimiser updates these weights themselves).
TRAINING_ENGINE = TrainingEngine()


def training_engine(weights: WeightsDtype = "float32") -> TrainingEngine:
    """The engine a training run loads its model on, with weights in ``weights``."""
    return TrainingEngine(weights=weights)


def load_dtype(engine: EngineConfig) -> torch.dtype:
    """What a model's weights are loaded in: the training precision on a
    :class:`TrainingEngine`, else fp32 (inference kernels choose their own precision when
    the model is placed)."""
    return engine.torch_dtype if isinstance(engine, TrainingEngine) else torch.float32


def load_transformers_model(
    path: Path, *, cross_encoder: bool, fresh_head: bool = False, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """The encoder (or sequence-classification model) on the CPU in ``dtype`` (fp32 unless
    a training run loads it in the precision it trains in), with SDPA attention. An encoder
    may lack the pooler (bgekit pools itself); a cross-encoder's classifies.
    ``fresh_head``: a cross-encoder from an encoder checkpoint, its one-logit head (and a
    BERT pooler the checkpoint lacks) freshly initialised from torch's RNG; the encoder's
    weights are still checked."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    if cross_encoder and fresh_head:
        model = load_pretrained(
            AutoModelForSequenceClassification,
            path,
            unused=("classifier.", "pooler."),
            dtype=dtype,
            num_labels=1,
            attn_implementation="sdpa",
        )
    elif cross_encoder:
        model = load_pretrained(
            AutoModelForSequenceClassification, path, dtype=dtype, attn_implementation="sdpa"
        )
    else:
        model = load_pretrained(AutoModel, path, unused=("pooler.",), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


# Texts the automatic fast path is checked on when a model loads: short and long (past
# 128 tokens, where attention takes the fused kernel), several scripts.
CHECK_TEXTS = (
    "what is the capital of france?",
    "BGE-M3 gives dense, sparse and multi-vector outputs from one forward pass.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "深度学习模型在检索任务中表现出色。",
    (
        "Vitamin D supplementation was associated with a lower risk of fractures in older adults "
        "living in care homes, but not in those living in the community; the effect depended on "
        "the dose, on calcium taken with it and on the level measured at the start of the trial. "
    )
    * 3,
)
# The gates (issue 11): pooled vectors within 0.9999 cosine of fp32; each token's state
# within 0.999 (what sparse weights and multi-vectors are computed from).
CHECK_POOLED_COSINE = 0.9999
CHECK_TOKEN_COSINE = 0.999


@dataclasses.dataclass(frozen=True)
class FastPathCheck:
    """Lowest cosines to fp32 on :data:`CHECK_TEXTS`: of pooled vectors (first token, last
    token, mean) and of single tokens' last hidden states."""

    pooled: float
    tokens: float

    @property
    def passed(self) -> bool:
        return self.pooled >= CHECK_POOLED_COSINE and self.tokens >= CHECK_TOKEN_COSINE

    def __str__(self) -> str:
        return f"cosine to fp32: pooled {self.pooled:.6f}, tokens {self.tokens:.5f}"


def check_against_fp32(module: nn.Module, seqs: Sequence[TokenSeq], pad_id: int, fast: str) -> FastPathCheck:
    """Switch ``module``'s backbones to ``fast`` kernels, comparing them with fp32 on ``seqs``."""
    device = next(module.parameters()).device
    batch = TokenBatch.from_seqs(list(seqs), device, pad_id=pad_id)
    pooled = tokens = 1.0
    with torch.inference_mode():
        for path in fast_paths(module):
            path.set_matmul("float32")
            ref = path.hidden(batch).float()
            path.set_matmul(fast)  # type: ignore[arg-type]
            got = path.hidden(batch).float()
            if getattr(path, "pooled", False):  # one vector per input: compare those
                pooled = min(pooled, float(F.cosine_similarity(ref, got, dim=-1).min()))
                continue
            for a, b in (
                (ref[batch.first], got[batch.first]),
                (ref[batch.last], got[batch.last]),
                (batch.sum_rows(ref), batch.sum_rows(got)),
            ):
                pooled = min(pooled, float(F.cosine_similarity(a, b, dim=-1).min()))
            tokens = min(tokens, float(F.cosine_similarity(ref, got, dim=-1).min()))
    return FastPathCheck(pooled, tokens)


def check_length(info: ModelInfo) -> int:
    """How many tokens of each check or calibration text are kept."""
    return min(info.passage_max_length, 256)


def calibration_texts(tokenizer: TextTokenizer, count: int = 32, seed: int = 0) -> list[str]:
    """What int8 kernels are calibrated on when the user gives no texts: :data:`CHECK_TEXTS`
    and ``count`` texts of random vocabulary tokens (10 to 200 each, special tokens left
    out). On all-MiniLM-L6-v2 64 such texts set activation ranges as well as 100 SciFact
    texts did (lowest cosine to fp32 on 500 others: 0.99880 against 0.99898)."""
    rng = random.Random(seed)
    special = tokenizer.special_ids
    vocab = [i for i in range(tokenizer.vocab_size) if i not in special]
    texts = [tokenizer.decode([rng.choice(vocab) for _ in range(rng.randint(10, 200))]) for _ in range(count)]
    return [*CHECK_TEXTS, *texts]


def calibrate_int8(module: nn.Module, seqs: Sequence[TokenSeq], pad_id: int) -> int:
    """Record activation ranges on ``seqs`` in every calibrated backbone of ``module`` and
    rebuild its int8 kernels with them. Returns how many backbones were calibrated."""
    device = next(module.parameters()).device
    batch = TokenBatch.from_seqs(list(seqs), device, pad_id=pad_id)
    count = 0
    for m in module.modules():
        if isinstance(m, Calibrated):
            m.calibrate(batch)
            count += 1
    for path in fast_paths(module):
        path.set_matmul("int8")
    return count


def set_cpu_kernels(
    module: nn.Module,
    precision: Precision,
    check: Sequence[TokenSeq] | None,
    pad_id: int,
    calibration: Sequence[TokenSeq] | None = None,
) -> Precision:
    """Switch a CPU replica's backbones to ``precision``'s kernels; an automatic choice is
    kept only if it passes the check against fp32 (else fp32, with the reason). int8
    kernels are smoothed with ranges recorded on ``calibration``."""
    kind = precision.matmul
    paths = fast_paths(module)
    if kind == "int8" and paths and calibration:
        calibrate_int8(module, calibration, pad_id)
        return precision
    if kind is None or not paths:
        if kind not in (None, "float32"):
            return Precision(torch.float32, None, f"{precision.label} not available for this model")
        return precision
    if precision.check and check:
        result = check_against_fp32(module, check, pad_id, kind)
        if not result.passed:
            for path in paths:
                path.set_matmul("float32")
            why = f"{precision.reason}, but bf16 matmuls failed the check ({result})"
            logger.debug("%s; running float32", why)
            return Precision(torch.float32, "float32", why)
        return dataclasses.replace(precision, reason=f"{precision.reason}; checked at load, {result}")
    for path in paths:
        path.set_matmul(kind)
    return precision


def place_replicas(
    module: nn.Module,
    config: EngineConfig,
    check: Sequence[TokenSeq] | None = None,
    pad_id: int = 0,
    calibration: Sequence[TokenSeq] | None = None,
) -> list[tuple[nn.Module, torch.device, Precision]]:
    """One replica per configured device, each at that device's precision (``check``: token
    sequences an automatic CPU fast path is compared against fp32 on; ``calibration``:
    what int8 kernels record activation ranges on)."""
    names = config.devices or (config.device,)
    devices = [resolve_device(d) for d in names]
    if len(set(devices)) != len(devices):
        raise ModelFormatError(f"devices listed twice: {list(names)}")
    out = []
    for i, dev in enumerate(devices):
        replica = module if i == 0 else copy.deepcopy(module)
        precision = resolve_precision(config.dtype, dev)
        replica.to(device=dev, dtype=precision.dtype)
        replica.eval()
        if dev.type == "cpu":
            precision = set_cpu_kernels(replica, precision, check, pad_id, calibration)
        out.append((replica, dev, precision))
    logger.debug("model placed on %s", ", ".join(f"{d} ({p.label})" for _, d, p in out))
    return out


class LoadedModel:
    """What every model kind holds: its info, tokenizer, engine and device replicas."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: TextTokenizer,
        info: ModelInfo,
        engine: EngineConfig | None = None,
        check: Sequence[TokenSeq] | None = None,
    ):
        self.info = info
        self.tokenizer = tokenizer
        self._engine = Engine(engine or EngineConfig())
        # what a fast path is checked on at load: CHECK_TEXTS, unless the model brings inputs
        # of its own (an image model adds an image, so its vision tower is checked too)
        if check is None:
            check = tokenizer.encode(list(CHECK_TEXTS), check_length(info))
        config = self._engine.config
        if isinstance(config, TrainingEngine):  # built for training: left as loaded
            why = "built for training: not placed, no CPU kernels"
            placed = [(model, torch.device("cpu"), Precision(config.torch_dtype, None, why))]
        else:
            calibration = None
            if config.dtype == "int8":
                calibration = tokenizer.encode(calibration_texts(tokenizer), check_length(info))
            placed = place_replicas(model, config, check, tokenizer.pad_id, calibration)
        self._replicas = [(m, d) for m, d, _ in placed]
        self.precisions = [p for _, _, p in placed]

    @property
    def engine_config(self) -> EngineConfig:
        """How this model's inputs are batched and where it runs."""
        return self._engine.config

    def compute(self) -> list[str]:
        """How each replica runs and why, e.g. ``"cpu, PackedEncoder: bfloat16 matmuls (fp32
        elsewhere) — auto: this CPU has AVX512-BF16; checked at load, cosine to fp32: ..."``."""
        out = []
        for (module, device), p in zip(self._replicas, self.precisions, strict=True):
            forward = ", ".join(sorted({type(f).__name__ for f in fast_paths(module)})) or "torch"
            out.append(f"{device}, {forward}: {p.label} — {p.reason}")
        return out

    def kernels(self) -> list[str]:
        """The kernels each CPU replica runs: linear layers counted by kernel, and the
        attention of packed encoders, e.g. ``"cpu: 24 linear layers bf16 (oneDNN linear,
        AMX-BF16); attention: bf16 batched products under 32 tokens, ..."``."""
        from bgekit.models.backbones import PackedEncoder, attention_kernels

        out = []
        for (module, device), p in zip(self._replicas, self.precisions, strict=True):
            counts = kernel_counts(module)
            if not counts:
                out.append(f"{device}: torch's own modules in {p.label}")
                continue
            parts = [f"{n} linear layers {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]
            if any(isinstance(m, PackedEncoder) for m in module.modules()):
                # projections reach attention in bf16 on the bf16 path only (int8 kernels answer fp32)
                qkv = torch.bfloat16 if p.matmul == "bfloat16" else torch.float32
                parts.append(f"attention: {attention_kernels(qkv)}")
            out.append(f"{device}: " + "; ".join(parts))
        return out

    def calibrate_int8(self, texts: Sequence[str]) -> None:
        """Smooth the int8 kernels with activation ranges recorded on ``texts`` (text like
        the user's own, in place of the built-in calibration set). Only for models loaded
        with ``dtype="int8"``."""
        if not texts:
            raise BgekitError("calibrate_int8 needs at least one text")
        seqs = self.tokenizer.encode(list(texts), check_length(self.info))
        done = 0
        for (module, device), p in zip(self._replicas, self.precisions, strict=True):
            if device.type == "cpu" and p.matmul == "int8":
                done += calibrate_int8(module, seqs, self.tokenizer.pad_id)
        if not done:
            raise BgekitError(f"{self.info.name} runs no calibrated int8 kernels; load it with dtype='int8'")

    def torch_module(self) -> nn.Module:
        """The first replica's torch module (what training and inspection work on). bf16 and
        int8 CPU kernels hold copies of the weights taken at load: train or edit a model
        loaded with ``dtype="float32"``."""
        if not self._replicas:
            raise ModelFormatError(f"{self.info.name} was closed")
        return self._replicas[0][0]

    def close(self) -> None:
        """Drop the model replicas (and their device memory)."""
        self._replicas = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
