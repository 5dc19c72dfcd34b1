"""How LLM rerankers lay out a (query, passage) pair as tokens (the reference's layout):
``[bos] + tok("A: " + query)[:query_max] + tok("\\n") + tok("B: " + passage)`` (the passage
cut so that this part holds at most ``max_length + len(sep) + len(prompt)`` tokens)
``+ tok("\\n") + tok(prompt)``, the segments (query+separator / passage /
separator+prompt) as token type ids. Scoring and fine-tuning both tokenise through
:class:`PairFormat`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bgekit.inputs import check_pairs
from bgekit.models.reranker import WindowParts
from bgekit.models.tokenizer import TextTokenizer
from bgekit.types import TokenSeq

YES_NO_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
QUERY_SEGMENT, PASSAGE_SEGMENT, PROMPT_SEGMENT = 0, 1, 2


@dataclass(frozen=True)
class PairFormat:
    """How an LLM reranker lays out a (query, passage) pair as tokens (see the module
    docstring): the one tokenisation that scoring (:class:`LLMReranker`) and fine-tuning
    (:mod:`bgekit.train.llm_reranker`) share. ``max_length``: the tokens of the query and
    passage parts together (and of the passage's alone, ``"B: "`` included), beside the
    separators and the prompt; ``query_max_length``: the query's (``"A: "`` included)."""

    tokenizer: TextTokenizer
    query_max_length: int
    max_length: int
    prompt: str
    layerwise: bool

    def bos(self) -> list[int]:
        tok = self.tokenizer
        # yes/no models get BOS unless it doubles as padding (the reference tokenizer's rule)
        if tok.bos_id is not None and (self.layerwise or tok.bos_id != tok.pad_id):
            return [tok.bos_id]
        return []

    def sep(self) -> list[int]:
        return self.tokenizer.ids(["\n"])[0]

    def prompt_ids(self) -> list[int]:
        return self.tokenizer.ids([self.prompt])[0]

    def limit(self) -> int:
        """Tokens the query part and ``sep + passage`` may hold together."""
        return self.max_length + len(self.sep()) + len(self.prompt_ids())

    def layout(self, first: list[int], second: list[int], cut: bool) -> TokenSeq:
        """``first + second + sep + prompt`` (``second`` starts with the separator), with
        the segments as token type ids."""
        sep, prompt = self.sep(), self.prompt_ids()
        ids = first + second + sep + prompt
        query_part = len(first) + len(sep)
        types = [QUERY_SEGMENT] * query_part + [PASSAGE_SEGMENT] * (len(second) - len(sep))
        types += [PROMPT_SEGMENT] * (len(sep) + len(prompt))
        return TokenSeq(ids, types, cut)

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[TokenSeq]:
        queries, passages = check_pairs(pairs)
        tok = self.tokenizer
        sep, bos, limit = self.sep(), self.bos(), self.limit()
        out = []
        q_ids = tok.ids(["A: " + q for q in queries])
        p_ids = tok.ids(["B: " + p for p in passages])
        for q, p in zip(q_ids, p_ids, strict=True):
            cut = len(q) > self.query_max_length or len(p) > self.max_length
            first = bos + q[: self.query_max_length]
            second = sep + p[: self.max_length]
            over = len(first) + len(second) - limit
            if 0 < over < len(second):  # like transformers' only-second truncation (none when it cannot fit)
                second = second[:-over]
                cut = True
            out.append(self.layout(first, second, cut))
        return out

    def window_parts(self, queries: Sequence[str], passages: Sequence[str]) -> list[WindowParts]:
        """The query part is ``bos + "A: " + query``; every window starts with ``"B:"``'s
        tokens (when the passage's tokens start with them) and fits beside the query."""
        tok = self.tokenizer
        q_max = self.query_max_length
        sep, bos, limit = self.sep(), self.bos(), self.limit()
        head = tok.ids(["B:"])[0]
        out = []
        for q, p in zip(
            tok.ids(["A: " + q for q in queries]), tok.ids(["B: " + p for p in passages]), strict=True
        ):
            first = bos + q[:q_max]
            own = p[len(head) :] if p[: len(head)] == head else p
            start = head if own is not p else []
            room = min(self.max_length, limit - len(first) - len(sep))
            out.append(WindowParts(first, start, own, room, len(q) > q_max))
        return out
