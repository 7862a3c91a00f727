"""The ingestion pipeline: source -> chunks -> embeddings -> one transaction per batch.

Documents are streamed in batches of ``batch_size`` (memory stays flat however large the
input).  For each batch:

1. the stored fingerprint of every document is looked up; an unchanged document is skipped
   (re-running a finished ingestion embeds and writes nothing);
2. new and changed documents are chunked; a chunk whose embedded text is already stored
   (same sha256) keeps its stored vector, and only the rest is embedded;
3. the batch is written by :meth:`ChunkStore.write` in ONE transaction, replacing a changed
   document's old chunks atomically.

Writing runs in a writer thread fed through a queue of one batch, so embedding batch N+1
overlaps writing batch N and throughput is the slower stage's, not the sum.  Because every
batch commits whole or not at all and committed documents are skipped on the next run, a run
killed at any point (``kill -9`` included) and run again ends in exactly the state of an
uninterrupted run.

The text embedded for a chunk is ``"title\\nchunk"`` when the document has a title (news
chunks rarely repeat their headline); the chunk's ``content_hash`` is the sha256 of exactly
that text.  A document's stored fingerprint covers its content, its metadata and the chunking
settings, so re-chunking with other sizes re-ingests it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.embeddings import Embeddings

from fengchao_chains.db import Database
from fengchao_chains.errors import FengchaoError
from fengchao_chains.ingest.chunking import Chunker
from fengchao_chains.ingest.sources import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    SourceItem,
    SourceProblem,
    content_hash,
    estimate_total,
    read_source,
)
from fengchao_chains.retrievers.errors import EmbeddingMismatchError
from fengchao_chains.retrievers.registry import KnowledgeBase
from fengchao_chains.retrievers.store import ChunkRecord, ChunkStore, DocumentRecord
from fengchao_chains.retrievers.text_search import segment
from fengchao_chains.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
EMBED_GROUP = 32
"""Texts per ``embed_documents`` call by default: a stop request waits for one call at most."""
OnError = Literal["skip", "fail"]


class IngestError(FengchaoError):
    """An ingestion that cannot run, or was refused because its source has problems."""


@dataclass
class IngestReport:
    """What a run did (or, with ``dry_run``, would do)."""

    knowledge_base: str
    dry_run: bool = False
    documents_read: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    """Items whose id came again later in the same batch (the later one is ingested)."""
    problems: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    embeddings_reused: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("load", "chunk", "embed", "write"), 0.0)
    )
    stopped: bool = False
    """True when a stop request ended the run early (every committed batch stays)."""

    @property
    def items_per_second(self) -> float:
        return self.documents_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["seconds"] = round(self.seconds, 3)
        payload["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        payload["items_per_second"] = round(self.items_per_second, 2)
        return payload


@dataclass(frozen=True)
class Progress:
    """A progress snapshot: documents handled (written or skipped) of about ``total``."""

    done: int
    total: int | None
    chunks_written: int


ProgressCallback = Callable[[Progress], None]
ProblemCallback = Callable[[SourceProblem], None]


def embedding_text(title: Any, chunk: str) -> str:
    """The text embedded for a chunk: the title on its own line first, when there is one."""
    return f"{title}\n{chunk}" if title else chunk


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_fingerprint(item: SourceItem, chunker: Chunker) -> str:
    """What is stored as the document's content hash: its content and metadata, and the
    chunking that made its chunks."""
    payload = f"{content_hash(item)}:{chunker.chunk_size}:{chunker.chunk_overlap}"
    return text_hash(payload)


@contextmanager
def knowledge_base_lock(database: Database, kb: KnowledgeBase, *, shared: bool) -> Iterator[None]:
    """The knowledge base's advisory lock for the block: shared by ingestions, exclusive for a
    re-embedding (which must not see new chunks embedded with the old model).  Not waited
    for: a conflict is an :class:`IngestError` at once.  A killed process releases it."""
    kind = "_shared" if shared else ""
    key = f"fengchao-kb:{database.schema}.{kb.id}"
    with database.pool.connection() as conn:
        conn.autocommit = True
        row = conn.execute(f"SELECT pg_try_advisory_lock{kind}(hashtext(%s))", (key,)).fetchone()
        if not row or not row[0]:
            doing = "ingested" if not shared else "re-embedded"
            raise IngestError(
                f"knowledge base {kb.id!r} is being {doing} by another process; try again when"
                " it has finished"
            )
        try:
            yield
        finally:
            conn.execute(f"SELECT pg_advisory_unlock{kind}(hashtext(%s))", (key,))


@dataclass
class _Batch:
    records: list[DocumentRecord]
    handled: int  # documents of the batch, skipped ones included (for progress)


class _Writer:
    """The write stage in its own thread: batches in, one transaction each, in order.

    An error in the thread is kept and raised in the caller at its next hand-over or at
    :meth:`finish`; a batch being written when the caller stops still commits (or not) whole.
    Once ``stop`` is set, batches still queued are dropped (and the report says stopped):
    the caller may have prepared the next ones while this one was being written.
    """

    _DONE = None

    def __init__(
        self,
        store: ChunkStore,
        report: IngestReport,
        total: int | None,
        on_progress: ProgressCallback | None,
        stop: threading.Event,
    ) -> None:
        self.store, self.report, self.total = store, report, total
        self.on_progress, self.stop = on_progress, stop
        self.queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.handled = 0
        self.abandon = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fengchao-ingest-writer")
        self.thread.daemon = True  # a second Ctrl-C must not hang on it; the DB rolls back
        self.thread.start()

    def _run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is self._DONE or self.abandon.is_set():
                return
            if self.stop.is_set():
                self.report.stopped = True
                continue  # dropped: the run ends after the batch that was being written
            try:
                started = time.perf_counter()
                written = self.store.write(batch.records)
                self.report.stage_seconds["write"] += time.perf_counter() - started
            except BaseException as exc:
                self.error = exc
                return
            self.report.chunks_written += written
            self._advance(batch.handled)

    def _advance(self, handled: int) -> None:
        self.handled += handled
        if self.on_progress is not None:
            self.on_progress(Progress(self.handled, self.total, self.report.chunks_written))

    def put(self, batch: _Batch) -> None:
        """Hand a batch over, waiting while the previous one is written."""
        while True:
            self.raise_error()
            try:
                self.queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Write what is queued, then stop; raises the thread's error."""
        if self.thread.is_alive():
            self.put_done()
            self.thread.join()
        self.raise_error()

    def put_done(self) -> None:
        while self.thread.is_alive():
            try:
                self.queue.put(self._DONE, timeout=0.2)
                return
            except queue.Full:
                continue

    def stop_now(self) -> None:
        """On Ctrl-C: drop what is queued; the batch being written finishes."""
        self.abandon.set()
        with suppress(queue.Empty):
            self.queue.get_nowait()
        self.put_done()
        self.thread.join()


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
                    writer.put(_Batch(records, len(batch)))
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

    def _writer(self, total: int | None) -> _Writer:
        if self.store is None:
            raise IngestError("an ingestion that writes needs a database")
        return _Writer(self.store, self.report, total, self.on_progress, self.stop)

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


