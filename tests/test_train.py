"""Fine-tuning: losses against hand computations, training on tiny models, save/load round
trips, a 2-process cross-device run, mining, teacher scores, merging and bad data."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit import Embedder, EmbedderSettings, InputError, ModelFormatError, Reranker
from bgekit.cli.main import main as cli
from bgekit.engine import EngineConfig, TokenBatch
from bgekit.index.documents import Document
from bgekit.models.heads import EncoderWithHeads
from bgekit.scoring import maxsim_pair_scores, sparse_pair_scores
from bgekit.train import (
    EmbedderTrainConfig,
    RerankerTrainConfig,
    TrainExample,
    add_teacher_scores,
    load_train_data,
    merge_models,
    mine_hard_negatives,
    sample_group,
    train_embedder,
    train_reranker,
    write_train_data,
)
from bgekit.train.losses import (
    contrastive_loss,
    embedder_loss,
    lexical_similarities,
    local_scores,
    m3_unified_loss,
    multivector_similarities,
    reranker_loss,
    soft_cross_entropy,
    sparse_vocab_vectors,
)
from bgekit.train.modeling import EmbedderTrainModel
from bgekit.train.trainer import EmbedderCollator, GroupDataset
from bgekit.types import SparseVec
from tests.tiny_models import CORPUS

SENTENCES = list(dict.fromkeys(CORPUS))
FAST = EngineConfig(device="cpu", progress=False, dtype="float32")  # exact: compared with training


def _examples(n_neg: int = 4) -> list[TrainExample]:
    out = []
    for i, s in enumerate(SENTENCES):
        negs = tuple(SENTENCES[(i + j) % len(SENTENCES)] for j in range(1, n_neg + 1))
        out.append(TrainExample(" ".join(s.split()[:4]), (s,), negs))
    return out


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# -- losses ------------------------------------------------------------------------------


def test_contrastive_loss_is_cross_entropy_with_the_group_positive() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 6))  # 3 queries, groups of 2 -> positive of query i at column 2i
    want = -np.mean([_np_log_softmax(s[i])[2 * i] for i in range(3)])
    got = contrastive_loss(torch.tensor(s), 2).item()
    assert got == pytest.approx(want, rel=1e-9)


def test_soft_cross_entropy_is_kl_plus_teacher_entropy() -> None:
    rng = np.random.default_rng(1)
    student, t_logits = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    t = np.exp(_np_log_softmax(t_logits))
    log_s = _np_log_softmax(student)
    kl = np.mean(np.sum(t * (np.log(t) - log_s), axis=1))
    entropy = np.mean(-np.sum(t * np.log(t), axis=1))
    got = soft_cross_entropy(torch.tensor(student), torch.tensor(t)).item()
    assert got == pytest.approx(kl + entropy, rel=1e-9)


def test_local_scores_and_distillation_term() -> None:
    s = torch.arange(2 * 6, dtype=torch.float64).view(2, 6)  # 2 queries, groups of 3
    assert local_scores(s, 3).tolist() == [[0, 1, 2], [9, 10, 11]]
    teacher = torch.softmax(torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.3]], dtype=torch.float64), -1)
    got = embedder_loss(s / 4, 3, teacher).item()
    want = contrastive_loss(s / 4, 3).item() + soft_cross_entropy(local_scores(s / 4, 3), teacher).item()
    assert got == pytest.approx(want)


def test_reranker_loss_by_hand() -> None:
    logits = np.array([2.0, 1.0, 0.5, -1.0, 3.0, 0.0])  # 2 groups of 3, positive first
    want = -np.mean([_np_log_softmax(logits[:3])[0], _np_log_softmax(logits[3:])[0]])
    assert reranker_loss(torch.tensor(logits), 3).item() == pytest.approx(want)
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    distill = -np.mean(np.sum(teacher * _np_log_softmax(logits.reshape(2, 3)), axis=1))
    got = reranker_loss(torch.tensor(logits), 3, torch.tensor(teacher)).item()
    assert got == pytest.approx(want + distill)


def test_sparse_vocab_vectors_keep_max_drop_specials_and_match_inference_scoring() -> None:
    ids = torch.tensor([[1, 5, 7, 5, 2, 0], [1, 7, 7, 9, 2, 0]])  # 1 = CLS, 2 = SEP, 0 = PAD
    w = torch.tensor([[0.9, 0.3, 0.2, 0.8, 0.7, 0.0], [0.9, 0.1, 0.6, 0.4, 0.5, 0.0]], requires_grad=True)
    vocab = sparse_vocab_vectors(w, ids, 12, torch.tensor([0, 1, 2]))
    assert vocab[0].nonzero().flatten().tolist() == [5, 7]
    assert vocab[0, 5].item() == pytest.approx(0.8) and vocab[0, 7].item() == pytest.approx(0.2)
    assert vocab[1, 7].item() == pytest.approx(0.6) and vocab[1, 9].item() == pytest.approx(0.4)
    got = lexical_similarities(vocab, vocab).detach().numpy()
    vecs = [SparseVec.from_dict({5: 0.8, 7: 0.2}), SparseVec.from_dict({7: 0.6, 9: 0.4})]
    want = np.array([[sparse_pair_scores([a], [b])[0] for b in vecs] for a in vecs])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    vocab.sum().backward()  # the gradient reaches only each token's strongest occurrence
    assert w.grad is not None
    assert w.grad[0].tolist() == [0, 0, 1, 1, 0, 0] and w.grad[1].tolist() == [0, 0, 1, 1, 0, 0]


def test_multivector_scores_match_inference_maxsim() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 4, 8, generator=g), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(3, 5, 8, generator=g), dim=-1)
    q_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    q = q * q_mask[:, :, None]
    got = multivector_similarities(q, p, q_mask).numpy()
    q_list = [q[0].numpy(), q[1, :2].numpy()]
    want = np.array([[maxsim_pair_scores([a], [b.numpy()])[0] for b in p] for a in q_list])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_m3_unified_loss_matches_the_reference_formula() -> None:
    rng = np.random.default_rng(3)
    d, s, m = (rng.normal(size=(2, 4)) for _ in range(3))  # 2 queries, groups of 2
    ce = lambda x: -np.mean([_np_log_softmax(x[i])[2 * i] for i in range(2)])  # noqa: E731
    ens = d + 0.3 * s + m
    loss = (ce(d) + ce(ens) + 0.1 * ce(s) + ce(m)) / 4
    t = np.exp(_np_log_softmax(ens))
    kd = lambda x: -np.mean(np.sum(t * _np_log_softmax(x), axis=1))  # noqa: E731
    want = (loss + (kd(d) + 0.1 * kd(s) + kd(m)) / 3) / 2
    parts = m3_unified_loss(*(torch.tensor(x) for x in (d, s, m)), 2, self_distill=True)
    assert parts.total.item() == pytest.approx(want)
    no_kd = m3_unified_loss(*(torch.tensor(x) for x in (d, s, m)), 2, self_distill=False)
    assert no_kd.total.item() == pytest.approx(loss)


# -- data --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "malformed JSON"),
        ('{"query": "q", "neg": ["n"]}', '"pos" must be a list'),
        ('{"query": "", "pos": ["p"]}', '"query" must be a non-empty'),
        ('{"query": "q", "pos": ["p"], "pos_scores": [1.0, 2.0], "neg_scores": []}', "2 scores for 1"),
        ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0]}', "both"),
        ('{"query": "q", "pos": ["p"], "negatives": ["n"]}', "unknown field"),
        ('{"query": "q", "pos": ["p"], "neg": [3]}', '"neg" must be a list of strings'),
    ],
)
def test_bad_training_lines_are_reported_with_their_line_number(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": "ok", "pos": ["fine"], "neg": ["n"]}\n' + line + "\n")
    with pytest.raises(InputError, match=message) as err:
        load_train_data(path)
    assert "train.jsonl:2" in str(err.value)


def test_data_round_trip_and_group_sampling(tmp_path: Path) -> None:
    ex = TrainExample("q", ("p1", "p2"), ("n1", "n2"), (1.0, 2.0), (0.5, 0.25), "Represent: ")
    write_train_data(tmp_path / "d.jsonl", [ex])
    assert load_train_data(tmp_path / "d.jsonl") == [ex]
    rng = np.random.default_rng(0)
    for _ in range(20):
        texts, scores = sample_group(ex, 5, rng)  # 4 negatives from 2: each used twice
        assert texts[0] in ex.pos and sorted(texts[1:]) == ["n1", "n1", "n2", "n2"]
        assert scores is not None
        assert scores[0] == ex.pos_scores[ex.pos.index(texts[0])]  # type: ignore[union-attr]
        assert [dict(zip(ex.neg, ex.neg_scores or (), strict=True))[t] for t in texts[1:]] == scores[1:]


def test_training_refuses_unusable_data(bert_st_mean: Path, tmp_path: Path) -> None:
    no_neg = [TrainExample("q", ("p",))]
    with pytest.raises(InputError, match="no negatives"):
        train_embedder(str(bert_st_mean), no_neg, tmp_path / "o", EmbedderTrainConfig(group_size=2))
    mixed = [TrainExample("q", ("p",), ("n",), (1.0,), (0.0,)), TrainExample("r", ("p",), ("n",))]
    with pytest.raises(InputError, match="teacher scores"):
        train_embedder(str(bert_st_mean), mixed, tmp_path / "o", EmbedderTrainConfig(group_size=2))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        train_embedder(str(bert_st_mean), _examples(), tmp_path / "taken", EmbedderTrainConfig(group_size=2))
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    with pytest.raises(InputError, match="temperature"):
        EmbedderTrainConfig(temperature=0)


# -- models ------------------------------------------------------------------------------


def _train_model(path: Path, *, m3: bool, group_size: int = 3, cross_device: bool = False) -> tuple:
    emb = Embedder.from_pretrained(
        str(path),
        settings=EmbedderSettings(query_max_length=16, passage_max_length=24, query_instruction=""),
        engine=EngineConfig(device="cpu", backend="transformers", dtype="float32"),
    )
    module = emb.torch_module()
    assert isinstance(module, EncoderWithHeads)
    if not m3:
        module = EncoderWithHeads(module.backbone, None, None)
    model = EmbedderTrainModel(
        module,
        pooling=emb.info.pooling,
        normalize=emb.info.normalize,
        temperature=0.05,
        group_size=group_size,
        special_ids=emb.tokenizer.special_ids,
        vocab_size=emb.tokenizer.vocab_size,
        cross_device_negatives=cross_device,
    ).eval()
    collator = EmbedderCollator(emb)
    return emb, model, collator


def _batch(collator: EmbedderCollator, examples: list[TrainExample], group_size: int) -> dict:
    ds = GroupDataset(examples, group_size, seed=0)
    return collator([ds[i] for i in range(len(ds))])


def test_training_representations_equal_inference_outputs(bert_m3: Path) -> None:
    _, model, collator = _train_model(bert_m3, m3=True)
    batch = _batch(collator, _examples()[:3], 3)
    with torch.no_grad():
        reps = model.encode(batch["p_input_ids"], batch["p_attention_mask"], batch.get("p_token_type_ids"))
    texts = [t for i in range(3) for t in GroupDataset(_examples()[:3], 3, 0)[i][1]]
    ref = Embedder.from_pretrained(str(bert_m3), engine=FAST).encode(
        texts, outputs=("dense", "sparse", "multivector")
    )
    assert ref.dense is not None and ref.sparse is not None and ref.multivector is not None
    np.testing.assert_allclose(reps.dense.numpy(), ref.dense, atol=1e-5)
    assert reps.sparse is not None and reps.multivector is not None
    for row, vec in zip(reps.sparse.numpy(), ref.sparse, strict=True):
        np.testing.assert_array_equal(np.nonzero(row)[0], vec.indices)
        # two fp32 forwards in different orders (transformers' SDPA vs the packed one); the
        # tiny model's large random weights put relu(linear(h)) 7e-5 apart in one full-suite run
        np.testing.assert_allclose(row[vec.indices], vec.values, rtol=2e-4, atol=1e-5)
    lengths = batch["p_attention_mask"].sum(1).tolist()
    for row, n, mv in zip(reps.multivector.numpy(), lengths, ref.multivector, strict=True):
        # the same two forwards: 1.05e-5 apart in one clean CI run (values ~0.4)
        np.testing.assert_allclose(row[: n - 1], mv, rtol=1e-4, atol=2e-5)


def _loss_on(path: Path, examples: list[TrainExample], *, m3: bool) -> float:
    _, model, collator = _train_model(path, m3=m3)
    with torch.no_grad():
        return float(model(**_batch(collator, examples, 3))["loss"])


@pytest.mark.parametrize("m3", [False, True])
def test_training_lowers_the_loss_and_saves_a_loadable_model(
    bert_trainable: Path, tmp_path: Path, m3: bool
) -> None:
    # M3: exactly group_size - 1 negatives, all queries in one batch, so every step sees the
    # batch the loss is measured on (the unified loss is too noisy on a tiny model otherwise).
    data = _examples(2) if m3 else _examples()
    before = _loss_on(bert_trainable, data, m3=m3)
    cfg = EmbedderTrainConfig(
        batch_size=8 if m3 else 4,
        group_size=3,
        epochs=20 if m3 else 10,
        learning_rate=1e-2 if m3 else 3e-3,
        warmup=0.0,
        temperature=0.05,
        query_max_length=16,
        passage_max_length=24,
        m3=m3,
        progress=False,
        logging_steps=1,
    )
    result = train_embedder(str(bert_trainable), data, tmp_path / "out", cfg)
    assert result.steps == 20 and result.output == tmp_path / "out"
    after = _loss_on(tmp_path / "out", data, m3=m3)
    assert after < (0.8 if m3 else 0.7) * before, (before, after)
    loaded = Embedder.from_pretrained(str(tmp_path / "out"), engine=FAST)
    assert loaded.info.heads == (("dense", "sparse", "multivector") if m3 else ("dense",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written left


def test_m3_training_adds_heads_to_a_plain_model(bert_st_mean: Path, tmp_path: Path) -> None:
    cfg = EmbedderTrainConfig(
        batch_size=4, group_size=2, max_steps=1, m3=True, multivector_dim=12, progress=False
    )
    train_embedder(str(bert_st_mean), _examples(), tmp_path / "m3", cfg)
    emb = Embedder.from_pretrained(str(tmp_path / "m3"), engine=FAST)
    assert emb.info.heads == ("dense", "sparse", "multivector") and emb.info.multivector_dim == 12
    assert emb.info.pooling == "mean"  # the starting model's sentence-transformers settings are kept
    enc = emb.encode(["hybrid search mixes lexical and semantic scores"], outputs=("sparse", "multivector"))
    assert enc.multivector is not None and enc.multivector[0].shape[1] == 12


def _reranker_loss_on(path: Path, examples: list[TrainExample]) -> tuple[float, np.ndarray]:
    """The training loss on a fixed batch, and the same pairs' logits from ``Reranker``."""
    from bgekit.models.backbones import CrossEncoderForward
    from bgekit.train.modeling import RerankerTrainModel
    from bgekit.train.trainer import RerankerCollator

    engine = EngineConfig(device="cpu", dtype="float32", backend="transformers", progress=False)
    trained = Reranker.from_pretrained(str(path), max_length=32, query_max_length=24, engine=engine)
    module = trained.torch_module()
    assert isinstance(module, CrossEncoderForward)
    model = RerankerTrainModel(module, group_size=3).eval()
    collator = RerankerCollator(trained)
    items = [GroupDataset(examples, 3, seed=0)[i] for i in range(len(examples))]
    with torch.no_grad():
        loss = float(model(**collator(items))["loss"])
    rr = Reranker.from_pretrained(str(path), max_length=32, query_max_length=24, engine=FAST)
    logits = rr.score([(ex.query, p) for ex, group, _ in items for p in group])
    return loss, logits.reshape(len(items), 3)


