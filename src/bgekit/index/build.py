"""Building an index that survives being stopped: documents are added in batches and the
index is saved (atomically, as a generation marked "building") every ``checkpoint_seconds``;
a build run again on the same folder — after Ctrl-C, a kill or a power loss — loads what
was saved and encodes only the documents not yet in it (by id and content hash)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bgekit.errors import InputError
from bgekit.index import storage
from bgekit.index.config import IndexConfig
from bgekit.index.documents import Document, check_documents, content_hash
from bgekit.index.store import Index
from bgekit.models import Embedder

logger = logging.getLogger(__name__)

# Documents added per batch between checkpoints (small enough that a checkpoint comes soon
# after its time is due; large enough that the encoder's batches stay full).
BATCH_DOCS = 256
DEFAULT_CHECKPOINT_SECONDS = 60.0
# A log line on the whole build's progress this often.
PROGRESS_SECONDS = 15.0


@dataclass(frozen=True)
class BuildReport:
    """What a build did: documents and chunks added by this run, documents skipped (no text,
    over the size limit), documents already there from an interrupted run (``resumed``), and
    how many checkpoints it saved."""

    documents: int
    chunks: int
    skipped: int
    oversized: int
    resumed: int
    checkpoints: int


def build_index(
    root: str | Path,
    documents: Sequence[Document],
    embedder: Embedder,
    config: IndexConfig,
    *,
    overwrite: bool = False,
    wait: float | None = None,
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
) -> tuple[Index, BuildReport]:
    """Build an index of ``documents`` in ``root``, resumable (see the module docstring). A
    folder holding a finished index is refused unless ``overwrite``; one holding an
    interrupted build is resumed when its model and config are these (else refused, naming
    the difference; ``overwrite`` starts over)."""
    folder = Path(root)
    docs = check_documents(documents)
    check_buildable(folder, overwrite)
    index = _resume(folder, embedder, config) if not overwrite else None
    resumed = 0
    if index is None:
        index = Index(embedder, config)
    else:
        wanted = {d.id for d in docs}
        gone = [i for i in index.ids() if i not in wanted]  # the source changed since
        if gone:
            index.delete(gone)
        kept = {d.id for d in docs if index._hash.get(d.id) == content_hash(d)}
        resumed = len(kept)
        docs = [d for d in docs if d.id not in kept]
        logger.info(
            "resuming an interrupted build: %d of %d documents already encoded", resumed, resumed + len(docs)
        )
    index.building = True
    added = chunks = skipped = oversized = checkpoints = 0
    began = last = said = time.monotonic()
    for start in range(0, len(docs), BATCH_DOCS):
        report = index.add(docs[start : start + BATCH_DOCS], update=True)
        added, chunks = added + report.documents, chunks + report.chunks
        skipped, oversized = skipped + report.skipped, oversized + report.oversized
        more = start + BATCH_DOCS < len(docs)
        if more and time.monotonic() - last >= checkpoint_seconds:
            _save(index, folder, wait, overwrite)
            checkpoints += 1
            last = time.monotonic()
        if more and time.monotonic() - said >= PROGRESS_SECONDS:  # the batches' own bars are short
            done = start + BATCH_DOCS
            rate = done / (time.monotonic() - began)
            logger.info(
                "indexed %d of %d documents (%.0f/s, about %.0fs left; saved every %.0fs)",
                done, len(docs), rate, (len(docs) - done) / rate, checkpoint_seconds,
            )  # fmt: skip
            said = time.monotonic()
    index.building = False
    _save(index, folder, wait, overwrite)
    return index, BuildReport(added, chunks, skipped, oversized, resumed, checkpoints)


def check_buildable(folder: Path, overwrite: bool) -> None:
    """A build may write ``folder``: it holds no index, an interrupted build, or ``overwrite``."""
    if overwrite or not (folder / storage.MANIFEST).exists():
        return
    if not storage.read_manifest(folder).get("building"):
        raise InputError(f"{folder} already holds an index; use 'bgekit index add' or --overwrite")


def _save(index: Index, folder: Path, wait: float | None, overwrite: bool) -> None:
    """A checkpoint or the final save, under the folder's writer lock. A fresh build's first
    save refuses a folder another process has built an index in meanwhile (unless
    ``overwrite``); later saves refuse one saved there since (``Index.save``'s check), so a
    concurrent writer's change is never undone."""
    index.save(folder, wait=wait, exist_ok=overwrite or index.path is not None)


def _resume(folder: Path, embedder: Embedder, config: IndexConfig) -> Index | None:
    """The interrupted build in ``folder``, when there is one (``None`` otherwise); an
    interrupted build with another model or config is an error."""
    if not (folder / storage.MANIFEST).exists():
        return None
    manifest = storage.read_manifest(folder)
    if not manifest.get("building"):
        return None
    index = Index.load(folder, embedder, mmap=False)  # refuses another model, naming it
    theirs, mine = asdict(index.config), asdict(config)
    differ = [k for k in mine if theirs.get(k) != mine[k]]
    if differ:
        k = differ[0]
        raise InputError(
            f"{folder} holds an interrupted build with {k}={theirs.get(k)!r}, not {mine[k]!r}: run it "
            "again with its settings to finish it, or --overwrite to start over"
        )
    return index
