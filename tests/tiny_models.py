"""Tiny random models with real tokenizers, built offline for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is bge m3 and how does it retrieve passages",
    "dense sparse and multi vector retrieval from one forward pass",
    "a man is eating food a man is eating pasta",
    "the stock market fell sharply on monday",
    "cats and dogs are popular pets in many homes",
    "retrieval augmented generation needs good search",
    "hybrid search mixes lexical and semantic scores",
] * 4

HIDDEN = 32
COLBERT_DIM = 16


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def xlmr_tokenizer(corpus: list[str] = CORPUS, vocab_size: int = 200) -> PreTrainedTokenizerFast:
    """An XLM-R-style Unigram tokenizer (``<s> A </s></s> B </s>``) trained on ``corpus``."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        corpus, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
    )


def _bert_config(vocab: int, **extra: object) -> BertConfig:
    settings: dict[str, object] = {"initializer_range": 0.5, **extra}
    return BertConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **settings,
    )


def _xlmr_config(vocab: int, **extra: object) -> XLMRobertaConfig:
    return XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        initializer_range=0.5,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **extra,
    )


def _save_heads(path: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    colbert = torch.nn.Linear(HIDDEN, COLBERT_DIM)
    sparse = torch.nn.Linear(HIDDEN, 1)
    with torch.no_grad():
        for p in (*colbert.parameters(), *sparse.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sparse.bias.fill_(0.05)  # roughly half the tokens get a positive weight
    torch.save(colbert.state_dict(), path / "colbert_linear.pt")
    torch.save(sparse.state_dict(), path / "sparse_linear.pt")


def build_encoder(path: Path, family: str, *, m3_heads: bool, seed: int = 0, trainable: bool = False) -> Path:
    """A tiny encoder. Its default large random weights make outputs spread out (good for
    checking numbers); ``trainable`` (BERT only) uses the usual 0.02 init and no dropout, so
    that a few optimiser steps reliably lower a loss."""
    torch.manual_seed(seed)
    tok = _bert_tokenizer() if family == "bert" else xlmr_tokenizer()
    if trainable:
        extra = {"initializer_range": 0.02, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        config = _bert_config(len(tok), **extra)
    else:
        config = (_bert_config if family == "bert" else _xlmr_config)(len(tok))
    model = BertModel(config) if family == "bert" else XLMRobertaModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if m3_heads:
        _save_heads(path, seed)
    return path


def build_reranker(path: Path, family: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tok = _bert_tokenizer() if family == "bert" else xlmr_tokenizer()
    if family == "bert":
        model = BertForSequenceClassification(_bert_config(len(tok), num_labels=1))
    else:
        model = XLMRobertaForSequenceClassification(_xlmr_config(len(tok), num_labels=1))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def add_st_metadata(path: Path, *, pooling: str, normalize: bool, max_seq_length: int) -> None:
    """sentence-transformers metadata, as its save() writes it."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    keys = ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"]
    chosen = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}[pooling]
    cfg = {"word_embedding_dimension": HIDDEN} | {f"pooling_mode_{k}": k == chosen for k in keys}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
