"""Tokenisation straight on the Rust ``tokenizers`` backend: once per input, no padding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from bgekit.errors import ModelFormatError
from bgekit.types import TokenSeq


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

    @classmethod
    def from_folder(cls, path: Path, *, with_type_ids: bool) -> TextTokenizer:
        """Load with transformers (which converts slow-tokenizer files), then keep the fast backend."""
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"cannot load a tokenizer from {path}: {e}") from None
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ModelFormatError(f"{path}: bgekit needs a fast (Rust) tokenizer; none could be built")
        pad_id = hf.pad_token_id
        if pad_id is None:
            pad_id = hf.eos_token_id if hf.eos_token_id is not None else 0
        special = {
            hf.cls_token_id,
            hf.sep_token_id,
            hf.eos_token_id,
            hf.pad_token_id,
            hf.unk_token_id,
        }
        return cls(
            backend,
            pad_id=int(pad_id),
            special_ids=frozenset(int(i) for i in special if i is not None),
            with_type_ids=with_type_ids,
            bos_id=None if hf.bos_token_id is None else int(hf.bos_token_id),
        )

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

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without special tokens."""
        return [list(enc.ids) for enc in self._tok.encode_batch(list(texts), add_special_tokens=False)]

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
    def n_special(self) -> int:
        """Special tokens added to a single text."""
        return int(self._n_special)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)
