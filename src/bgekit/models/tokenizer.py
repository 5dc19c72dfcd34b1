"""Tokenisation straight on the Rust ``tokenizers`` backend: once per input, no padding."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from bgekit.errors import ModelFormatError
from bgekit.io import atomic_write
from bgekit.types import TokenSeq

logger = logging.getLogger(__name__)


_Parts = tuple[Tokenizer, int, frozenset[int], int | None]  # backend, pad id, special ids, BOS id

# What transformers reads to build a tokenizer; the cache key covers all of them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)
# The files that hold a vocabulary: from a folder with none of them transformers builds a
# tokenizer of special tokens only (every word [UNK]).
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)


def tokenizer_files(path: Path) -> list[Path]:
    """The tokenizer files in folder ``path`` (what shapes its tokens)."""
    return [path / name for name in TOKENIZER_FILES if (path / name).is_file()]


def _check_files(path: Path) -> None:
    if not any((path / name).is_file() for name in VOCABULARY_FILES):
        present = [f.name for f in tokenizer_files(path)]
        raise ModelFormatError(
            f"{path} has no tokenizer: {VOCABULARY_FILES[0]} and a vocabulary file "
            f"({', '.join(VOCABULARY_FILES[1:])}) are all missing"
            + (f" (only {', '.join(present)} is there)" if present else "")
        )


def _check_vocabulary(path: Path, backend: Tokenizer, special: frozenset[int]) -> None:
    """A vocabulary of special tokens only (an emptied vocabulary file) is refused."""
    vocab = backend.get_vocab(with_added_tokens=True)
    added = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
    if set(vocab.values()) <= added | special:
        source = next((path / n for n in VOCABULARY_FILES if (path / n).is_file()), path)
        tokens = sorted(vocab, key=vocab.__getitem__)
        raise ModelFormatError(
            f"{source}: the tokenizer's vocabulary holds only special tokens ({' '.join(tokens[:8])}), "
            "so every word would be unknown"
        )


def cache_dir() -> Path | None:
    """bgekit's cache folder: ``$BGEKIT_CACHE``, else ``$XDG_CACHE_HOME/bgekit``, else
    ``~/.cache/bgekit``; ``BGEKIT_CACHE=off`` turns caching off."""
    env = os.environ.get("BGEKIT_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "false") else Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bgekit"


def tokenizer_cache(path: Path) -> Path | None:
    """Where the tokenizer built from ``path`` is cached: keyed by the bytes of its files and
    the transformers and tokenizers versions that built it."""
    root = cache_dir()
    if root is None:
        return None
    h = hashlib.sha256()
    for v in ("transformers", "tokenizers"):
        try:
            h.update(f"{v}={metadata.version(v)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{v}=none;".encode())
    for name in TOKENIZER_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return root / "tokenizers" / f"{h.hexdigest()[:32]}.json"


def _read_cached(cache: Path) -> _Parts | None:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        return (
            Tokenizer.from_str(data["backend"]),
            int(data["pad_id"]),
            frozenset(int(i) for i in data["special_ids"]),
            None if data["bos_id"] is None else int(data["bos_id"]),
        )
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged entry (tokenizers raises plain Exception) is rebuilt
        logger.debug("ignoring the cached tokenizer %s: %s", cache, e)
        return None


def _write_cached(cache: Path, parts: _Parts) -> None:
    backend, pad_id, special, bos_id = parts
    data = {"backend": backend.to_str(), "pad_id": pad_id, "special_ids": sorted(special), "bos_id": bos_id}
    try:
        with atomic_write(cache) as f:
            f.write(json.dumps(data).encode())
    except OSError as e:  # a read-only home is not an error, only slower loads
        logger.debug("cannot cache the tokenizer at %s: %s", cache, e)


def _from_transformers(path: Path) -> _Parts:
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers and tokenizers raise many types for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFormatError(f"cannot load a tokenizer from {path}: {first}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ModelFormatError(f"{path}: bgekit needs a fast (Rust) tokenizer; none could be built")
    pad_id = hf.pad_token_id
    if pad_id is None:
        pad_id = hf.eos_token_id if hf.eos_token_id is not None else 0
    special = {hf.cls_token_id, hf.sep_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id}
    return (
        backend,
        int(pad_id),
        frozenset(int(i) for i in special if i is not None),
        None if hf.bos_token_id is None else int(hf.bos_token_id),
    )


class TextTokenizer:
    """Turns texts and (query, passage) pairs into :class:`TokenSeq`, truncated at the end."""

    def __init__(
        self,
        backend: Tokenizer,
        *,
        pad_id: int,
        special_ids: frozenset[int],
        with_type_ids: bool,
        bos_id: int | None = None,
    ):
        # A private copy: folders may ship padding/truncation settings (all-MiniLM-L6-v2
        # pads to 128), and bgekit decides those itself.
        self._tok = Tokenizer.from_str(backend.to_str())
        self._tok.no_padding()
        self._tok.no_truncation()
        self.pad_id = pad_id
        self.special_ids = special_ids
        self.with_type_ids = with_type_ids
        self.bos_id = bos_id
        proc = self._tok.post_processor
        self._n_special = proc.num_special_tokens_to_add(False) if proc is not None else 0
        self._n_special_pair = proc.num_special_tokens_to_add(True) if proc is not None else 0
        # the special tokens before and after a single text's own tokens (for wrap_ids)
        probe = self._tok.encode("a", add_special_tokens=False).ids
        full = self._finish(self._tok.encode("a", add_special_tokens=False), None).ids
        at = next((i for i in range(len(full) - len(probe) + 1) if full[i : i + len(probe)] == probe), None)
        self._frame = None if at is None else (list(full[:at]), list(full[at + len(probe) :]))
        self._pair_frame = self._find_pair_frame()

    def _find_pair_frame(self) -> tuple[list[int], list[int], list[int], list[int]] | None:
        """Where a pair's own tokens sit among its special ones: the ids and segment ids
        around ``a`` and ``b`` in ``(a, b)`` (prefix, middle, suffix), or ``None`` when the
        special tokens change the texts' tokens."""
        qa = self._tok.encode("a", add_special_tokens=False)
        pb = self._tok.encode("b", add_special_tokens=False)
        q, p = list(qa.ids), list(pb.ids)
        full = self._finish(qa, pb)
        ids, types = list(full.ids), list(full.type_ids)
        i = next((k for k in range(len(ids) - len(q) + 1) if ids[k : k + len(q)] == q), None)
        if i is None:
            return None
        j = next((k for k in range(i + len(q), len(ids) - len(p) + 1) if ids[k : k + len(p)] == p), None)
        if j is None:
            return None
        return ids, types, [i, i + len(q)], [j, j + len(p)]

    @classmethod
    def from_folder(cls, path: Path, *, with_type_ids: bool) -> TextTokenizer:
        """The folder's tokenizer as transformers builds it (it converts slow-tokenizer files
        and applies the folder's settings), kept as its fast backend. The result is cached
        (see :func:`tokenizer_cache`), so later loads need neither transformers nor the
        conversion. A folder without tokenizer files, or whose vocabulary holds only special
        tokens, is an error naming it."""
        _check_files(path)
        cache = tokenizer_cache(path)
        parts = _read_cached(cache) if cache is not None else None
        if parts is None:
            parts = _from_transformers(path)
            if cache is not None:
                _write_cached(cache, parts)
        backend, pad_id, special, bos_id = parts
        _check_vocabulary(path, backend, special)
        return cls(backend, pad_id=pad_id, special_ids=special, with_type_ids=with_type_ids, bos_id=bos_id)

    def _seq(self, enc: Encoding, truncated: bool) -> TokenSeq:
        return TokenSeq(enc.ids, enc.type_ids if self.with_type_ids else None, truncated)

    def _finish(self, first: Encoding, second: Encoding | None) -> Encoding:
        proc = self._tok.post_processor
        if proc is None:
            if second is None:
                return first
            return Encoding.merge([first, second])
        return proc.process(first, second, True)

    def encode(self, texts: Sequence[str], max_length: int) -> list[TokenSeq]:
        """Texts with special tokens, each cut to ``max_length`` tokens in all."""
        room = max_length - self._n_special
        if room < 1:
            raise ModelFormatError(f"max_length {max_length} leaves no room for text")
        out = []
        for enc in self._tok.encode_batch(list(texts), add_special_tokens=False):
            cut = len(enc.ids) > room
            if cut:
                enc.truncate(room)
            out.append(self._seq(self._finish(enc, None), cut))
        return out

    def encode_pairs(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        max_length: int,
        query_max_length: int,
    ) -> list[TokenSeq]:
        """Pairs as the reference cross-encoder builds them: the query keeps at most
        ``query_max_length`` tokens, the passage is cut so that the pair fits ``max_length``."""
        q_encs = self._tok.encode_batch(list(queries), add_special_tokens=False)
        p_encs = self._tok.encode_batch(list(passages), add_special_tokens=False)
        out = []
        for q, p in zip(q_encs, p_encs, strict=True):
            cut = False
            if len(q.ids) > query_max_length:
                q.truncate(query_max_length)
                cut = True
            room = max_length - len(q.ids) - self._n_special_pair
            if room < 1:
                raise ModelFormatError(f"max_length {max_length} leaves no room for the passage")
            if len(p.ids) > room:
                p.truncate(room)
                cut = True
            out.append(self._seq(self._finish(q, p), cut))
        return out

    def wrap_ids(self, ids: Sequence[Sequence[int]], max_length: int) -> list[TokenSeq]:
        """Token ids of texts (no special tokens, as :meth:`ids` gives them) with the special
        tokens a text gets, each cut to ``max_length`` tokens in all: ``wrap_ids(ids(t))``
        equals ``encode(t)``."""
        if self._frame is None:
            raise ModelFormatError(
                "this tokenizer changes a text's tokens when it adds special ones; give text"
            )
        prefix, suffix = self._frame
        room = max_length - len(prefix) - len(suffix)
        if room < 1:
            raise ModelFormatError(f"max_length {max_length} leaves no room for text")
        out = []
        for one in ids:
            cut = len(one) > room
            full = [*prefix, *list(one)[:room], *suffix]
            out.append(TokenSeq(full, [0] * len(full) if self.with_type_ids else None, cut))
        return out

    def wrap_pair_ids(self, query: Sequence[int], passage: Sequence[int]) -> TokenSeq:
        """A (query, passage) pair from token ids (no special tokens), laid out as
        :meth:`encode_pairs` lays out a pair that fits: ``wrap_pair_ids(ids(q), ids(p))``
        equals ``encode_pairs([q], [p], ...)[0]``."""
        if self._pair_frame is None:
            raise ModelFormatError("this tokenizer changes a pair's tokens when it adds special ones")
        ids, types, (qa, qb), (pa, pb) = self._pair_frame
        out = [*ids[:qa], *query, *ids[qb:pa], *passage, *ids[pb:]]
        if not self.with_type_ids:
            return TokenSeq(out, None)
        tq, tp = types[qa], types[pa]
        seg = [*types[:qa], *[tq] * len(query), *types[qb:pa], *[tp] * len(passage), *types[pb:]]
        return TokenSeq(out, seg)

    @property
    def can_wrap_pairs(self) -> bool:
        return self._pair_frame is not None

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without special tokens."""
        return [list(enc.ids) for enc in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def tokens(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[dict[str, object]]]:
        """Each text's tokens: ``id``, ``text`` (the token string), ``special``, and the
        character span ``start`` / ``stop`` (``None`` for special tokens)."""
        out = []
        for text in texts:
            enc = self._tok.encode(text, add_special_tokens=False)
            if add_special_tokens:
                enc = self._finish(enc, None)
            row: list[dict[str, object]] = []
            for tid, tok, (start, stop), special in zip(
                enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, strict=True
            ):
                row.append(
                    {
                        "id": tid,
                        "text": tok,
                        "special": bool(special),
                        "start": None if special else start,
                        "stop": None if special else stop,
                    }
                )
            out.append(row)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens kept."""
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans of each text's tokens (no special tokens), for chunking by tokens."""
        return [list(enc.offsets) for enc in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def frame(self) -> tuple[list[int], list[int]] | None:
        """The special tokens a single text gets before and after its own tokens, or
        ``None`` when adding them changes the text's tokens (no windowing then)."""
        return None if self._frame is None else (list(self._frame[0]), list(self._frame[1]))

    @property
    def n_special_pair(self) -> int:
        """Special tokens added to a (query, passage) pair."""
        return int(self._n_special_pair)

    @property
    def n_special(self) -> int:
        """Special tokens added to a single text."""
        return int(self._n_special)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)
