"""Validation of user input, with errors that name the offending position."""

from __future__ import annotations

from collections.abc import Sequence

from bgekit.errors import InputError


def _check_one(t: object, label: str) -> str:
    if not isinstance(t, str):
        raise InputError(f"{label} is {type(t).__name__}, expected a string")
    return t


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """Return ``texts`` as a list of strings, or raise :class:`InputError` naming the first
    item that is not one. Empty and whitespace-only strings are texts (they encode to the
    model's special tokens alone, as the reference toolkit and sentence-transformers do).

    A single string is refused rather than silently split into characters.
    """
    if isinstance(texts, str):
        raise InputError(f"{what} must be a list of strings, not a single string; wrap it: [text]")
    if not isinstance(texts, Sequence):
        raise InputError(f"{what} must be a list of strings, got {type(texts).__name__}")
    return [_check_one(t, f"{what}[{i}]") for i, t in enumerate(texts)]


def check_pairs(pairs: object) -> tuple[list[str], list[str]]:
    """Split (query, passage) pairs into two validated lists."""
    if not isinstance(pairs, Sequence) or isinstance(pairs, str):
        raise InputError(f"pairs must be a list of (query, passage) pairs, got {type(pairs).__name__}")
    queries: list[str] = []
    passages: list[str] = []
    for i, p in enumerate(pairs):
        if isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2:
            raise InputError(f"pairs[{i}] must be a (query, passage) pair")
        queries.append(_check_one(p[0], f"pairs[{i}][0] (query)"))
        passages.append(_check_one(p[1], f"pairs[{i}][1] (passage)"))
    return queries, passages


def passage_text(title: str, text: str) -> str:
    """What is encoded and reranked for a passage: its title, then its text."""
    return f"{title} {text}".strip() if title else text
