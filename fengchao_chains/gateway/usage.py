"""Usage records into ``usage_events``, written behind the requests in batches.

A model call's record is made by the per-request :class:`UsageRecorder` when the call ends;
writing it then and there would add a database round trip to every answer. Records are
buffered instead and written by the server's flusher every ``usage_flush_seconds`` (and at
shutdown), many rows per statement. ``run_id`` is unique, so a batch that is written twice
(a retry after an error that came after the commit) adds nothing. What a crash loses is at
most the records of the last interval; a failed write keeps the records for the next one
(up to ``MAX_BUFFERED``, beyond which the oldest are dropped, with an error logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator

import psycopg

from fengchao_chains.callbacks.usage import FrontDoor, UsageRecord, UsageRecorder
from fengchao_chains.catalog import Catalog
from fengchao_chains.db import Database

logger = logging.getLogger(__name__)

MAX_BUFFERED = 100_000
_INSERT = """
INSERT INTO usage_events (
    run_id, api_key, model, front_door, started_at, ended_at, latency_ms, ttft_ms, streamed,
    status, error, prompt_tokens, completion_tokens, estimated, cost, unit, request_id
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id) DO NOTHING
"""


def _row(record: UsageRecord) -> tuple[object, ...]:
    return (
        record.run_id,
        record.caller,
        record.model[:256],
        record.front_door,
        record.started_at,
        record.ended_at,
        record.latency_ms,
        record.ttft_ms,
        record.streamed,
        record.status,
        record.error,
        record.prompt_tokens,
        record.completion_tokens,
        record.estimated,
        record.cost,
        record.unit,
        record.request_id[:256] if record.request_id else None,
    )


class UsageLog:
    """The buffer between the recorders and ``usage_events`` (one per process)."""

    def __init__(self, database: Database, catalog: Catalog) -> None:
        self.database = database
        self.catalog = catalog
        self._buffer: deque[UsageRecord] = deque()
        self._lock = threading.Lock()
        self._dropped = 0

    def recorder(
        self, caller: str, front_door: FrontDoor, request_id: str | None = None
    ) -> UsageRecorder:
        """A recorder for one request whose records end up here."""
        return UsageRecorder(
            caller, self.catalog, front_door=front_door, sink=self, request_id=request_id
        )

    def add(self, record: UsageRecord) -> None:
        with self._lock:
            if len(self._buffer) >= MAX_BUFFERED:
                self._buffer.popleft()
                self._dropped += 1
            self._buffer.append(record)

    def __len__(self) -> int:
        return len(self._buffer)

    def _take(self) -> list[UsageRecord]:
        with self._lock:
            records = list(self._buffer)
            self._buffer.clear()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            logger.error("usage: %d records dropped: the database was down too long", dropped)
        return records

    def _give_back(self, records: list[UsageRecord]) -> None:
        with self._lock:
            self._buffer.extendleft(reversed(records))

    async def aflush(self) -> int:
        """Write what is buffered; returns the number of records written (or already there)."""
        records = self._take()
        if not records:
            return 0
        try:
            async with self.database.async_pool.connection() as conn, conn.cursor() as cursor:
                await cursor.executemany(_INSERT, [_row(record) for record in records])
        except BaseException as exc:
            self._after_failure(records, exc)
            raise
        return len(records)

    def flush(self) -> int:
        """:meth:`aflush` on the sync pool (the CLI, tests, a process without a loop)."""
        records = self._take()
        if not records:
            return 0
        try:
            with self.database.pool.connection() as conn, conn.cursor() as cursor:
                cursor.executemany(_INSERT, [_row(record) for record in records])
        except BaseException as exc:
            self._after_failure(records, exc)
            raise
        return len(records)

    def _after_failure(self, records: list[UsageRecord], exc: BaseException) -> None:
        """Keep the batch for the next flush when the database could not be reached (or the
        flush was interrupted); drop it when the database refused its data, which a retry
        would not change (it would block every later record behind it)."""
        if isinstance(exc, psycopg.Error) and not isinstance(exc, psycopg.OperationalError):
            logger.error(
                "usage: %d records refused by the database, dropped: %s", len(records), exc
            )
            return
        self._give_back(records)

    @contextlib.asynccontextmanager
    async def flushing(self, interval: float) -> AsyncIterator[None]:
        """Flush every ``interval`` seconds while the block runs, and once more at its end."""
        stop = asyncio.Event()
        task = asyncio.create_task(self._every(interval, stop), name="fengchao-usage-flush")
        try:
            yield
        finally:
            stop.set()
            await task
            await self.aclose()

    async def _every(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            try:
                await self.aflush()
            except Exception as exc:  # kept for the next interval
                logger.warning("usage records not written yet (%d buffered): %s", len(self), exc)

    async def aclose(self) -> None:
        """The last flush (at shutdown): a failure is logged, the records are lost."""
        try:
            await self.aflush()
        except Exception as exc:
            logger.error("usage: %d records lost at shutdown: %s", len(self), exc)
