"""Training data: one JSON object per line, checked before any training starts.

A line is ``{"query": str, "pos": [str, ...], "neg": [str, ...], "pos_scores"?: [float],
"neg_scores"?: [float], "prompt"?: str, "task"?: str}`` (SPEC §3; ``task`` names an entry
of the model's task table, whose instructions the query and the passages get).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bgekit.errors import InputError
from bgekit.io import atomic_write, iter_jsonl

_KEYS = frozenset({"query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "task"})


@dataclass(frozen=True)
class TrainExample:
    """One query with its positives, negatives, optional teacher scores and prompt."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    pos_scores: tuple[float, ...] | None = None
    neg_scores: tuple[float, ...] | None = None
    prompt: str | None = None
    task: str | None = None

    @property
    def has_scores(self) -> bool:
        return self.pos_scores is not None and self.neg_scores is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "pos": list(self.pos), "neg": list(self.neg)}
        if self.pos_scores is not None:
            out["pos_scores"] = list(self.pos_scores)
        if self.neg_scores is not None:
            out["neg_scores"] = list(self.neg_scores)
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.task is not None:
            out["task"] = self.task
        return out


def _strings(obj: dict[str, Any], key: str, where: str, *, required: bool) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f'{where}: "{key}" must be a list of strings')
    if required and not value:
        raise InputError(f'{where}: "{key}" is empty; every query needs at least one positive')
    if any(not v.strip() for v in value):
        raise InputError(f'{where}: "{key}" holds an empty string')
    return tuple(value)


def _scores(obj: dict[str, Any], key: str, n: int, where: str) -> tuple[float, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise InputError(f'{where}: "{key}" must be a list of finite numbers')
    if len(value) != n:
        raise InputError(f'{where}: "{key}" has {len(value)} scores for {n} passages')
    return tuple(float(v) for v in value)


def parse_example(obj: Any, where: str) -> TrainExample:
    """Check one decoded line; errors name ``where`` (file:line) and the field."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise InputError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}"
        )
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InputError(f'{where}: "query" must be a non-empty string')
    pos = _strings(obj, "pos", where, required=True)
    neg = _strings(obj, "neg", where, required=False)
    pos_scores = _scores(obj, "pos_scores", len(pos), where)
    neg_scores = _scores(obj, "neg_scores", len(neg), where)
    if (pos_scores is None) != (neg_scores is None):
        raise InputError(f'{where}: give both "pos_scores" and "neg_scores" or neither')
    prompt, task = obj.get("prompt"), obj.get("task")
    for key, value in (("prompt", prompt), ("task", task)):
        if value is not None and not isinstance(value, str):
            raise InputError(f'{where}: "{key}" must be a string')
    return TrainExample(query, pos, neg, pos_scores, neg_scores, prompt, task)


def load_train_data(path: str | Path) -> list[TrainExample]:
    """Every line of a training file, or an :class:`InputError` naming the first bad line."""
    p = Path(path)
    out = [parse_example(obj, f"{p}:{n}") for n, obj in iter_jsonl(p)]
    if not out:
        raise InputError(f"{p} holds no training examples")
    return out


def write_train_data(path: str | Path, examples: Sequence[TrainExample]) -> None:
    """Write examples as JSON lines, atomically."""
    with atomic_write(Path(path)) as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False).encode("utf-8") + b"\n")


def check_for_training(examples: Sequence[TrainExample], group_size: int) -> bool:
    """Refuse data a run cannot use; returns whether every example carries teacher scores."""
    if group_size < 1:
        raise InputError(f"group_size must be at least 1, got {group_size}")
    if not examples:
        raise InputError("no training examples")
    with_scores = [ex.has_scores for ex in examples]
    if any(with_scores) and not all(with_scores):
        first = with_scores.index(not with_scores[0])
        raise InputError(
            f"example {first + 1} {'has' if with_scores[first] else 'lacks'} teacher scores but "
            f"example 1 {'has' if with_scores[0] else 'lacks'} them; distillation needs them on every line"
        )
    if group_size > 1:
        for i, ex in enumerate(examples):
            if not ex.neg:
                raise InputError(
                    f"example {i + 1} ({ex.query[:40]!r}) has no negatives; mine some "
                    "(bgekit mine) or train with group size 1"
                )
    return all(with_scores)


def sample_group(
    ex: TrainExample, group_size: int, rng: np.random.Generator
) -> tuple[list[str], list[float] | None]:
    """One positive then ``group_size - 1`` negatives (repeated when there are too few), with
    their teacher scores when the example has them."""
    pi = int(rng.integers(len(ex.pos)))
    need = group_size - 1
    if need == 0:
        ni: list[int] = []
    else:
        pool = np.arange(len(ex.neg))
        if len(pool) < need:
            pool = np.tile(pool, math.ceil(need / len(pool)))
        ni = [int(i) for i in rng.choice(pool, size=need, replace=False)]
    texts = [ex.pos[pi], *(ex.neg[i] for i in ni)]
    if ex.pos_scores is None or ex.neg_scores is None:
        return texts, None
    return texts, [ex.pos_scores[pi], *(ex.neg_scores[i] for i in ni)]


def beir_train_examples(folder: str | Path, split: str = "train") -> list[TrainExample]:
    """Queries of a BEIR split with their relevant documents as positives (no negatives yet)."""
    from bgekit.eval.data import load_beir

    ds = load_beir(folder, split)
    if ds.has_images:  # its captions alone would train on a dataset that is not there
        raise InputError(f"{folder} holds images; fine-tuning reads text examples only")
    doc_text = dict(zip(ds.doc_ids, ds.docs, strict=True))
    out = []
    for qid, text in zip(ds.query_ids, ds.queries, strict=True):
        pos = tuple(doc_text[d] for d, rel in sorted(ds.qrels.get(qid, {}).items()) if rel > 0)
        if pos:
            out.append(TrainExample(text, pos))
    return out
