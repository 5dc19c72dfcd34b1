"""In-context examples for training an embedder the way bge-en-icl was trained (the
reference's decoder-only ICL fine-tuning).

Each query gets ``k`` examples, ``k`` drawn uniformly from ``0..examples`` (0..5 by
default), each another query of the same task (same ``task`` and ``prompt``: the same
instruction) with one of its positives. None is the query itself, a line with the same
query text, or an example whose answer is one of the query's own positives (it would give
the answer away). An example's instructed query (``<instruct>{instruction}\\n<query>{text}``)
is cut to ``query_max_length`` tokens and its answer to ``passage_max_length``; examples
are added in order while they fit ``max_length`` tokens in all.

The reference draws examples from the other queries of the same batch (its batches hold
one task); bgekit draws them from the whole training set's queries of the task, so a batch
may mix tasks. The text the model reads is the inference layout itself
(:meth:`bgekit.models.prompts.Prompts.icl_prefix` and the processor's ICL query layout):
``example + "\\n\\n"`` per example, then the instructed query and ``"\\n<response>"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bgekit.errors import InputError
from bgekit.models.prompts import Example, Prompts
from bgekit.models.tokenizer import TextTokenizer
from bgekit.train.data import TrainExample

# The reference's defaults (DecoderOnlyEmbedderICLDataArguments) and its 0..5 examples.
MAX_EXAMPLES = 5
EXAMPLE_QUERY_MAX_LENGTH = 64
EXAMPLE_PASSAGE_MAX_LENGTH = 96


@dataclass(frozen=True, kw_only=True)
class IclSettings:
    """``examples``: the most examples a query gets (each query draws ``k`` in
    ``0..examples``); ``query_max_length`` / ``passage_max_length``: tokens of an example's
    instructed query / answer; ``max_length``: tokens all of a query's examples may take
    (``None``: no limit beyond the per-example cuts). The query itself keeps the model's
    ``query_max_length``, as at inference."""

    examples: int = MAX_EXAMPLES
    query_max_length: int = EXAMPLE_QUERY_MAX_LENGTH
    passage_max_length: int = EXAMPLE_PASSAGE_MAX_LENGTH
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.examples < 0:
            raise InputError(f"in-context examples must be at least 0, got {self.examples}")
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < 1:
                raise InputError(f"in-context example {name} must be at least 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 1:
            raise InputError(f"in-context max_length must be at least 1, got {self.max_length}")


Shot = tuple[int, int]  # (training example, which of its positives)


class ShotSampler:
    """Draws each query's in-context examples from the other queries of its task."""

    def __init__(self, examples: Sequence[TrainExample], settings: IclSettings):
        self.examples = list(examples)
        self.settings = settings
        by_task: dict[tuple[str | None, str | None], list[int]] = {}
        for i, ex in enumerate(self.examples):
            by_task.setdefault((ex.task, ex.prompt), []).append(i)
        self._task = [by_task[(ex.task, ex.prompt)] for ex in self.examples]

    def candidates(self, i: int) -> list[int]:
        """The examples query ``i`` may be shown: same task, another query, with at least
        one answer that is not one of its own positives."""
        own = self.examples[i]
        return [
            j
            for j in self._task[i]
            if j != i
            and self.examples[j].query != own.query
            and any(p not in own.pos for p in self.examples[j].pos)
        ]

    def draw(self, i: int, rng: np.random.Generator) -> tuple[Shot, ...]:
        """``k ~ U{0..examples}`` examples for query ``i`` (fewer when its task has fewer
        other queries), each with one of its usable positives drawn at random."""
        k = int(rng.integers(self.settings.examples + 1))
        pool = self.candidates(i)
        k = min(k, len(pool))
        own = self.examples[i].pos
        shots = []
        for at in rng.choice(len(pool), size=k, replace=False) if k else ():
            j = pool[int(at)]
            usable = [n for n, p in enumerate(self.examples[j].pos) if p not in own]
            shots.append((j, usable[int(rng.integers(len(usable)))]))
        return tuple(shots)


def cut(tokenizer: TextTokenizer, text: str, limit: int) -> str:
    """``text`` cut to its first ``limit`` tokens (unchanged when it fits)."""
    ids = tokenizer.ids([text])[0]
    return text if len(ids) <= limit else tokenizer.decode(ids[: max(limit, 0)])


def format_shots(
    shots: Sequence[tuple[str, str]],
    instruction: str,
    tokenizer: TextTokenizer,
    settings: IclSettings,
) -> tuple[Example, ...]:
    """(query, answer) pairs as the :class:`~bgekit.models.prompts.Example` values inference
    lays out: each instructed query cut to ``query_max_length`` tokens (the instruction
    counts), each answer to ``passage_max_length``; kept in order while the examples'
    text (:meth:`Prompts.icl_prefix`) fits ``max_length`` tokens."""
    head = len(tokenizer.ids([f"<instruct>{instruction}\n<query>"])[0])
    room = settings.query_max_length - head
    out: list[Example] = []
    for query, answer in shots:
        ex = Example(
            cut(tokenizer, query, room) if room > 0 else "",
            cut(tokenizer, answer, settings.passage_max_length),
            instruction,
        )
        if settings.max_length is not None:
            prefix = Prompts(examples=(*out, ex)).icl_prefix()
            if len(tokenizer.ids([prefix])[0]) > settings.max_length:
                break
        out.append(ex)
    return tuple(out)
