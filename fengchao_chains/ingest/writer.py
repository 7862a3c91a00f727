"""The write stage of the pipeline: prepared batches written to PostgreSQL in a thread.

Writing runs in its own thread fed through a queue of one batch, so embedding batch N+1
overlaps writing batch N and throughput is the slower stage's, not the sum.  Each batch is
written by :meth:`ChunkStore.write` in ONE transaction, so a run killed at any point leaves
only whole batches behind.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import suppress
from dataclasses import dataclass

from fengchao_chains.ingest.report import IngestReport, Progress, ProgressCallback
from fengchao_chains.retrievers.store import ChunkStore, DocumentRecord


@dataclass
class WriteBatch:
    """One batch's records to write, and how many documents it stands for."""

    records: list[DocumentRecord]
    handled: int  # documents of the batch, skipped ones included (for progress)


class BatchWriter:
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
        self.queue: queue.Queue[WriteBatch | None] = queue.Queue(maxsize=1)
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

    def put(self, batch: WriteBatch) -> None:
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
