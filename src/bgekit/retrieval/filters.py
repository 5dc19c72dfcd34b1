"""Metadata filters: which documents a search may return, decided before any scoring.

A filter is a conjunction of conditions on a document's metadata fields (``id`` and
``title`` name the document's own). Written as text (the CLI's ``--where``, repeated)::

    year>=2020    ext=.md    lang in en,zh    path^=docs/    date<2024-06-01    draft!=true

or as a JSON object (the HTTP API's ``filter``; also accepted by the library)::

    {"year": {"$gte": 2020}, "ext": ".md", "lang": {"$in": ["en", "zh"]},
     "path": {"$prefix": "docs/"}, "date": {"$lt": "2024-06-01"}}

Values: numbers compare as numbers (so does text that reads as one, as CSV cells hold), ISO
dates and times (``2024-06-01``, ``2024-06-01T12:00:00Z``) as points in time, other text as text; ``true`` / ``false`` /
``null`` are JSON's. A document lacking the field never matches (``!=`` included).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bgekit.errors import InputError

Op = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "prefix"]
OPS: tuple[Op, ...] = ("eq", "ne", "lt", "le", "gt", "ge", "in", "prefix")
# Text operators, longest first so that ">=" is not read as ">".
_TEXT_OPS: tuple[tuple[str, Op], ...] = (
    ("^=", "prefix"),
    ("!=", "ne"),
    (">=", "ge"),
    ("<=", "le"),
    ("=", "eq"),
    (">", "gt"),
    ("<", "lt"),
)
_RANGES: frozenset[Op] = frozenset({"lt", "le", "gt", "ge"})

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Condition:
    """``field op value``; ``value`` is a tuple for ``in``."""

    field: str
    op: Op
    value: Scalar | tuple[Scalar, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field:
            raise InputError("a filter condition needs a field name")
        if self.op not in OPS:
            raise InputError(f"filter operator must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.op == "in" and not isinstance(self.value, tuple):
            raise InputError(f"filter {self.field} in: give a list of values")
        if self.op == "prefix" and not isinstance(self.value, str):
            raise InputError(f"filter {self.field} prefix: give text, got {self.value!r}")
        if self.op in _RANGES and (self.value is None or isinstance(self.value, bool)):
            raise InputError(
                f"filter {self.field}: {self.value!r} has no order (give a number, date or text)"
            )
        values = self.value if isinstance(self.value, tuple) else (self.value,)
        bad = next((v for v in values if not (v is None or isinstance(v, (str, int, float, bool)))), None)
        if bad is not None:
            raise InputError(f"filter {self.field}: {bad!r} is not a number, text, true, false or null")

    def text(self) -> str:
        """The condition as ``--where`` writes it."""
        if self.op == "in":
            assert isinstance(self.value, tuple)
            return f"{self.field} in {','.join(_shown(v) for v in self.value)}"
        sign = next(t for t, o in _TEXT_OPS if o == self.op)
        return f"{self.field}{sign}{_shown(self.value)}"  # type: ignore[arg-type]


def _shown(v: Scalar) -> str:
    return v if isinstance(v, str) else json.dumps(v)


@dataclass(frozen=True)
class Filter:
    """All of ``conditions`` (an empty filter lets every document through)."""

    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    @classmethod
    def parse(cls, spec: Filter | str | Sequence[str] | Mapping[str, Any] | None) -> Filter:
        """A filter from ``--where`` texts (one or several), a JSON object, or ``None``."""
        if spec is None:
            return cls()
        if isinstance(spec, Filter):
            return spec
        if isinstance(spec, str):
            return cls((parse_condition(spec),))
        if isinstance(spec, Mapping):
            return cls(_from_mapping(spec))
        if isinstance(spec, Sequence):
            return cls(tuple(parse_condition(s) for s in spec))
        raise InputError(f"a filter is text like 'year>=2020' or a JSON object, not {type(spec).__name__}")

    def matches(self, metadata: Mapping[str, Any], doc_id: str = "", title: str = "") -> bool:
        """Whether a document with this metadata (and id, title) passes every condition."""
        for c in self.conditions:
            if c.field == "id" and "id" not in metadata:
                value: Any = doc_id
            elif c.field == "title" and "title" not in metadata:
                value = title
            elif c.field in metadata:
                value = metadata[c.field]
            else:
                return False
            if not _holds(c, value):
                return False
        return True

    def text(self) -> str:
        return " and ".join(c.text() for c in self.conditions)


# What search functions take as a filter: a Filter, ``--where`` text(s), a JSON object, or None.
FilterSpec = Filter | str | Sequence[str] | Mapping[str, Any] | None


def _typed(raw: str) -> Scalar:
    """A ``--where`` value as JSON reads it when it is a number, true, false or null; else text."""
    raw = raw.strip()
    if raw in ("true", "false", "null"):
        return bool(json.loads(raw)) if raw != "null" else None
    try:
        number = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
        return number
    return raw


def parse_condition(text: str) -> Condition:
    """One ``--where`` condition (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("a filter condition is empty (e.g. 'year>=2020')")
    words = text.split(None, 2)
    if len(words) == 3 and words[1] == "in":
        values = tuple(_typed(v) for v in words[2].split(",") if v.strip())
        if not values:
            raise InputError(f"filter {text!r}: 'in' needs values separated by commas")
        return Condition(words[0], "in", values)
    for sign, op in _TEXT_OPS:
        field, found, value = text.partition(sign)
        if found and field.strip():
            field = field.strip()
            if any(ch in field for ch in "<>=!^"):
                continue  # the operator was not the first one in the text
            if value.lstrip()[:1] in ("<", ">", "=", "!"):
                break  # "n>>3", "n==3": a typo, not a value
            typed: Scalar = value.strip() if op == "prefix" else _typed(value)
            return Condition(field, op, typed)
    raise InputError(
        f"cannot read the filter {text!r}: write field=value, !=, <, <=, >, >=, field^=prefix or 'field in a,b'"
    )


_JSON_OPS: dict[str, Op] = {
    "$eq": "eq",
    "$ne": "ne",
    "$lt": "lt",
    "$lte": "le",
    "$gt": "gt",
    "$gte": "ge",
    "$in": "in",
    "$prefix": "prefix",
}


def _from_mapping(spec: Mapping[str, Any]) -> tuple[Condition, ...]:
    out = []
    for field, rule in spec.items():
        if not isinstance(rule, Mapping):
            out.append(Condition(str(field), "eq", rule))
            continue
        if not rule:
            raise InputError(f'filter {field}: an empty object (give e.g. {{"$gte": 2020}})')
        for key, value in rule.items():
            if key not in _JSON_OPS:
                raise InputError(f"filter {field}: unknown operator {key!r} (use {', '.join(_JSON_OPS)})")
            op = _JSON_OPS[key]
            if op == "in":
                if not isinstance(value, (list, tuple)):
                    raise InputError(f"filter {field}: $in takes a list")
                value = tuple(value)
            out.append(Condition(str(field), op, value))
    return tuple(out)


def as_instant(value: Any) -> dt.datetime | None:
    """An ISO date or date-time as an aware time (UTC when it names no zone); else ``None``."""
    if not isinstance(value, str) or len(value) < 10 or value[4:5] != "-":
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def is_instant(value: Any) -> bool:
    """Whether ``value`` is an ISO date or date-time (compared as a point in time)."""
    return as_instant(value) is not None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(a: Any, b: Any) -> tuple[float, float] | None:
    """Both as numbers when one is a number and the other one or text that reads as one
    (a CSV cell is text: ``"2024"`` equals 2024)."""
    if not (_number(a) or _number(b)):
        return None
    out = []
    for v in (a, b):
        if _number(v):
            out.append(float(v))
            continue
        if not isinstance(v, str):
            return None
        try:
            f = float(v)
        except ValueError:
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return out[0], out[1]


def _equal(a: Any, b: Any) -> bool:
    both = _numbers(a, b)
    if both is not None:
        return both[0] == both[1]
    if type(a) is not type(b):
        ta, tb = as_instant(a), as_instant(b)
        return ta is not None and ta == tb
    if isinstance(a, str):
        ta, tb = as_instant(a), as_instant(b)
        if ta is not None and tb is not None:
            return ta == tb
    return bool(a == b)


def _order(a: Any, b: Any) -> int | None:
    """-1, 0, 1 comparing ``a`` to ``b``; ``None`` when they have no common order."""
    both = _numbers(a, b)
    if both is not None:
        x, y = both
        return (x > y) - (x < y)
    ta, tb = as_instant(a), as_instant(b)
    if ta is not None and tb is not None:
        return (ta > tb) - (ta < tb)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    return None


def _holds(c: Condition, value: Any) -> bool:
    if c.op == "eq":
        return _equal(value, c.value)
    if c.op == "ne":
        return not _equal(value, c.value)
    if c.op == "in":
        assert isinstance(c.value, tuple)
        return any(_equal(value, v) for v in c.value)
    if c.op == "prefix":
        return isinstance(value, str) and value.startswith(str(c.value))
    order = _order(value, c.value)
    if order is None:
        return False
    return {"lt": order < 0, "le": order <= 0, "gt": order > 0, "ge": order >= 0}[c.op]