# --------------------------------------------------------------------------- entry point ---
def read_sources(
    sources: Sequence[str | Path], *, max_document_chars: int, glob: str | None
) -> Iterator[SourceItem | SourceProblem]:
    """Every source's entries, one source after the other (each checked when reached)."""
    return itertools.chain.from_iterable(
        read_source(source, max_document_chars=max_document_chars, glob=glob) for source in sources
    )


def estimate_sources(sources: Sequence[str | Path], *, glob: str | None) -> int | None:
    total = 0
    for source in sources:
        count = estimate_total(source, glob=glob)
        if count is None:
            return None
        total += count
    return total


def ingest(
    sources: Sequence[str | Path],
    *,
    database: Database | None,
    knowledge_base: KnowledgeBase,
    embeddings: Embeddings | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
    glob: str | None = None,
    on_error: OnError = "skip",
    dry_run: bool = False,
    on_problem: ProblemCallback | None = None,
    on_progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    embed_group: int = EMBED_GROUP,
    settings: Settings | None = None,
) -> IngestReport:
    """Ingest ``sources`` (paths, or ``"-"`` for JSONL on stdin) into ``knowledge_base``.

    ``embeddings`` defaults to the knowledge base's own model (from ``settings``' catalog).
    Problems in the source are passed to ``on_problem`` and skipped; with
    ``on_error="fail"`` the whole source is first read and checked without embedding, and
    :class:`IngestError` is raised, with nothing written, when anything is wrong.
    ``dry_run`` reads, checks and chunks, and reports what would change without embedding or
    writing.  Setting ``stop`` ends the run after the batch being written
    (``report.stopped``); ``embed_group`` texts are embedded per call, so a stop waits for
    one such call at most.
    """
    if on_error not in ("skip", "fail"):
        raise IngestError(f"on_error must be 'skip' or 'fail', not {on_error!r}")
    if embeddings is None and not dry_run:
        from fengchao_chains.embeddings import get_embeddings

        embeddings = get_embeddings(knowledge_base.embedding_model, settings)
    with ExitStack() as stack:
        if on_error == "fail":
            spooled = [stack.enter_context(_Replayable(source)) for source in sources]
            sources = [replayable.path for replayable in spooled]
            on_problem = _stdin_locations(spooled, on_problem)
        pipeline = Pipeline(
            database,
            knowledge_base,
            embeddings,
            batch_size=batch_size,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            dry_run=dry_run,
            on_problem=on_problem,
            on_progress=on_progress,
            stop=stop,
            embed_group=embed_group,
        )
        if on_error == "fail":
            problems = validate(
                sources, max_document_chars=max_document_chars, glob=glob, on_problem=on_problem
            )
            if problems:
                raise IngestError(
                    f"{problems} problem(s) in the source; nothing was written"
                    " (fix them, or ingest with --on-error skip)"
                )
            pipeline.on_problem = None
        total = estimate_sources(sources, glob=glob)
        entries = read_sources(sources, max_document_chars=max_document_chars, glob=glob)
        return pipeline.run(entries, total)
    raise AssertionError("unreachable")  # pragma: no cover - for mypy


