"""Cutting a text where its structure allows, within a token budget: at Markdown headings
first (a heading stays with its section), then paragraphs, sentences, lines (a single
newline inside a paragraph is a soft wrap) and words; a code fence is cut only between its
lines; a run of text with no break at all (a long
URL, unspaced text) is cut between tokens. Pieces are packed greedily up to the budget, and
the next chunk starts with the previous chunk's last pieces up to the overlap.

Pure functions over a text and its tokens' character spans (no tokenizer here).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Break strengths, strongest first.
HEADING, PARAGRAPH, SENTENCE, LINE, WORD = range(5)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n")
# after a sentence's end mark and its closing quotes / brackets, then spaces; CJK marks need none
_SENTENCE = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+|(?<=[。！？；])\s*")
_WORD = re.compile(r"\s+")


@dataclass(frozen=True)
class Heading:
    start: int  # where its line starts
    level: int  # 1 for "#"
    text: str


def headings(text: str) -> list[Heading]:
    """The Markdown headings outside code fences, in order."""
    fenced = _fenced(text)
    return [
        Heading(m.start(), len(m.group(1)), m.group(2).strip())
        for m in _HEADING.finditer(text)
        if not _inside(fenced, m.start())
    ]


def _fenced(text: str) -> list[tuple[int, int]]:
    """``[start, stop)`` of each code fence (an unclosed one runs to the end)."""
    marks = [m.start() for m in _FENCE.finditer(text)]
    out = []
    for i in range(0, len(marks), 2):
        stop = marks[i + 1] if i + 1 < len(marks) else len(text)
        end_of_line = text.find("\n", stop)
        out.append((marks[i], len(text) if end_of_line < 0 else end_of_line + 1))
    return out


def _inside(ranges: Sequence[tuple[int, int]], pos: int) -> bool:
    return any(a < pos < b for a, b in ranges)


def break_points(text: str) -> list[tuple[int, int]]:
    """``(position, strength)`` where a piece may start, sorted by position; inside a code
    fence only line starts (so code is never cut mid-line)."""
    fenced = _fenced(text)
    points: dict[int, int] = {}

    def add(pos: int, strength: int) -> None:
        # a piece starts at content: not inside a run of whitespace (a heading may be indented)
        if not 0 < pos < len(text) or (strength != HEADING and text[pos].isspace()):
            return
        if strength < points.get(pos, 99):
            points[pos] = strength

    for h in headings(text):
        add(h.start, HEADING)
    for a, b in fenced:  # a fence is a paragraph of its own
        add(a, PARAGRAPH)
        add(b, PARAGRAPH)
    for pattern, strength in ((_PARAGRAPH, PARAGRAPH), (_SENTENCE, SENTENCE), (_LINE, LINE), (_WORD, WORD)):
        for m in pattern.finditer(text):
            pos = m.end()
            if not _inside(fenced, pos):
                add(pos, strength)
            elif pattern is _LINE or pattern is _PARAGRAPH:  # code: between lines only
                add(pos, LINE)
    return sorted(points.items())


class TokenCounter:
    """Tokens of a character range, from the text's token spans: those starting inside it."""

    def __init__(self, spans: np.ndarray):
        self.starts = np.asarray(spans, dtype=np.int64).reshape(-1, 2)[:, 0]

    def __call__(self, a: int, b: int) -> int:
        return int(np.searchsorted(self.starts, b) - np.searchsorted(self.starts, a))

    def token_index(self, pos: int) -> int:
        """The first token starting at or after ``pos``."""
        return int(np.searchsorted(self.starts, pos))


