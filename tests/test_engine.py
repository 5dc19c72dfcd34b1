from __future__ import annotations

import numpy as np
import pytest
import torch

from bgekit import BgekitError
from bgekit.engine import Engine, EngineConfig, TokenBatch, plan_batches
from bgekit.types import TokenSeq


class EchoRunner:
    """Returns each row's real ids; can fail like a full GPU above a token count."""

    def __init__(self, oom_above: int | None = None, error: Exception | None = None):
        self.oom_above = oom_above
        self.error = error
        self.batches: list[tuple[int, int]] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __call__(self, batch: TokenBatch) -> list[list[int]]:
        n, width = batch.input_ids.shape
        if self.error is not None:
            raise self.error
        if self.oom_above is not None and n * width > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append((n, width))
        assert torch.is_inference_mode_enabled()
        return [row[: int(k)].tolist() for row, k in zip(batch.input_ids, batch.lengths, strict=True)]


def seqs(n: int, seed: int = 0) -> list[TokenSeq]:
    rng = np.random.default_rng(seed)
    return [TokenSeq(list(rng.integers(5, 100, size=int(rng.integers(1, 40))))) for _ in range(n)]


def test_plan_respects_budget_and_covers_everything() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, size=500)
    plan = plan_batches(lengths, max_batch_tokens=1000, max_batch_size=16)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(500))
    for b in plan:
        assert len(b) <= 16 and len(b) * lengths[b].max() <= 1000
    widths = [lengths[b].max() for b in plan]
    assert widths == sorted(widths, reverse=True)


def test_results_come_back_in_input_order() -> None:
    data = seqs(300)
    runner = EchoRunner()
    out = Engine(EngineConfig(max_batch_tokens=200, max_batch_size=8)).run(data, [runner], pad_id=0)
    assert out == [list(s.ids) for s in data]
    assert all(n * w <= 200 for n, w in runner.batches)


def test_out_of_memory_shrinks_batches_down_to_a_floor() -> None:
    data = seqs(120, seed=2)
    runner = EchoRunner(oom_above=100)
    out = Engine(EngineConfig(max_batch_tokens=4000)).run(data, [runner], pad_id=0)
    assert out == [list(s.ids) for s in data]
    assert all(n * w <= 100 for n, w in runner.batches)
    too_long = [TokenSeq(list(range(5, 200)))]
    with pytest.raises(BgekitError, match="out of memory on a single input of 195 tokens"):
        Engine(EngineConfig()).run(too_long, [EchoRunner(oom_above=100)], pad_id=0)


