"""The ingestion pipeline: source -> chunks -> embeddings -> one transaction per batch.

Documents are streamed in batches of ``batch_size`` (memory stays flat however large the
input).  For each batch:

1. the stored fingerprint of every document is looked up; an unchanged document is skipped
   (re-running a finished ingestion embeds and writes nothing);
2. new and changed documents are chunked; a chunk whose embedded text is already stored
   (same sha256) keeps its stored vector, and only the rest is embedded;
3. the batch is written by :meth:`ChunkStore.write` in ONE transaction, replacing a changed
   document's old chunks atomically.

The write stage runs in its own thread (:mod:`.writer`), so embedding batch N+1 overlaps
writing batch N.  Because every batch commits whole or not at all and committed documents are
skipped on the next run, a run killed at any point (``kill -9`` included) and run again ends
in exactly the state of an uninterrupted run.

What is embedded and hashed for a chunk, and a document's fingerprint, are in
:mod:`.hashing`; reading sources and the ``on_error`` policy are in :mod:`.run`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from langchain_core.embeddings import Embeddings

from fengchao_chains.db import Database
from fengchao_chains.ingest.chunking import Chunker
from fengchao_chains.ingest.errors import IngestError
from fengchao_chains.ingest.hashing import document_fingerprint, embedding_text, text_hash
from fengchao_chains.ingest.lock import knowledge_base_lock
from fengchao_chains.ingest.report import (
    IngestReport,
    ProblemCallback,
    Progress,
    ProgressCallback,
)
from fengchao_chains.ingest.sources import SourceItem, SourceProblem
from fengchao_chains.ingest.writer import BatchWriter, WriteBatch
from fengchao_chains.retrievers.errors import EmbeddingMismatchError
from fengchao_chains.retrievers.registry import KnowledgeBase
from fengchao_chains.retrievers.store import ChunkRecord, ChunkStore, DocumentRecord
from fengchao_chains.retrievers.text_search import segment

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
EMBED_GROUP = 32
"""Texts per ``embed_documents`` call by default: a stop request waits for one call at most."""


class Pipeline:
    """One ingestion run into one knowledge base (see the module docstring)."""

    def __init__(
        self,
        database: Database | None,
        knowledge_base: KnowledgeBase,
        embeddings: Embeddings | None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        dry_run: bool = False,
        on_problem: ProblemCallback | None = None,
        on_progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
        embed_group: int = EMBED_GROUP,
    ) -> None:
        if batch_size < 1 or embed_group < 1:
            raise IngestError(f"batch sizes must be at least 1, not {batch_size}/{embed_group}")
        self.kb = knowledge_base
        self.store = ChunkStore(database, knowledge_base) if database is not None else None
        self.embeddings = embeddings
        if embeddings is not None and not dry_run:
            _check_model(knowledge_base, embeddings)
        self.batch_size = batch_size
        self.embed_group = embed_group
        self.chunker = Chunker(
            knowledge_base.chunk_size if chunk_size is None else chunk_size,
            knowledge_base.chunk_overlap if chunk_overlap is None else chunk_overlap,
        )
        self.dry_run = dry_run
        self.on_problem = on_problem
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        self.report = IngestReport(knowledge_base.id, dry_run=dry_run)

    # ------------------------------------------------------------------ the run ----------
    def run(self, entries: Iterable[SourceItem | SourceProblem], total: int | None) -> IngestReport:
        if self.store is None or self.dry_run:
            return self._run(entries, total)
        with knowledge_base_lock(self.store.database, self.kb, shared=True):
            self.store.begin_bulk_load()
            try:
                return self._run(entries, total)
            finally:  # a killed run leaves the index missing: the next run builds it
                started = time.perf_counter()
                self.store.finish_bulk_load()
                self.store.refresh_statistics(self.report.chunks_written)
                self.report.stage_seconds["write"] += time.perf_counter() - started

    def _run(
        self, entries: Iterable[SourceItem | SourceProblem], total: int | None
    ) -> IngestReport:
        started = time.perf_counter()
        writer = None if self.dry_run else self._writer(total)
        handled = 0
        try:
            for batch in self._batches(entries):
                if self.stop.is_set():
                    self.report.stopped = True
                    break
                records = self._prepare(batch)
                if records is None:  # stopped while embedding
                    self.report.stopped = True
                    break
                if writer is not None:
                    writer.put(WriteBatch(records, len(batch)))
                else:
                    handled += len(batch)
                    self.report.chunks_written += sum(len(r.chunks) for r in records)
                    if self.on_progress is not None:
                        self.on_progress(Progress(handled, total, self.report.chunks_written))
            if writer is not None:
                writer.finish()
        except BaseException:
            if writer is not None:
                writer.stop_now()
            raise
        finally:
            self.report.seconds = time.perf_counter() - started
        return self.report

    def _writer(self, total: int | None) -> BatchWriter:
        if self.store is None:
            raise IngestError("an ingestion that writes needs a database")
        return BatchWriter(self.store, self.report, total, self.on_progress, self.stop)

    def _batches(self, entries: Iterable[SourceItem | SourceProblem]) -> Iterator[list[SourceItem]]:
        """Items in lists of ``batch_size``; problems reported on the way."""
        batch: list[SourceItem] = []
        iterator = iter(entries)
        while True:
            started = time.perf_counter()
            entry = next(iterator, None)
            self.report.stage_seconds["load"] += time.perf_counter() - started
            if entry is None:
                break
            if isinstance(entry, SourceProblem):
                self.report.problems += 1
                if self.on_problem is not None:
                    self.on_problem(entry)
                continue
            self.report.documents_read += 1
            batch.append(entry)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _prepare(self, batch: list[SourceItem]) -> list[DocumentRecord] | None:
        """The records to write for one batch (changed and new documents only); None when a
        stop request came while embedding."""
        latest: dict[str, SourceItem] = {}
        for item in batch:
            latest.pop(item.document_id, None)  # keep input order of the last occurrence
            latest[item.document_id] = item
        self.report.duplicates += len(batch) - len(latest)
        fingerprints = {
            doc_id: document_fingerprint(item, self.chunker) for doc_id, item in latest.items()
        }
        stored = self._timed("load", self._stored_hashes, list(latest))
        todo: list[SourceItem] = []
        for doc_id, item in latest.items():
            if doc_id not in stored:
                self.report.new += 1
                todo.append(item)
            elif stored[doc_id] != fingerprints[doc_id]:
                self.report.changed += 1
                todo.append(item)
            else:
                self.report.unchanged += 1
        started = time.perf_counter()
        chunked = [(item, self.chunker.split(item)) for item in todo]
        texts: dict[str, str] = {}  # chunk hash -> embedded text, unique within the batch
        for item, chunks in chunked:
            title = item.metadata.get("title")
            for chunk in chunks:
                text = embedding_text(title, chunk.content)
                texts.setdefault(text_hash(text), text)
        self.report.stage_seconds["chunk"] += time.perf_counter() - started
        if self.dry_run:
            vectors: dict[str, Sequence[float]] = dict.fromkeys(texts, ())
        else:
            found = self._embed(texts)
            if found is None:
                return None
            vectors = found
        started = time.perf_counter()
        records = [
            DocumentRecord(
                document_id=item.document_id,
                content_hash=fingerprints[item.document_id],
                metadata=item.metadata,
                chunks=[
                    ChunkRecord(
                        position=chunk.position,
                        content=chunk.content,
                        metadata=chunk.metadata,
                        content_hash=(
                            digest := text_hash(
                                embedding_text(item.metadata.get("title"), chunk.content)
                            )
                        ),
                        embedding=vectors[digest],
                        search_text=segment(str(item.metadata.get("title") or ""), chunk.content),
                    )
                    for chunk in chunks
                ],
            )
            for item, chunks in chunked
        ]  # segmented here, while the writer thread copies the previous batch
        self.report.stage_seconds["chunk"] += time.perf_counter() - started
        return records

    def _stored_hashes(self, document_ids: list[str]) -> dict[str, str]:
        return self.store.document_hashes(document_ids) if self.store is not None else {}

    def _embed(self, texts: dict[str, str]) -> dict[str, Sequence[float]] | None:
        """A vector for every chunk hash: stored ones reused, the rest embedded."""
        if self.store is None or self.embeddings is None:
            raise IngestError("an ingestion that writes needs a database and embeddings")
        vectors: dict[str, Sequence[float]] = {}
        if texts:
            vectors.update(self._timed("load", self.store.stored_embeddings, list(texts)))
        self.report.embeddings_reused += len(vectors)
        missing = [(digest, text) for digest, text in texts.items() if digest not in vectors]
        for start in range(0, len(missing), self.embed_group):
            if self.stop.is_set():
                return None
            group = missing[start : start + self.embed_group]
            embedded = self._timed(
                "embed", self.embeddings.embed_documents, [text for _, text in group]
            )
            vectors.update(zip((digest for digest, _ in group), embedded, strict=True))
            self.report.chunks_embedded += len(group)
        return vectors

    def _timed(self, stage: str, function: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.report.stage_seconds[stage] += time.perf_counter() - started


def _check_model(kb: KnowledgeBase, embeddings: Embeddings) -> None:
    model = getattr(embeddings, "model", None)
    dims = getattr(embeddings, "dimensions", None)
    if (isinstance(model, str) and model != kb.embedding_model) or (
        isinstance(dims, int) and dims != kb.dims
    ):
        raise EmbeddingMismatchError(
            f"knowledge base {kb.id!r} is embedded with {kb.embedding_model!r} ({kb.dims}"
            f" dimensions), not {model!r}; ingest with its own model or re-embed it with"
            f" `fengchao kb reembed {kb.id} --model {model}`"
        )