def split_text(text: str, spans: np.ndarray, budget: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` character ranges of ``text``'s chunks: each at most ``budget``
    tokens (counted on ``spans``), cut at the strongest breaks that make pieces fit, packed
    into as few chunks as the budget allows, of even sizes; a chunk after the first repeats
    the previous chunk's last whole pieces making at least ``overlap`` tokens, at most half
    the chunk (none when the last piece alone is longer). Ranges include the whitespace
    between pieces (strip them to show)."""
    count = TokenCounter(spans)
    if count(0, len(text)) <= budget:
        return [(0, len(text))]
    points = break_points(text)
    positions = np.array([p for p, _ in points], dtype=np.int64)
    strengths = np.array([s for _, s in points], dtype=np.int64)
    pieces: list[tuple[int, int]] = []

    def cut(a: int, b: int, strength: int) -> None:
        if count(a, b) <= budget:
            pieces.append((a, b))
            return
        if strength > WORD:  # no break left: between tokens
            starts = count.starts
            first, last = count.token_index(a), count.token_index(b)
            bounds = [a, *[int(starts[t]) for t in range(first + budget, last, budget)], b]
            pieces.extend(itertools.pairwise(bounds))
            return
        lo, hi = np.searchsorted(positions, a, side="right"), np.searchsorted(positions, b, side="left")
        inner = positions[lo:hi][strengths[lo:hi] == strength].tolist()
        if not inner:
            cut(a, b, strength + 1)
            return
        bounds = [a, *inner, b]
        for x, y in itertools.pairwise(bounds):
            cut(x, y, strength + 1)

    cut(0, len(text), HEADING)
    # a heading line, or a code fence's opening line, belongs with what follows it
    heading_starts = {h.start for h in headings(text)} | {a for a, _ in _fenced(text)}

    def heading_only(piece: tuple[int, int]) -> bool:
        return piece[0] in heading_starts and "\n" not in text[piece[0] : piece[1]].strip()

    def finer(piece: tuple[int, int]) -> list[tuple[int, int]]:
        """``piece`` cut at the strongest breaks inside it (itself when there are none)."""
        a, b = piece
        lo, hi = np.searchsorted(positions, a, side="right"), np.searchsorted(positions, b, side="left")
        if lo >= hi:
            return [piece]
        inner = positions[lo:hi][strengths[lo:hi] == strengths[lo:hi].min()].tolist()
        bounds = [a, *inner, b]
        return list(itertools.pairwise(bounds))

    def pack(limit: int) -> list[tuple[int, int]]:
        """Pieces packed greedily into chunks of at most ``limit`` tokens."""
        chunks: list[tuple[int, int]] = []
        i = 0
        while i < len(pieces):
            # a heading stays with its section: when the next piece does not fit beside it,
            # that piece is cut finer until its start does (or cannot be cut)
            while (
                heading_only(pieces[i])
                and i + 1 < len(pieces)
                and count(pieces[i][0], pieces[i + 1][1]) > limit
            ):
                parts = finer(pieces[i + 1])
                if len(parts) == 1:
                    break
                pieces[i + 1 : i + 2] = parts
            j = i
            while j + 1 < len(pieces) and count(pieces[i][0], pieces[j + 1][1]) <= limit:
                j += 1
            if j > i and heading_only(pieces[j]):
                j -= 1  # nor does a heading end a chunk: it starts the next
            chunks.append((pieces[i][0], pieces[j][1]))
            if j + 1 >= len(pieces):
                break
            # the next chunk starts with the last whole pieces that make at least the overlap
            # (at most half the chunk), if any
            k = j + 1
            while k - 1 > i and count(pieces[k][0] if k <= j else pieces[j][1], pieces[j][1]) < overlap:
                if count(pieces[k - 1][0], pieces[j][1]) > limit // 2:
                    break
                k -= 1
            if k <= j and count(pieces[k][0], pieces[j + 1][1]) > limit:
                k = j + 1  # the overlap would leave no room for the next piece
            i = k
        return chunks

    # Balanced: as few chunks as filling each to the budget makes, but of even sizes (a
    # greedy pass leaves a short last chunk, a poor text to embed on its own).
    full = pack(budget)
    total = count(0, len(text))
    limit = max(1, min(budget, -(-(total + overlap * (len(full) - 1)) // len(full))))
    while limit < budget:
        even = pack(limit)
        if len(even) <= len(full):
            return even
        limit += max(1, budget // 16)
    return full


def heading_path(sections: Sequence[Heading], pos: int, *, inclusive: bool = False) -> list[str]:
    """The headings a position sits under, outermost first (``inclusive``: a heading starting
    exactly at ``pos`` counts)."""
    stack: list[Heading] = []
    for h in sections:
        if h.start > pos or (h.start == pos and not inclusive):
            break
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
    return [h.text for h in stack]
