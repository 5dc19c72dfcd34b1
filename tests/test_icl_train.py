"""In-context examples for training (bgekit.train.icl, the reference's decoder-only ICL
data): who may be shown to whom, how many, the length cuts, and the text the model reads
(built here by hand and tokenised with transformers' own tokenizer)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from bgekit import Embedder, EmbedderSettings, EngineConfig, InputError
from bgekit.models.registry import BGE_LLM_FORMAT
from bgekit.train import TrainExample
from bgekit.train.decoder import IclCollator, IclDataset, ShotExample
from bgekit.train.icl import IclSettings, ShotSampler, format_shots
from bgekit.train.trainer import GroupDataset
from tests.tiny_llms import build_qwen2_embedder

FAST = EngineConfig(device="cpu", progress=False, dtype="float32")
INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query."


def _data() -> list[TrainExample]:
    """Two tasks (by prompt), a repeated query and a shared positive among task A."""
    a = [
        TrainExample(f"what is item {i}", (f"item {i} is a thing", f"answer {i}"), (f"no {i}",), prompt="A")
        for i in range(6)
    ]
    a.append(TrainExample("what is item 0", ("item 0 again",), ("no",), prompt="A"))  # same query text
    a.append(TrainExample("shares an answer", ("item 1 is a thing",), ("no",), prompt="A"))
    b = [TrainExample(f"task b {i}", (f"b answer {i}",), (f"b no {i}",), prompt="B") for i in range(3)]
    return a + b


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen2_embedder(tmp_path_factory.mktemp("icl") / "qwen2")


@pytest.fixture(scope="module")
def emb(qwen: Path) -> Embedder:
    settings = EmbedderSettings(query_format=BGE_LLM_FORMAT, query_instruction=INSTRUCT, query_max_length=64)
    return Embedder.from_pretrained(str(qwen), settings=settings, engine=FAST)


def test_examples_come_from_other_queries_of_the_same_task_never_giving_the_answer_away() -> None:
    data = _data()
    sampler = ShotSampler(data, IclSettings())
    # query 0: not itself (0), not line 6 (same text), not line 7 (no answer but query 0's... it
    # has "item 1 is a thing", not one of query 0's positives: allowed), not task B
    assert sampler.candidates(0) == [1, 2, 3, 4, 5, 7]
    # query 1: line 7's only positive is query 1's own: never shown to it
    assert sampler.candidates(1) == [0, 2, 3, 4, 5, 6]
    assert sampler.candidates(8) == [9, 10]  # task B's own
    rng = np.random.default_rng(0)
    counts: Counter[int] = Counter()
    for _ in range(600):
        for i in range(len(data)):
            shots = sampler.draw(i, rng)
            js = [j for j, _ in shots]
            assert len(set(js)) == len(js) and set(js) <= set(sampler.candidates(i))
            for j, k in shots:
                assert data[j].pos[k] not in data[i].pos
            if i == 0:
                counts[len(shots)] += 1
    # k is uniform over 0..5 (query 0 has 6 candidates, so never cut short)
    assert sorted(counts) == [0, 1, 2, 3, 4, 5] and min(counts.values()) > 60
    # task B has 2 other queries: at most 2 examples, whatever k was drawn
    assert max(len(sampler.draw(8, rng)) for _ in range(50)) == 2
    assert ShotSampler(data, IclSettings(examples=0)).draw(0, rng) == ()
    with pytest.raises(InputError, match="at least 0"):
        IclSettings(examples=-1)


def test_the_groups_are_those_of_a_run_without_examples() -> None:
    data = _data()
    plain, icl = GroupDataset(data, 2, seed=3), IclDataset(data, 2, 3, IclSettings())
    for _ in range(2):
        for i in range(len(data)):
            ex, group, _ = icl[i]
            assert isinstance(ex, ShotExample) and ex.query == data[i].query
            assert plain[i][1] == group
    seen = {icl[0][0].shots for _ in range(20)}  # fresh draws each epoch
    assert len(seen) > 3


def test_length_cuts(emb: Embedder) -> None:
    tok = emb.tokenizer
    long_q = "what is the capital of france " * 10
    long_p = "Paris is the capital of France " * 10
    s = IclSettings(query_max_length=40, passage_max_length=7)
    (ex,) = format_shots([(long_q, long_p)], INSTRUCT, tok, s)
    head = len(tok.ids([f"<instruct>{INSTRUCT}\n<query>"])[0])
    assert 0 < 40 - head == len(tok.ids([ex.query])[0]) and long_q.startswith(ex.query)
    assert len(tok.ids([ex.response])[0]) == 7 and long_p.startswith(ex.response)
    assert ex.instruct == INSTRUCT
    short = format_shots([("q one", "p one")], INSTRUCT, tok, s)[0]
    assert (short.query, short.response) == ("q one", "p one")  # fits: unchanged
    # an instruction longer than the example's budget leaves no room for its query
    assert format_shots([("q", "p")], INSTRUCT, tok, IclSettings(query_max_length=3))[0].query == ""
    # examples are kept in order while they fit max_length tokens in all
    one = len(tok.ids([f"<instruct>{INSTRUCT}\n<query>q one\n<response>p one\n\n"])[0])
    pairs = [("q one", "p one"), ("q two", "p two"), ("q three", "p three")]
    kept = format_shots(pairs, INSTRUCT, tok, IclSettings(max_length=one + 3))
    assert [e.query for e in kept] == ["q one"]
    assert len(format_shots(pairs, INSTRUCT, tok, IclSettings())) == 3


def test_the_query_reads_as_bge_en_icl_reads_it(emb: Embedder, qwen: Path) -> None:
    hf = AutoTokenizer.from_pretrained(qwen)
    collator = IclCollator(emb, IclSettings())
    shots = (("what is item 1", "item 1 is a thing"), ("what is item 2", "answer 2"))
    ex = ShotExample("what is item 0", ("item 0 is a thing",), shots=shots)
    text = "".join(f"<instruct>{INSTRUCT}\n<query>{q}\n<response>{p}\n\n" for q, p in shots)
    text += f"<instruct>{INSTRUCT}\n<query>what is item 0\n<response>"
    assert collator.query(ex).ids == hf(text)["input_ids"]  # <s> ... </s>: the end token last
    # no examples: the query alone with its suffix; a line's prompt replaces the instruction
    alone = ShotExample("what is item 0", ("x",), prompt="Find it")
    assert (
        collator.query(alone).ids == hf("<instruct>Find it\n<query>what is item 0\n<response>")["input_ids"]
    )
    # and inference lays it out the same: the embedder with these examples
    examples = [{"instruct": INSTRUCT, "query": q, "response": p} for q, p in shots]
    assert (
        emb.with_examples(examples).tokenize(["what is item 0"], kind="query")[0].ids
        == collator.query(ex).ids
    )
    batch = collator([(ex, ["item 0 is a thing", "no"], None), (alone, ["x", "y"], None)])
    assert batch["q_input_ids"].shape[0] == 2 and batch["p_input_ids"].shape[0] == 4
    assert batch["p_input_ids"][1].tolist()[: len(hf("no")["input_ids"])] == hf("no")["input_ids"]
