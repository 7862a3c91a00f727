"""The sample news store: ``news_vector_store`` (资讯库), loaded with the packaged sample news.

The fengchao API's clients expect a knowledge base called ``news_vector_store``.  The server
makes sure it exists (empty is fine) before it answers, then, when ``settings.load_sample_news``
is on and the store holds nothing but sample news (it is empty, or an earlier load was
stopped part-way), loads the 60 packaged sample news items in a background thread, so the
server answers at once and questions find something on a fresh install.  The load is an
ordinary ingestion: a complete store costs a check of 60 hashes and writes nothing, and a
store with documents of its own is left alone.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from pathlib import Path

from fengchao_chains.db import Database
from fengchao_chains.ingest.report import IngestReport
from fengchao_chains.ingest.run import ingest
from fengchao_chains.ingest.sources import SourceItem, read_source
from fengchao_chains.retrievers.errors import UnknownKnowledgeBaseError
from fengchao_chains.retrievers.registry import (
    NEWS_STORE,
    NEWS_STORE_DESCRIPTION,
    KnowledgeBase,
    KnowledgeBaseRegistry,
)
from fengchao_chains.retrievers.store import ChunkStore
from fengchao_chains.settings import Settings

logger = logging.getLogger(__name__)

SAMPLE_FILE = "sample_news.jsonl"
SAMPLE_BATCH = 16
"""Documents per transaction, and texts per embedding call below: a server stopping
mid-load waits for one small batch and one small call only."""
SAMPLE_EMBED_GROUP = 4
STOP_TIMEOUT = 20.0
"""Seconds a shutdown waits for the load to stop; then it goes on (the thread is a daemon,
and a write cut short by the closing pool rolls back)."""


def sample_news_path() -> Path:
    """The packaged sample: ``_sample/`` in an installed wheel, else the source checkout's
    ``ingest/`` (editable installs)."""
    installed = resources.files("fengchao_chains").joinpath("_sample", SAMPLE_FILE)
    if installed.is_file():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "ingest" / SAMPLE_FILE


def ensure_news_store(database: Database, settings: Settings) -> KnowledgeBase:
    """``news_vector_store``, created empty with ``settings.embedding_model`` if missing."""
    from fengchao_chains.embeddings import get_embeddings

    registry = KnowledgeBaseRegistry(database)
    try:
        return registry.get(NEWS_STORE)
    except UnknownKnowledgeBaseError:
        pass
    model = get_embeddings(settings.embedding_model, settings)  # the card only: no weights
    return registry.ensure(
        NEWS_STORE,
        description=NEWS_STORE_DESCRIPTION,
        embedding_model=model.model,
        dims=model.dimensions,
    )


def load_sample_news(
    database: Database, settings: Settings, *, stop: threading.Event | None = None
) -> IngestReport | None:
    """Ensure ``news_vector_store``; when ``settings.load_sample_news`` is on and the store
    holds only sample news (or nothing), ingest the packaged sample into it.  None when the
    store was left alone."""
    from fengchao_chains.embeddings import get_embeddings

    kb = ensure_news_store(database, settings)
    if not settings.load_sample_news:
        return None
    path = sample_news_path()
    if not path.is_file():
        logger.warning("sample news not loaded: %s is missing from this installation", path)
        return None
    stored = KnowledgeBaseRegistry(database).stats(kb)["documents"]
    if stored:
        ids = [e.document_id for e in read_source(path) if isinstance(e, SourceItem)]
        if len(ChunkStore(database, kb).document_hashes(ids)) < stored:
            return None  # the store has documents of its own
    return ingest(
        [path],
        database=database,
        knowledge_base=kb,
        embeddings=get_embeddings(kb.embedding_model, settings),
        batch_size=SAMPLE_BATCH,
        stop=stop,
        embed_group=SAMPLE_EMBED_GROUP,
    )


class SampleNewsLoader:
    """:func:`load_sample_news` in a daemon thread; :meth:`stop` ends it after the batch in
    flight (called before the database closes)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database, self.settings = database, settings
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.report: IngestReport | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fengchao-sample-news", daemon=True)

    def start(self) -> SampleNewsLoader:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.report = load_sample_news(self.database, self.settings, stop=self.stopping)
        except Exception as exc:  # a background job logs; the server keeps serving
            self.error = exc
            logger.error("sample news not loaded into %s: %s", NEWS_STORE, exc)
        else:
            report = self.report
            if report is not None and not report.stopped and report.new + report.changed:
                logger.info(
                    "sample news loaded into %s: %d documents, %d chunks in %.1f s",
                    NEWS_STORE,
                    report.new + report.changed,
                    report.chunks_written,
                    report.seconds,
                )
        finally:
            self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the load has finished (loaded, skipped, stopped or failed)."""
        return self.done.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