def test_other_errors_are_not_swallowed() -> None:
    runner = EchoRunner(error=RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Engine(EngineConfig()).run(seqs(10), [runner], pad_id=0)


def test_several_replicas_share_the_work() -> None:
    data = seqs(400, seed=3)
    runners = [EchoRunner(), EchoRunner()]
    out = Engine(EngineConfig(max_batch_tokens=64)).run(data, runners, pad_id=0)
    assert out == [list(s.ids) for s in data]
    assert sum(n for r in runners for n, _ in r.batches) == 400


def test_left_padding_places_tokens_at_the_end() -> None:
    from bgekit.engine import pad_batch

    b = pad_batch(
        [TokenSeq([7, 8, 9]), TokenSeq([5])], pad_id=0, device=torch.device("cpu"), padding_side="left"
    )
    assert b.input_ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("bad", [{"max_batch_tokens": 0}, {"max_batch_size": -1}])
def test_bad_config(bad: dict[str, int]) -> None:
    with pytest.raises(BgekitError):
        EngineConfig(**bad)  # type: ignore[arg-type]


def test_empty_input() -> None:
    assert Engine(EngineConfig()).run([], [EchoRunner()], pad_id=0) == []


def test_progress_bar_when_asked_and_silence_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    data = seqs(50)
    Engine(EngineConfig(max_batch_tokens=64, progress=True)).run(
        data, [EchoRunner()], pad_id=0, desc="encoding"
    )
    err = capsys.readouterr().err
    assert "encoding" in err and "50/50" in err
    Engine(EngineConfig(max_batch_tokens=64)).run(data, [EchoRunner()], pad_id=0)
    assert capsys.readouterr().err == ""  # not a terminal under pytest


def test_progress_is_logged_when_there_is_no_terminal(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bgekit.engine import engine as engine_module

    monkeypatch.setattr(engine_module.LogProgress, "every", 0.0)  # a line per batch
    with caplog.at_level("INFO", logger="bgekit.engine.engine"):
        Engine(EngineConfig(max_batch_tokens=64)).run(seqs(50), [EchoRunner()], pad_id=0, desc="encoding")
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[-1].startswith("encoding: 50/50 texts") and "ETA 0s" in lines[-1]
    assert all("texts" in line and "/s" in line for line in lines)
    caplog.clear()
    with caplog.at_level("INFO", logger="bgekit.engine.engine"):
        Engine(EngineConfig(max_batch_tokens=64, progress=False)).run(seqs(50), [EchoRunner()], pad_id=0)
    assert caplog.records == []  # progress=False: nothing at all


class PackedEchoRunner(EchoRunner):
    """An :class:`EchoRunner` reading the flat ids, as a packed forward does."""

    packed = True

    def __init__(self, oom_above: int | None = None):
        super().__init__(oom_above)
        self.padded_sizes: list[int] = []

    def __call__(self, batch: TokenBatch) -> list[list[int]]:
        real = int(batch.lengths.sum())
        if self.oom_above is not None and real > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append((len(batch), real))
        self.padded_sizes.append(len(batch) * int(batch.lengths.max()))
        return [part.tolist() for part in torch.split(batch.ids, batch.lengths.tolist())]


def test_flat_batch_and_its_padded_views() -> None:
    seqs_ = [TokenSeq([7, 8, 9], [0, 1, 1]), TokenSeq([5], None), TokenSeq([4, 6], [1, 1])]
    for side in ("right", "left"):
        b = TokenBatch.from_seqs(seqs_, torch.device("cpu"), pad_id=3, padding_side=side)
        assert b.ids.tolist() == [7, 8, 9, 5, 4, 6] and b.type_ids is not None
        assert b.type_ids.tolist() == [0, 1, 1, 0, 1, 1]  # an input without types gets zeros
        assert b.offsets.tolist() == [0, 3, 4, 6] and b.positions.tolist() == [0, 1, 2, 0, 0, 1]
        assert b.first.tolist() == [0, 3, 4] and b.last.tolist() == [2, 3, 5]
        view = b.padded()
        assert b.padded() is view  # built once
        right = side == "right"
        assert view.input_ids.tolist() == (
            [[7, 8, 9], [5, 3, 3], [4, 6, 3]] if right else [[7, 8, 9], [3, 3, 5], [3, 4, 6]]
        )
        assert view.attention_mask.sum(1).tolist() == [3, 1, 2]
        assert b.unpad(view.input_ids).tolist() == b.ids.tolist()
        assert b.unpad(b.pad(b.ids.float())).tolist() == b.ids.float().tolist()
        assert b.pad(b.ids).tolist() == view.input_ids.masked_fill(view.attention_mask == 0, 0).tolist()
        after_first = b.pad(torch.tensor([8, 9, 6]), drop_first=True)
        assert after_first.tolist() == ([[8, 9], [0, 0], [6, 0]] if right else [[8, 9], [0, 0], [0, 6]])
    # a padded batch (training) keeps its tensors as the view and reads its real tokens
    ids, mask = torch.tensor([[2, 5, 6], [2, 7, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    b = TokenBatch.from_padded(ids, mask)
    assert b.padded().input_ids is ids and b.attention_mask is mask
    assert b.ids.tolist() == [2, 5, 6, 2, 7] and b.lengths.tolist() == [3, 2]
    # training pads flat rows again: gradients reach every real row, and only those
    x = torch.randn(2, 3, 4, requires_grad=True)
    (b.pad(b.unpad(x)) * 2).sum().backward()
    assert x.grad is not None and x.grad[:, :, 0].tolist() == [[2, 2, 2], [2, 2, 0]]


def test_flat_batch_sums_rows_per_input_and_rejects_bad_shapes() -> None:
    lengths = [3, 3, 1, 4, 4, 4, 2]  # several runs of equal lengths, unsorted
    b = TokenBatch.from_seqs([TokenSeq(list(range(n))) for n in lengths], torch.device("cpu"))
    assert b.runs == [(0, 2, 3), (6, 1, 1), (7, 3, 4), (19, 1, 2)]
    x = torch.randn(sum(lengths), 5, dtype=torch.float64)
    want = torch.stack([part.sum(0) for part in torch.split(x, lengths)]).float()
    torch.testing.assert_close(b.sum_rows(x), want)
    with pytest.raises(BgekitError, match="7 rows do not fit a batch of 21 tokens"):
        b.pad(x[:7])
    with pytest.raises(BgekitError, match="lengths add up to 3 tokens, ids hold 2"):
        TokenBatch(torch.tensor([1, 2]), torch.tensor([3]))
    with pytest.raises(BgekitError, match="input 1 has no tokens"):
        Engine(EngineConfig()).run([TokenSeq([1]), TokenSeq([])], [EchoRunner()], pad_id=0)


def test_plan_with_a_real_token_budget() -> None:
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 200, size=500)
    plan = plan_batches(lengths, max_batch_tokens=1000, max_batch_size=16, count="real")
    assert sorted(np.concatenate(plan).tolist()) == list(range(500))
    for i, b in enumerate(plan):
        assert len(b) <= 16 and lengths[b].sum() <= 1000
        if i + 1 < len(plan) and len(b) < 16:  # full: the next input would not have fitted
            assert lengths[b].sum() + lengths[plan[i + 1][0]] > 1000
    with pytest.raises(ValueError, match="count must be"):
        plan_batches(lengths, 1000, 16, count="tokens")  # type: ignore[arg-type]


def test_packed_runners_get_a_real_token_budget_and_shrink_in_real_tokens() -> None:
    data = seqs(300, seed=5)
    packed, padded = PackedEchoRunner(), EchoRunner()
    cfg = EngineConfig(max_batch_tokens=200, max_batch_size=64)
    assert Engine(cfg).run(data, [packed], pad_id=0) == [list(s.ids) for s in data]
    assert all(real <= 200 for _, real in packed.batches)
    Engine(cfg).run(data, [padded], pad_id=0)
    assert len(packed.batches) < len(padded.batches)  # no budget spent on padding
    # with one replica that computes on padding, every replica gets the padded budget
    mixed = [PackedEchoRunner(), EchoRunner()]
    Engine(cfg).run(data, mixed, pad_id=0)
    assert all(n * w <= 200 for n, w in mixed[1].batches) and max(mixed[0].padded_sizes) <= 200
    oom = PackedEchoRunner(oom_above=60)
    out = Engine(EngineConfig(max_batch_tokens=4000)).run(data, [oom], pad_id=0)
    assert out == [list(s.ids) for s in data]
    assert all(real <= 60 for _, real in oom.batches)
