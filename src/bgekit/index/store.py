"""The embedded index: dense (faiss), sparse (inverted), multi-vector (packed) and BM25,
searched in any mode or a hybrid of them, with deletes, incremental adds and safe saves."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bgekit.engine import EngineConfig
from bgekit.errors import InputError
from bgekit.images import Item, check_items, text_of
from bgekit.index import storage
from bgekit.index.chunking import Chunk, best_chunk_per_document, encoding_text, one_chunk_each
from bgekit.index.config import IndexConfig, IndexInfo, inspect_index
from bgekit.index.documents import AddReport, Document, SyncReport, check_documents, content_hash
from bgekit.index.lock import IndexConflictError, WriteLock
from bgekit.index.model_record import check_same_model, embedder_from_record, model_record
from bgekit.index.rows import ChunkSettings, chunk_rows, encoded_chunk_rows
from bgekit.models import Embedder
from bgekit.retrieval.bm25 import Bm25
from bgekit.retrieval.core import HybridConfig, SearchPlan, chunk_depth, search
from bgekit.retrieval.corpus import Corpus, Hnsw, available_scorers
from bgekit.retrieval.dense_store import DenseStore
from bgekit.retrieval.filters import Filter, FilterSpec
from bgekit.scoring import segment_rows
from bgekit.scoring.sparse import to_csr
from bgekit.types import Encoded, Hit, OutputKind, Ranking, Scorer, SearchMode, TokenSeq

# Row masks of the most recent filters kept per index (a repeated filter is not evaluated again).
_FILTER_MASKS = 32


class Index:
    """Documents → chunks → encoded rows; searched exactly (dense flat, sparse inverted,
    MaxSim over candidates) or with HNSW for dense when configured."""

    def __init__(self, embedder: Embedder | None, config: IndexConfig | None = None):
        """``embedder=None`` only for an index loaded without its model (``load_model=False``)."""
        self._embedder = embedder
        self.config = config or IndexConfig()
        if embedder is not None:
            missing = [o for o in self.config.outputs if o not in embedder.info.heads]
            if missing:
                raise InputError(
                    f"{embedder.info.name} cannot give {', '.join(missing)} (it has: {', '.join(embedder.info.heads)})"
                )
            embedder.prompts.pick(self.config.task)  # an unknown task is an error naming the tasks
        # an index loaded without its model keeps its manifest's model entry and vocabulary size
        self._recorded_model: dict[str, Any] | None = None
        self._vocab_size: int | None = None
        self.path: Path | None = None
        self._generation: str | None = None  # what ``path``'s manifest named when loaded / saved
        self._lock: WriteLock | None = None  # held by :meth:`edit`
        self._docs: list[Document] = []
        self._doc_pos: dict[str, int] = {}
        self._hash: dict[str, str] = {}  # content hash per document id (see sync)
        self._chunk_doc = np.zeros(0, dtype=np.int64)
        self._chunk_no = np.zeros(0, dtype=np.int32)
        self._chunk_text: list[str] = []
        self._dense: DenseStore | None = None
        self._sparse: sp.csr_matrix | None = None
        self._mv: np.ndarray | None = None
        self._mv_offsets = np.zeros(1, dtype=np.int64)
        self._cache: dict[str, Any] = {}  # derived search structures, rebuilt after changes
        # saved as an interrupted build until the build that set it finishes (index.build)
        self.building = False

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            raise InputError(
                "this index was opened without its model (as 'bgekit index delete' opens it): load it "
                "with its model to search it or add documents"
            )
        return self._embedder

    # -- contents -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def generation(self) -> str | None:
        """The saved generation this index holds (``None`` until it is saved or loaded)."""
        return self._generation

    def ids(self) -> list[str]:
        """The documents' ids, in the order they were added."""
        return [d.id for d in self._docs]

    @property
    def num_chunks(self) -> int:
        return len(self._chunk_text)

    @property
    def outputs(self) -> tuple[OutputKind, ...]:
        return self.config.outputs

    def add(self, documents: Sequence[Document], *, update: bool = False) -> AddReport:
        """Chunk, encode and add documents (those with no text are skipped and counted, and
        so are those over ``max_document_chars`` when the config says ``oversize="skip"``).
        An id already in the index is an error, or, with ``update``, replaces that document.

        Nothing changes when encoding fails."""
        existing = frozenset() if update else frozenset(self._doc_pos)
        rows = chunk_rows(documents, self.embedder, ChunkSettings.of(self.config), self.outputs, existing)
        replaced = sum(1 for d in rows.docs if d.id in self._doc_pos)
        if rows.docs:
            self._insert(rows.docs, rows.chunks, rows.enc)
        return AddReport(len(rows.docs), len(rows.chunks), rows.skipped, rows.oversized, replaced)

    def sync(self, documents: Sequence[Document]) -> SyncReport:
        """Make the index hold exactly ``documents`` (a source read again): new ids are
        added, documents whose text, title or image changed are encoded again and replace
        the old ones, unchanged ones are not encoded (their metadata is refreshed), and
        indexed documents missing from ``documents`` are removed — so are those that now
        hold no text or are over the size limit. Documents indexed without their text (from
        encoded shards) count as changed once.

        Nothing changes when encoding fails."""
        docs = check_documents(documents)
        wanted = {d.id for d in docs}
        unchanged = {d.id for d in docs if self._hash.get(d.id) == content_hash(d)}  # indexed as they are
        fresh = [d for d in docs if d.id not in unchanged]
        same = [d for d in docs if d.id in unchanged]
        rows = chunk_rows(fresh, self.embedder, ChunkSettings.of(self.config), self.outputs)
        encoded = {d.id for d in rows.docs}
        updated = sum(1 for d in rows.docs if d.id in self._doc_pos)
        # gone from the source, or changed into something not indexed (empty, oversized)
        not_indexed = {d.id for d in fresh} - encoded
        stale = [i for i in self.ids() if i not in wanted or i in not_indexed]
        if rows.docs:
            self._insert(rows.docs, rows.chunks, rows.enc)
        removed = [i for i in stale if i in self._doc_pos]
        if removed:
            self.delete(removed)
        for d in same:  # metadata may change without the content (a file touched)
            pos = self._doc_pos[d.id]
            if self._docs[pos].metadata != d.metadata:
                self._docs[pos] = replace(self._docs[pos], metadata=d.metadata)
                self._cache.pop("filters", None)  # masks read the old metadata
        return SyncReport(
            added=len(rows.docs) - updated,
            updated=updated,
            unchanged=len(same),
            removed=len(removed),
            chunks=len(rows.chunks),
            skipped=rows.skipped,
            oversized=rows.oversized,
        )

    def add_encoded(
        self,
        documents: Sequence[Document],
        enc: Encoded,
        *,
        update: bool = False,
        chunks: Sequence[Chunk] | None = None,
    ) -> AddReport:
        """Add documents encoded elsewhere, e.g. shards of
        :func:`bgekit.distributed.encode_on_ray`, with no re-encoding. Without ``chunks``:
        one row of ``enc`` per document, each document one chunk (those with no text are
        skipped, as :meth:`add` does). With ``chunks``: one row per chunk, as
        :func:`~bgekit.index.rows.chunk_rows` makes them with this index's chunk settings
        (shards encoded as index rows; checked by :func:`~bgekit.index.rows.encoded_chunk_rows`).
        ``enc`` must hold this index's outputs, made by its model (the caller checks the
        fingerprint and the chunk settings)."""
        existing = frozenset() if update else frozenset(self._doc_pos)
        if chunks is None:
            docs, rows, enc, skipped = one_chunk_each(documents, enc, self.outputs, existing)
        else:
            docs, rows, enc = encoded_chunk_rows(documents, chunks, enc, self.outputs, existing)
            skipped = 0
        if docs:
            self._insert(docs, rows, enc)
        return AddReport(len(docs), len(rows), skipped)

    def _insert(self, docs: list[Document], chunks: list[Chunk], enc: Encoded) -> None:
        """New documents (replacing those with their ids) and their chunks' rows; ``chunks``
        number documents from 0 within ``docs``. Called once encoding has succeeded."""
        replaced = [d.id for d in docs if d.id in self._doc_pos]
        if replaced:
            self.delete(replaced)
        base = len(self._docs)
        self._docs.extend(docs)
        for i, d in enumerate(docs):
            self._doc_pos[d.id] = base + i
            if d.text or d.image:  # shards' documents come without their text: no hash
                self._hash[d.id] = content_hash(d)
        self._append([Chunk(c.doc + base, c.no, c.text, c.tokens) for c in chunks], enc)

    def _append(self, chunks: list[Chunk], enc: Encoded) -> None:
        self._chunk_doc = np.concatenate([self._chunk_doc, [c.doc for c in chunks]]).astype(np.int64)
        self._chunk_no = np.concatenate([self._chunk_no, [c.no for c in chunks]]).astype(np.int32)
        self._chunk_text.extend(c.text for c in chunks)
        if enc.dense is not None:
            cfg = self.config
            if self._dense is None:  # int8 and binary calibrate on the first rows added
                self._dense = DenseStore.build(enc.dense, cfg.dense_dtype, rescore=cfg.rescore)
            else:
                self._dense = self._dense.append(enc.dense)
        if enc.sparse is not None:
            block = to_csr(enc.sparse, self.embedder.tokenizer.vocab_size)
            self._sparse = block if self._sparse is None else sp.vstack([self._sparse, block], format="csr")
        if enc.multivector is not None:
            dtype = np.dtype(self.config.multivector_dtype)
            new = np.concatenate(enc.multivector).astype(dtype)
            counts = np.array([m.shape[0] for m in enc.multivector], dtype=np.int64)
            self._mv = new if self._mv is None else np.concatenate([self._mv, new])
            self._mv_offsets = np.concatenate([self._mv_offsets, self._mv_offsets[-1] + np.cumsum(counts)])
        self._cache.clear()

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents (all their chunks); unknown ids are an error. Returns chunks removed."""
        unknown = [i for i in ids if i not in self._doc_pos]
        if unknown:
            raise InputError(f"not in the index: {', '.join(map(repr, unknown[:5]))}")
        gone = np.array(sorted({self._doc_pos[i] for i in ids}), dtype=np.int64)
        keep_doc = np.ones(len(self._docs), dtype=bool)
        keep_doc[gone] = False
        new_pos = np.cumsum(keep_doc) - 1
        keep = keep_doc[self._chunk_doc]
        rows = np.nonzero(keep)[0]
        removed = int((~keep).sum())
        self._docs = [d for d, k in zip(self._docs, keep_doc, strict=True) if k]
        self._doc_pos = {d.id: i for i, d in enumerate(self._docs)}
        for i in ids:
            self._hash.pop(i, None)
        self._chunk_doc = new_pos[self._chunk_doc[rows]]
        self._chunk_no = self._chunk_no[rows]
        self._chunk_text = [self._chunk_text[i] for i in rows]
        if self._dense is not None:
            self._dense = self._dense.take(rows)
        if self._sparse is not None:
            self._sparse = self._sparse[rows]
        if self._mv is not None:
            starts = self._mv_offsets[rows]
            lengths = self._mv_offsets[rows + 1] - starts
            self._mv = self._mv[segment_rows(starts, lengths)]
            self._mv_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._cache.clear()
        return removed

    # -- search ---------------------------------------------------------------------------

    def corpus(self) -> Corpus:
        """The chunks as the search core reads them (BM25 over ``title + " " + chunk``)."""
        if "corpus" not in self._cache:
            hnsw = None
            if self.config.dense_index == "hnsw":
                hnsw = Hnsw(m=self.config.hnsw_m, ef_search=self.config.hnsw_ef_search)
            self._cache["corpus"] = Corpus(
                dense=self._dense,
                sparse=self._sparse,
                multivector=self._mv,
                multivector_offsets=self._mv_offsets if self._mv is not None else None,
                texts=self.chunk_texts,
                bm25=self._cache.get("bm25"),
                hnsw=hnsw,
                n_rows=self.num_chunks,
            )
        corpus: Corpus = self._cache["corpus"]
        return corpus

    def chunk_texts(self) -> list[str]:
        """What each chunk was encoded from: its document's title, then the chunk."""
        return [
            encoding_text(self._docs[int(d)], t)
            for d, t in zip(self._chunk_doc, self._chunk_text, strict=True)
        ]

    @property
    def scorers(self) -> tuple[Scorer, ...]:
        """The indexed outputs, plus BM25 over the chunk texts."""
        return available_scorers(self.outputs, texts=True)

    def search(
        self,
        queries: Sequence[Item],
        k: int = 10,
        *,
        mode: SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
        tokens: Sequence[TokenSeq] | None = None,
        where: FilterSpec = None,
    ) -> list[list[Hit]]:
        """The ``k`` best documents per query (each shown with its best chunk), searched by
        :func:`bgekit.retrieval.search` (a hybrid is dense + lexical — the sparse head, or
        BM25 for models without one — + multi-vector when indexed); ``where``: only
        documents whose metadata passes this filter (:class:`~bgekit.retrieval.Filter`,
        ``"year>=2020"``, a list of such, or ``{"year": {"$gte": 2020}}``)."""
        where = Filter.parse(where)  # checked before the queries are encoded
        items = self._queries(queries)
        plan = self.plan(mode, hybrid)
        q = self.encode_queries(items, plan, tokens=tokens)
        return self.search_encoded(q, [text_of(x) for x in items], k, plan=plan, where=where)

    def allowed_rows(self, where: FilterSpec) -> np.ndarray | None:
        """One flag per chunk: whether its document passes ``where`` (``None``: no filter)."""
        f = Filter.parse(where)
        if not f:
            return None
        masks: dict[Filter, np.ndarray] = self._cache.setdefault("filters", {})  # cleared on changes
        if f not in masks:
            passed = np.fromiter(
                (f.matches(d.metadata, d.id, d.title) for d in self._docs), bool, len(self._docs)
            )
            if len(masks) >= _FILTER_MASKS:
                masks.pop(next(iter(masks)))
            masks[f] = passed[self._chunk_doc] if len(self._chunk_doc) else np.zeros(0, dtype=bool)
        return masks[f]

    def _queries(self, queries: Sequence[Item]) -> list[Item]:
        """Queries checked: texts, and for an image model also images and image + text."""
        if "image" in self.embedder.info.modalities:
            return check_items(queries, "queries")
        return list(self.embedder.processor.texts_only(queries, "queries"))

    def plan(self, mode: SearchMode = "hybrid", hybrid: HybridConfig | None = None) -> SearchPlan:
        """The plan of a search in ``mode`` over this index (made once per search)."""
        return SearchPlan.make(mode, self.scorers, hybrid)

    def tokenize_queries(self, queries: Sequence[Item]) -> list[TokenSeq]:
        """Queries as this index's searches tokenise them (its task's query instruction)."""
        return self.embedder.tokenize(self._queries(queries), kind="query", task=self.config.task)

    def encode_queries(
        self,
        queries: Sequence[Item],
        plan: SearchPlan | SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
        *,
        tokens: Sequence[TokenSeq] | None = None,
    ) -> Encoded:
        """The query encodings a search needs (none for BM25); ``tokens``: the queries
        already tokenised by :meth:`tokenize_queries` (not tokenised again)."""
        texts = self._queries(queries)
        wanted = (plan if isinstance(plan, SearchPlan) else self.plan(plan, hybrid)).outputs
        if not wanted or not texts:
            return Encoded()
        seqs = self.tokenize_queries(texts) if tokens is None else tokens
        return self.embedder.encode_tokens(seqs, outputs=wanted)

    def search_encoded(
        self,
        q: Encoded,
        texts: Sequence[str],
        k: int = 10,
        *,
        mode: SearchMode = "hybrid",
        hybrid: HybridConfig | None = None,
        plan: SearchPlan | None = None,
        where: FilterSpec = None,
    ) -> list[list[Hit]]:
        """:meth:`search` for queries already encoded with :meth:`encode_queries` (under
        ``plan``, or one made from ``mode`` and ``hybrid``)."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        plan = plan or self.plan(mode, hybrid)
        rows = chunk_depth(k, self.num_chunks)
        allowed = self.allowed_rows(where)
        rankings = search(self.corpus(), q, rows, texts=list(texts), plan=plan, allowed=allowed)
        return [self._collapse(r, k) for r in rankings]

    def _collapse(self, ranking: Ranking, k: int) -> list[Hit]:
        """Chunk hits → document hits: each document keeps its best chunk."""

        def chunk_hits() -> Iterator[Hit]:
            for j, row in enumerate(ranking.indices.tolist()):
                d = self._docs[int(self._chunk_doc[row])]
                yield Hit(
                    id=d.id,
                    score=float(ranking.scores[j]),
                    text=self._chunk_text[row],
                    title=d.title,
                    chunk=int(self._chunk_no[row]),
                    metadata=d.metadata,
                    scores={m: float(s[j]) for m, s in ranking.modes.items()},
                    image=d.image,
                )

        return best_chunk_per_document(chunk_hits(), k)

    # -- persistence ----------------------------------------------------------------------

    def save(
        self, path: str | Path | None = None, *, wait: float | None = None, exist_ok: bool = True
    ) -> Path:
        """Write the index to ``path`` (default: where it was loaded from), atomically, holding
        the folder's writer lock (waiting ``wait`` seconds for another writer; ``None``: as
        long as it takes). Saving back to the folder it was loaded from is refused
        (:class:`~bgekit.index.lock.IndexConflictError`) when another process has saved
        there since: that would undo its change (:meth:`edit` holds the lock across
        load, change and save instead). ``exist_ok=False`` refuses a folder that already
        holds an index (checked under the lock)."""
        root = Path(path) if path is not None else self.path
        if root is None:
            raise InputError("give a folder to save the index in")
        same = self.path is not None and root.resolve() == self.path.resolve()
        held = self._lock if self._lock is not None and self._lock.root.resolve() == root.resolve() else None
        arrays, records, manifest = self._contents()
        with held or WriteLock(root, wait):
            current = storage.current_generation(root)
            if current is not None and not exist_ok:
                raise InputError(f"{root} already holds an index; add to it, or overwrite it")
            if same and current is not None and current != self._generation:
                raise IndexConflictError(
                    f"{root} was saved by another process after this index was loaded "
                    f"({self._generation} -> {current}); saving would undo that change: load it "
                    "again and repeat your changes (Index.edit holds the lock across both)"
                )
            self._generation = storage.write_generation(root, arrays, records, manifest)
        self.path = root
        return root

    def _contents(self) -> tuple[dict[str, np.ndarray], dict[str, list[Any]], dict[str, Any]]:
        """What a save writes: arrays, records and the manifest's body."""
        arrays: dict[str, np.ndarray] = {"chunk_doc": self._chunk_doc, "chunk_no": self._chunk_no}
        if self._dense is not None:
            arrays |= self._dense.arrays()
        if self._sparse is not None:
            arrays |= {
                "sparse_indptr": self._sparse.indptr.astype(np.int64),
                "sparse_indices": self._sparse.indices.astype(np.int64),
                "sparse_values": self._sparse.data.astype(np.float32),
            }
        if self._mv is not None:
            arrays |= {"multivector": np.asarray(self._mv), "multivector_offsets": self._mv_offsets}
        records: dict[str, list[Any]] = {
            "documents": [_doc_record(d, self._hash.get(d.id)) for d in self._docs],
            "chunks": self._chunk_text,
        }
        manifest = {
            "model": self._recorded_model if self._embedder is None else model_record(self.embedder),
            "outputs": list(self.outputs),
            "dims": self._dims(),
            "counts": {"documents": len(self._docs), "chunks": self.num_chunks},
            "config": asdict(self.config),
            "vocab_size": self._vocab_size if self._embedder is None else self.embedder.tokenizer.vocab_size,
        }
        if self.building:
            manifest["building"] = True
        if self.num_chunks:  # BM25 saved with the rows, so a search after loading needs no rebuild
            bm25 = self.corpus().bm25()
            arrays |= bm25.arrays()
            records["bm25_vocab"] = bm25.vocab
            manifest["bm25"] = {"k1": bm25.k1, "b": bm25.b, "stemmed": bm25.stemmed, "terms": len(bm25.vocab)}
        return arrays, records, manifest

    @classmethod
    @contextmanager
    def edit(
        cls,
        path: str | Path,
        embedder: Embedder | None = None,
        *,
        wait: float | None = None,
        engine: EngineConfig | None = None,
        model: str | None = None,
        load_model: bool = True,
    ) -> Iterator[Index]:
        """Change a saved index with no other writer in between: the folder's writer lock is
        taken (waiting ``wait`` seconds; ``None``: as long as it takes, saying once whom it
        waits for), the index loaded, the block run, and the index saved when the block
        succeeds — all under the lock, so concurrent edits (another process's
        ``bgekit index add``) all land. Nothing is saved when the block raises. ``model``
        and ``load_model``: as for :meth:`load`.

        >>> with Index.edit("my-index") as index:  # doctest: +SKIP
        ...     index.add(docs)
        """
        root = Path(path)
        storage.read_manifest(root)  # a clear error for a folder with no index, before the lock
        lock = WriteLock(root, wait)
        with lock:
            index = cls.load(root, embedder, mmap=False, engine=engine, model=model, load_model=load_model)
            index._lock = lock
            try:
                yield index
                index.save()
            finally:
                index._lock = None

    def _dims(self) -> dict[str, int]:
        dims = {}
        if self._dense is not None:
            dims["dense"] = self._dense.dim
        if self._mv is not None:
            dims["multivector"] = int(self._mv.shape[1])
        return dims

    @classmethod
    def load(
        cls,
        path: str | Path,
        embedder: Embedder | None = None,
        *,
        mmap: bool = True,
        engine: EngineConfig | None = None,
        model: str | None = None,
        load_model: bool = True,
    ) -> Index:
        """Open a saved index. Without ``embedder`` the recorded model is loaded (on
        ``engine``) under its recorded settings: the packaged model or a hub id wherever they
        are installed or cached on this machine, a folder where it was — or from ``model``
        (a hub id or folder) when it has moved; with ``embedder`` or ``model``, it must be the
        model the index was built with (checked). Every file is checked (headers and sizes)
        before the model loads; a damaged one is named. ``load_model=False`` opens it without
        a model, for deleting documents and saving (searching or adding is then an error)."""
        root = Path(path)
        manifest = storage.checked_manifest(root)
        loaded = embedder
        if loaded is None and load_model:
            loaded = embedder_from_record(root, manifest["model"], engine, model)
        return storage.read_consistent(root, lambda m: cls._from_generation(root, m, loaded, mmap))

    @classmethod
    def _from_generation(
        cls, root: Path, manifest: dict[str, Any], embedder: Embedder | None, mmap: bool
    ) -> Index:
        """The index of the generation ``manifest`` names, read with ``embedder`` (``None``:
        without a model)."""
        if embedder is not None:
            check_same_model(root, manifest["model"], embedder)
        try:
            cfg = dict(manifest["config"])
            cfg["outputs"] = tuple(cfg["outputs"])
            cfg.setdefault("split", "tokens")  # saved before chunks could follow the text
            config = IndexConfig(**cfg)
        except (KeyError, TypeError, InputError) as e:
            raise storage.IndexFormatError(f"{root / storage.MANIFEST}: bad index config ({e})") from None
        index = cls(embedder, config)
        if embedder is None:
            index._recorded_model = dict(manifest["model"])
            index._vocab_size = int(manifest["vocab_size"])
        arrays, records = storage.read_generation(root, manifest, mmap)
        try:
            index._docs = [
                Document(r["id"], "", r["title"], r["metadata"], r.get("image")) for r in records["documents"]
            ]
            index._chunk_text = [str(t) for t in records["chunks"]]
            if "sparse_indptr" in arrays:
                index._sparse = sp.csr_matrix(
                    (arrays["sparse_values"], arrays["sparse_indices"], arrays["sparse_indptr"]),
                    shape=(len(index._chunk_text), int(manifest["vocab_size"])),
                )
        except (KeyError, TypeError, ValueError) as e:
            raise storage.IndexFormatError(f"{root}: the records or arrays are inconsistent ({e})") from None
        index._doc_pos = {d.id: i for i, d in enumerate(index._docs)}
        index._hash = {r["id"]: r["hash"] for r in records["documents"] if r.get("hash")}
        index._chunk_doc = np.asarray(arrays["chunk_doc"])
        index._chunk_no = np.asarray(arrays["chunk_no"])
        if "dense" in arrays:
            try:
                index._dense = DenseStore.from_arrays(
                    arrays, config.dense_dtype, int(manifest["dims"]["dense"]), config.rescore
                )
            except (KeyError, ValueError) as e:
                raise storage.IndexFormatError(f"{root}: the dense arrays are inconsistent ({e})") from None
        if "multivector" in arrays:
            index._mv = arrays["multivector"]
            index._mv_offsets = np.asarray(arrays["multivector_offsets"])
        if "bm25" in manifest:  # older indexes build it on first use
            b = manifest["bm25"]
            index._cache["bm25"] = Bm25.from_arrays(
                arrays,
                records["bm25_vocab"],
                n_docs=index.num_chunks,
                stemmed=bool(b["stemmed"]),
                k1=float(b["k1"]),
                b=float(b["b"]),
            )
        index.path = root
        index._generation = str(manifest["generation"])
        index.building = bool(manifest.get("building", False))
        return index

    @staticmethod
    def inspect(path: str | Path) -> IndexInfo:
        """What a saved index holds, from its manifest, after checking every file (headers
        and sizes); no model is loaded."""
        return inspect_index(path)

    def info(self) -> IndexInfo:
        """What this index holds (on disk: the generation it was loaded from or saved as)."""
        disk: dict[str, int] = {}
        if self.path is not None and self._generation is not None:
            disk = storage.disk_size(self.path, self._generation)
        return IndexInfo(
            path=None if self.path is None else str(self.path),
            model=self.embedder.info.name
            if self._embedder is not None
            else str((self._recorded_model or {}).get("name")),
            outputs=self.outputs,
            documents=len(self._docs),
            chunks=self.num_chunks,
            dims=self._dims(),
            config=asdict(self.config),
            disk_bytes=disk,
            generation=self._generation,
            building=self.building,
        )


def _doc_record(d: Document, digest: str | None) -> dict[str, Any]:
    """What a save keeps of a document (its text lives in its chunks; an image by path;
    the hash of its content, for :meth:`Index.sync`)."""
    record: dict[str, Any] = {"id": d.id, "title": d.title, "metadata": d.metadata}
    if digest is not None:
        record["hash"] = digest
    if d.image is not None:
        record["image"] = d.image
    return record