def validate(
    sources: Sequence[str | Path],
    *,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
    glob: str | None = None,
    on_problem: ProblemCallback | None = None,
) -> int:
    """Read every source without embedding; the number of problems found."""
    problems = 0
    for entry in read_sources(sources, max_document_chars=max_document_chars, glob=glob):
        if isinstance(entry, SourceProblem):
            problems += 1
            if on_problem is not None:
                on_problem(entry)
    return problems


class _Replayable:
    """A source that can be read twice: stdin is spooled to a temporary JSONL file (copied
    in blocks, so memory stays flat); a path is itself."""

    def __init__(self, source: str | Path) -> None:
        self.path = source
        self.temp: Path | None = None

    def __enter__(self) -> _Replayable:
        if str(self.path) == "-":
            with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as file:
                shutil.copyfileobj(getattr(sys.stdin, "buffer", sys.stdin), file)
                self.temp = self.path = Path(file.name)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


def _stdin_locations(
    spooled: Sequence[_Replayable], on_problem: ProblemCallback | None
) -> ProblemCallback | None:
    """Problems of spooled stdin located as ``<stdin>:N``, like a direct read names them."""
    temps = {str(r.temp): "<stdin>" for r in spooled if r.temp is not None}
    if on_problem is None or not temps:
        return on_problem
    report = on_problem

    def renamed(problem: SourceProblem) -> None:
        name, sep, line = problem.location.rpartition(":")
        if sep and name in temps:
            problem = SourceProblem(f"{temps[name]}:{line}", problem.reason)
        elif problem.location in temps:
            problem = SourceProblem(temps[problem.location], problem.reason)
        report(problem)

    return renamed
