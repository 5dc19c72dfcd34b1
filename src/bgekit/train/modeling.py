"""Trainable models: an embedder (dense, or BGE-M3's three heads) and a cross-encoder
reranker, each returning its loss for the transformers Trainer, and saved in the reference's
on-disk layout (a Hugging Face folder, plus ``colbert_linear.pt`` / ``sparse_linear.pt``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bgekit.engine import TokenBatch
from bgekit.models.backbones import CrossEncoderForward, TransformersBackbone
from bgekit.models.heads import EncoderWithHeads
from bgekit.models.runtime import quiet_hf_bars
from bgekit.models.tokenizer import TOKENIZER_FILES
from bgekit.train.distributed import gather_with_grad, world
from bgekit.train.losses import (
    M3Losses,
    embedder_loss,
    lexical_similarities,
    m3_unified_loss,
    multivector_similarities,
    reranker_loss,
    similarities,
    sparse_vocab_vectors,
    teacher_distribution,
)

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".ot"}
_NOT_COPIED = {"config.json", "README.md", ".gitattributes"}


def copy_metadata(source: Path, target: Path, *, embedder: bool) -> None:
    """Copy the tokenizer files (and, for an embedder, sentence-transformers' pooling and
    prompt settings) from the starting model's folder; weights and config are written anew."""
    for p in sorted(source.iterdir()):
        if p.is_file():
            if p.suffix in _WEIGHT_SUFFIXES or p.name in _NOT_COPIED:
                continue
            if embedder or p.name in TOKENIZER_FILES:
                shutil.copy2(p, target / p.name)
        elif embedder and p.is_dir():
            files = [f for f in p.rglob("*") if f.is_file()]
            if all(f.suffix == ".json" for f in files):  # 1_Pooling/, 2_Normalize/: settings only
                shutil.copytree(p, target / p.name)


@dataclass(frozen=True)
class _Reps:
    dense: torch.Tensor
    sparse: torch.Tensor | None
    multivector: torch.Tensor | None
    mask: torch.Tensor


class EmbedderTrainModel(nn.Module):
    """The inference modules (:class:`~bgekit.models.heads.EncoderWithHeads`: backbone and
    M3 heads, through the same head functions) returning the contrastive / unified loss of
    a batch of query groups.

    The backbone must be the transformers forward (``backend="transformers"``): bgekit's
    packed forward fuses the query / key / value weights into a new matrix and runs oneDNN
    kernels without a backward pass, so it is an inference path only."""

    special_ids: torch.Tensor

    def __init__(
        self,
        module: EncoderWithHeads,
        *,
        pooling: str,
        normalize: bool,
        temperature: float,
        group_size: int,
        special_ids: Iterable[int] = (),
        vocab_size: int = 0,
        cross_device_negatives: bool = False,
        self_distill: bool = True,
    ):
        super().__init__()
        if not isinstance(module.backbone, TransformersBackbone):
            raise ValueError("training needs the transformers backbone (load with backend='transformers')")
        if (module.colbert_linear is None) != (module.sparse_linear is None):
            raise ValueError("M3 training needs both the sparse and the multi-vector head")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.module = module
        self.pooling = pooling
        self.normalize = normalize
        self.temperature = temperature
        self.group_size = group_size
        self.vocab_size = vocab_size
        self.cross_device_negatives = cross_device_negatives
        self.self_distill = self_distill
        self.register_buffer(
            "special_ids", torch.tensor(sorted(special_ids), dtype=torch.long), persistent=False
        )
        self.last_losses: M3Losses | None = None

    @property
    def unified(self) -> bool:
        return self.module.sparse_linear is not None

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> _Reps:
        batch = TokenBatch.from_padded(input_ids, attention_mask, token_type_ids)
        m = self.module
        hidden = m.hidden(batch)  # flat rows: the real tokens only
        dense = m.dense(hidden, batch, self.pooling, self.normalize)
        if not self.unified:
            return _Reps(dense, None, None, attention_mask)
        # the losses take rectangular (inputs, positions, ...) tensors: flat rows padded again
        # (pad positions weigh 0 and hold special ids; their multi-vectors are 0)
        weights = batch.pad(m.sparse_weights(hidden))
        sparse = sparse_vocab_vectors(weights, input_ids, self.vocab_size, self.special_ids)
        multivector = batch.pad(m.multivectors(hidden, batch), drop_first=True)
        return _Reps(dense, sparse, multivector, attention_mask)

    def forward(
        self,
        q_input_ids: torch.Tensor,
        q_attention_mask: torch.Tensor,
        p_input_ids: torch.Tensor,
        p_attention_mask: torch.Tensor,
        q_token_type_ids: torch.Tensor | None = None,
        p_token_type_ids: torch.Tensor | None = None,
        teacher_scores: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        q = self.encode(q_input_ids, q_attention_mask, q_token_type_ids)
        p = self.encode(p_input_ids, p_attention_mask, p_token_type_ids)
        g, t = self.group_size, self.temperature
        teacher = teacher_distribution(teacher_scores)
        if self.cross_device_negatives and world()[1] > 1:
            all_teacher = None if teacher is None else gather_with_grad(teacher)
            scores = similarities(gather_with_grad(q.dense), gather_with_grad(p.dense)) / t
            dense_loss = embedder_loss(scores, g, all_teacher)
        else:
            dense_loss = None
        if not self.unified:
            if dense_loss is None:
                dense_loss = embedder_loss(similarities(q.dense, p.dense) / t, g, teacher)
            return {"loss": dense_loss}
        assert q.sparse is not None and p.sparse is not None
        assert q.multivector is not None and p.multivector is not None
        # Like the reference, cross-device negatives apply to the dense loss only.
        parts = m3_unified_loss(
            similarities(q.dense, p.dense) / t,
            lexical_similarities(q.sparse, p.sparse) / t,
            multivector_similarities(q.multivector, p.multivector, q.mask[:, 1:]) / t,
            g,
            teacher_probs=teacher,
            self_distill=self.self_distill,
            dense_loss=dense_loss,
        )
        self.last_losses = parts
        return {"loss": parts.total}

    def save(self, folder: Path) -> None:
        """The encoder as a Hugging Face model, plus the M3 head files when trained."""
        backbone = self.module.backbone
        assert isinstance(backbone, TransformersBackbone)
        with quiet_hf_bars():
            backbone.save_pretrained(str(folder))
        for name, head in (
            ("colbert_linear", self.module.colbert_linear),
            ("sparse_linear", self.module.sparse_linear),
        ):
            if head is not None:
                torch.save(
                    {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}, folder / f"{name}.pt"
                )


class RerankerTrainModel(nn.Module):
    """The inference cross-encoder (:class:`~bgekit.models.backbones.CrossEncoderForward`,
    on the transformers backbone) trained with cross-entropy over groups."""

    def __init__(self, module: CrossEncoderForward, *, group_size: int, teacher_temperature: float = 1.0):
        super().__init__()
        if not isinstance(module.backbone, TransformersBackbone):
            raise ValueError("training needs the transformers backbone (load with backend='transformers')")
        self.module = module
        self.group_size = group_size
        self.teacher_temperature = teacher_temperature

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        teacher_scores: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self.module(TokenBatch.from_padded(input_ids, attention_mask, token_type_ids))
        teacher = teacher_distribution(teacher_scores, self.teacher_temperature)
        return {"loss": reranker_loss(logits, self.group_size, teacher), "logits": logits}

    def save(self, folder: Path) -> None:
        with quiet_hf_bars():
            self.module.save_pretrained(str(folder))