def test_reranker_training_loss_is_cross_entropy_of_the_reranker_scores(bert_reranker: Path) -> None:
    loss, logits = _reranker_loss_on(bert_reranker, _examples())
    # The training loss is cross-entropy over each group's logits as the inference Reranker computes them.
    assert loss == pytest.approx(-np.mean(_np_log_softmax(logits.astype(np.float64))[:, 0]), rel=1e-4)


def test_reranker_teacher_scores_are_softened_by_the_teacher_temperature(bert_reranker: Path) -> None:
    from bgekit.models.backbones import CrossEncoderForward
    from bgekit.train.modeling import RerankerTrainModel
    from bgekit.train.trainer import RerankerCollator

    engine = EngineConfig(device="cpu", dtype="float32", backend="transformers", progress=False)
    rr = Reranker.from_pretrained(str(bert_reranker), max_length=32, query_max_length=24, engine=engine)
    module = rr.torch_module()
    assert isinstance(module, CrossEncoderForward)
    teacher = [[0.81, 0.62, 0.60], [0.40, 0.55, 0.20]]  # bi-encoder cosines
    examples = [
        TrainExample(ex.query, ex.pos, ex.neg[:2], pos_scores=(t[0],), neg_scores=tuple(t[1:]))
        for ex, t in zip(_examples()[:2], teacher, strict=True)
    ]
    items = [GroupDataset(examples, 3, seed=0)[i] for i in range(2)]
    batch = RerankerCollator(rr)(items)
    with torch.no_grad():
        padded = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        logits = module(TokenBatch.from_padded(*padded))
        loss = float(
            RerankerTrainModel(module, group_size=3, teacher_temperature=0.05).eval()(**batch)["loss"]
        )
    log_p = _np_log_softmax(logits.double().numpy().reshape(2, 3))
    t = np.exp(_np_log_softmax(np.array(teacher) / 0.05))
    want = -np.mean(log_p[:, 0]) - np.mean(np.sum(t * log_p, axis=1))
    assert loss == pytest.approx(want, rel=1e-5)
    with pytest.raises(InputError, match="teacher_temperature"):
        RerankerTrainConfig(teacher_temperature=0)


