"""What is written around an input before it is tokenised: instructions, query formats, tasks
with an instruction for each side (BAAI/llm-embedder), and in-context examples (bge-en-icl).

A :class:`Prompts` value is immutable; the embedder holds one and passes it to the processor
with every call, so two calls never share mutable prompt state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bgekit.errors import InputError
from bgekit.types import Kind

ICL_EXAMPLE_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"
ICL_SUFFIX = "\n<response>"
EXAMPLE_KEYS = ("instruct", "query", "response")


@dataclass(frozen=True)
class Task:
    """One task's instructions: for the query side and for the passage (key) side."""

    query: str
    passage: str


@dataclass(frozen=True)
class Example:
    """An in-context example (bge-en-icl); ``instruct=None`` takes the query instruction."""

    query: str
    response: str
    instruct: str | None = None


def check_examples(examples: Iterable[Mapping[str, str] | Example]) -> tuple[Example, ...]:
    """``{"instruct", "query", "response"}`` dicts (or :class:`Example` values) checked, in order."""
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, Example):
            out.append(ex)
            continue
        if not isinstance(ex, Mapping) or not all(isinstance(v, str) for v in ex.values()):
            raise InputError(f"examples[{i}] must be a dict of strings (instruct, query, response)")
        unknown = set(ex) - set(EXAMPLE_KEYS)
        if unknown:
            raise InputError(f"examples[{i}] has unknown keys {sorted(unknown)}")
        out.append(Example(ex.get("query", ""), ex.get("response", ""), ex.get("instruct")))
    return tuple(out)


@dataclass(frozen=True)
class Prompts:
    """The instructions of one embedder.

    Without a task, queries get ``query_instruction`` in ``query_format`` (``format(instruction,
    query)``; nothing when the instruction is empty) and passages get ``passage_instruction``
    as a prefix. A task (``task=`` on a call, else the default ``task``) replaces both with its
    own pair. ``examples`` is ``None`` for models without in-context learning; a tuple (maybe
    empty) turns on bge-en-icl's query layout.
    """

    query_instruction: str = ""
    passage_instruction: str = ""
    query_format: str = "{}{}"
    tasks: tuple[tuple[str, Task], ...] = ()
    task: str | None = None
    examples: tuple[Example, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.query_format.count("{}") != 2:
            raise InputError(f"query format {self.query_format!r} needs two {{}} (instruction, query)")
        if self.task is not None:
            self.pick(self.task)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tasks)

    def pick(self, task: str | None) -> Task | None:
        """The task named ``task`` (``None``: the default task, if any), or an error naming
        the tasks there are."""
        name = self.task if task is None else task
        if name is None:
            return None
        for known, value in self.tasks:
            if known == name:
                return value
        choices = ", ".join(self.task_names) or "none: this model has no task table"
        raise InputError(f"unknown task {name!r}; tasks: {choices}")

    def instruction(self, kind: Kind, task: str | None = None) -> str:
        """The instruction ``kind`` inputs get under ``task`` (or the default)."""
        chosen = self.pick(task)
        if kind == "query":
            return chosen.query if chosen is not None else self.query_instruction
        return chosen.passage if chosen is not None else self.passage_instruction

    def apply(
        self, texts: Sequence[str], kind: Kind, *, task: str | None = None, instruction: str | None = None
    ) -> list[str]:
        """Texts as the model reads them: queries in the query format with their instruction
        (``instruction`` overrides the task's and the model's), passages with their prefix."""
        if instruction is not None and kind != "query":
            raise InputError("an instruction applies to queries only (kind='query')")
        text = self.instruction(kind, task) if instruction is None else instruction
        if not text:
            return list(texts)
        if kind == "query":
            return [self.query_format.format(text, t) for t in texts]
        return [text + t for t in texts]

    def with_examples(self, examples: Iterable[Mapping[str, str] | Example]) -> Prompts:
        """These prompts with in-context examples (an empty list keeps the ICL layout alone)."""
        return replace(self, examples=check_examples(examples))

    def with_task(self, task: str | None) -> Prompts:
        """These prompts with another default task (checked)."""
        return replace(self, task=task)

    def icl_prefix(self) -> str:
        """The examples as bge-en-icl writes them before a query, blank-line separated."""
        parts = [
            ICL_EXAMPLE_FORMAT.format(
                self.query_instruction if ex.instruct is None else ex.instruct, ex.query, ex.response
            )
            for ex in self.examples or ()
        ]
        return "\n\n".join(parts) + "\n\n" if parts else ""

    def describe(self) -> dict[str, Any]:
        """Every value, as JSON-ready data (for the model identity and manifests)."""
        return {
            "query_instruction": self.query_instruction,
            "passage_instruction": self.passage_instruction,
            "query_format": self.query_format,
            "tasks": {name: [t.query, t.passage] for name, t in self.tasks},
            "task": self.task,
            "examples": None
            if self.examples is None
            else [[ex.instruct, ex.query, ex.response] for ex in self.examples],
        }


def tasks_from(table: Mapping[str, tuple[str, str]]) -> tuple[tuple[str, Task], ...]:
    """A ``{name: (query instruction, passage instruction)}`` table as :attr:`Prompts.tasks`."""
    return tuple((name, Task(q, p)) for name, (q, p) in table.items())