def test_reranker_training_lowers_the_loss(bert_trainable: Path, tmp_path: Path) -> None:
    data = _examples(2)  # exactly group_size - 1 negatives, all queries in one batch: every step sees it
    common = {"batch_size": 8, "group_size": 3, "warmup": 0.0, "max_length": 32, "query_max_length": 24}
    # The same seeded fresh head, untouched (one step at a negligible rate), gives the loss before.
    train_reranker(
        str(bert_trainable),
        data,
        tmp_path / "r0",
        RerankerTrainConfig(max_steps=1, learning_rate=1e-12, progress=False, **common),
    )  # type: ignore[arg-type]
    before, _ = _reranker_loss_on(tmp_path / "r0", data)
    # 100 steps: after / before measured 0.01-0.58 over 10 tokenizer builds (30 steps gave
    # 0.59-0.83, and failed 0.8 once in a clean run)
    cfg = RerankerTrainConfig(epochs=100, learning_rate=5e-3, progress=False, logging_steps=1, **common)  # type: ignore[arg-type]
    result = train_reranker(str(bert_trainable), data, tmp_path / "rr", cfg)
    assert result.steps == 100 and len([e for e in result.log if "loss" in e]) == 100
    after, _ = _reranker_loss_on(tmp_path / "rr", data)
    assert after < 0.8 * before, (before, after)


def test_reranker_training_starts_from_an_encoder(bert_st_mean: Path, tmp_path: Path) -> None:
    cfg = RerankerTrainConfig(batch_size=4, group_size=3, max_steps=1, max_length=32, progress=False)
    train_reranker(str(bert_st_mean), _examples(), tmp_path / "rr", cfg)  # a fresh one-logit head is added
    rr = Reranker.from_pretrained(str(tmp_path / "rr"), max_length=32, engine=FAST)
    assert rr.info.architecture == "BertForSequenceClassification"
    assert rr.score([("a question", "an answer")]).shape == (1,)
    assert not (tmp_path / "rr" / "modules.json").exists()  # embedder settings are not carried over


# -- distributed -------------------------------------------------------------------------


def _worker(rank: int, world: int, init_file: str, model_dir: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        _, model, collator = _train_model(Path(model_dir), m3=False, group_size=2, cross_device=True)
        examples = _examples()[:4]
        local = examples[rank * 2 : rank * 2 + 2]
        batch = _batch(collator, local, 2)
        captured: dict[str, torch.Tensor] = {}
        from bgekit.train import losses

        original = losses.embedder_loss

        def spy(scores: torch.Tensor, group_size: int, teacher: torch.Tensor | None = None) -> torch.Tensor:
            captured["shape"] = torch.tensor(scores.shape)
            return original(scores, group_size, teacher)

        import bgekit.train.modeling as modeling

        modeling.embedder_loss = spy  # type: ignore[assignment]
        loss = model(**batch)["loss"]
        loss.backward()
        grad = next(p for p in model.parameters() if p.requires_grad).grad
        assert grad is not None
        torch.save(
            {"loss": loss.detach(), "shape": captured["shape"], "grad": grad}, f"{out_dir}/rank{rank}.pt"
        )
    finally:
        torch.distributed.destroy_process_group()


def test_cross_device_negatives_on_two_processes_equal_one_process_on_the_gathered_batch(
    bert_st_mean: Path, tmp_path: Path
) -> None:
    import torch.multiprocessing as mp

    init = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_worker, args=(2, init, str(bert_st_mean), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    _, model, collator = _train_model(bert_st_mean, m3=False, group_size=2)
    batch = _batch(collator, _examples()[:4], 2)
    loss = model(**batch)["loss"]
    loss.backward()
    grad = next(p for p in model.parameters() if p.requires_grad).grad
    for r in ranks:
        assert r["shape"].tolist() == [4, 8]  # 4 queries x 8 passages, not the local 2 x 4
        assert r["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    # Each process back-propagates into its own inputs: the gradients add up to the full one.
    torch.testing.assert_close(ranks[0]["grad"] + ranks[1]["grad"], grad, rtol=1e-4, atol=1e-6)


# -- mining, teacher scores, merging -------------------------------------------------------


def test_mining_draws_from_the_rank_range_and_never_a_positive(bert_st_mean: Path) -> None:
    emb = Embedder.from_pretrained(str(bert_st_mean), engine=FAST)
    docs = [Document(str(i), s) for i, s in enumerate(SENTENCES)]
    examples = [TrainExample(" ".join(s.split()[:3]), (s,)) for s in SENTENCES[:4]]
    mined = mine_hard_negatives(emb, examples, docs, rank_range=(1, 5), negatives=3, seed=7)
    again = mine_hard_negatives(emb, examples, docs, rank_range=(1, 5), negatives=3, seed=7)
    assert mined == again
    q = emb.encode([e.query for e in examples], kind="query").dense
    d = emb.encode(SENTENCES).dense
    assert q is not None and d is not None
    for ex, row in zip(mined, q @ d.T, strict=True):
        ranked = [SENTENCES[i] for i in np.argsort(-row, kind="stable")[1:5]]
        assert len(ex.neg) == 3 and len(set(ex.neg)) == 3
        assert set(ex.neg) <= set(ranked) and ex.pos[0] not in ex.neg


def test_teacher_scores_are_the_rerankers_logits(bert_reranker: Path) -> None:
    rr = Reranker.from_pretrained(str(bert_reranker), engine=FAST)
    ex = _examples(2)[:3]
    scored = add_teacher_scores(rr, ex)
    for e in scored:
        assert e.pos_scores is not None and e.neg_scores is not None
        np.testing.assert_allclose(
            e.pos_scores, rr.score([(e.query, p) for p in e.pos]), rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(
            e.neg_scores, rr.score([(e.query, n) for n in e.neg]), rtol=1e-4, atol=1e-4
        )


def test_merge_is_the_weighted_average(bert_m3: Path, xlmr_m3: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    other = tmp_path / "other"
    cfg = EmbedderTrainConfig(
        batch_size=4, group_size=2, max_steps=2, learning_rate=1e-2, m3=True, progress=False
    )
    train_embedder(str(bert_m3), _examples(), other, cfg)
    merged = merge_models([str(bert_m3), str(other)], [0.25, 0.75], tmp_path / "merged")
    a, b, m = (load_file(str(p / "model.safetensors")) for p in (bert_m3, other, merged))
    for key in m:
        if m[key].is_floating_point():
            torch.testing.assert_close(m[key], 0.25 * a[key] + 0.75 * b[key], rtol=1e-5, atol=1e-6)
    ha, hb, hm = (torch.load(p / "sparse_linear.pt", weights_only=True) for p in (bert_m3, other, merged))
    torch.testing.assert_close(hm["weight"], 0.25 * ha["weight"] + 0.75 * hb["weight"])
    assert Embedder.from_pretrained(str(merged), engine=FAST).info.heads == ("dense", "sparse", "multivector")
    with pytest.raises(ModelFormatError, match="different architectures"):
        merge_models([str(bert_m3), str(xlmr_m3)], [0.5, 0.5], tmp_path / "bad")
    with pytest.raises(InputError, match="sum to 1"):
        merge_models([str(bert_m3), str(other)], [0.5, 0.6], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# -- command line --------------------------------------------------------------------------


def test_cli_mine_train_merge(bert_st_mean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    write_train_data(data, [TrainExample(e.query, e.pos) for e in _examples()])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": s}) + "\n" for i, s in enumerate(SENTENCES)))
    mined = tmp_path / "mined.jsonl"
    args = [
        "--model",
        str(bert_st_mean),
        "--input",
        str(data),
        "--corpus",
        str(corpus),
        "--output",
        str(mined),
    ]
    assert cli(["mine", *args, "--range", "1:6", "--negatives", "2", "--no-progress"]) == 0
    assert all(len(e.neg) == 2 for e in load_train_data(mined))
    out = tmp_path / "ft"
    train = ["train", "embedder", "--model", str(bert_st_mean), "--data", str(mined), "--output", str(out)]
    assert cli([*train, "--max-steps", "2", "--batch-size", "4", "--group-size", "3", "--no-progress"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert cli([*train, "--max-steps", "1", "--no-progress"]) == 2  # output taken, no --overwrite
    assert "not empty" in capsys.readouterr().err
    merged = tmp_path / "merged"
    assert cli(["merge", "--models", f"{bert_st_mean},{out}", "--output", str(merged)]) == 0
    assert json.loads((merged / "merge_config.json").read_text())["weights"] == [0.5, 0.5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"]}\n{"query": "q"\n')
    assert cli(["train", "reranker", "--data", str(bad), "--output", str(tmp_path / "r")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert Embedder.from_pretrained(str(merged), engine=FAST).info.pooling == "mean"


def test_torchrun_shards_the_data_over_two_processes(bert_st_mean: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "train.jsonl"
    write_train_data(data, _examples())  # 8 queries
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "-m",
        "bgekit",
        "train",
        "embedder",
        "--model",
        str(bert_st_mean),
    ]
    cmd += ["--data", str(data), "--output", str(tmp_path / "o"), "--batch-size", "2", "--group-size", "2"]
    cmd += ["--epochs", "1", "--cross-device-negatives", "--no-progress"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # 8 queries / (2 per process x 2 processes) = 2 steps; one process alone would take 4.
    assert done.stdout.count("trained 2 steps") == 1, done.stdout
    assert Embedder.from_pretrained(str(tmp_path / "o"), engine=FAST).info.heads == ("dense",)
