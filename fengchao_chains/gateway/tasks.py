"""Async chat tasks: a queue in PostgreSQL and the bounded pool of workers that runs it.

``/aigc/chat/`` with ``mode=async`` submits a task and answers with its id; ``async_result``
reads it back.  The queue lives in the ``tasks`` table (migration 0004), so every server
process on one schema shares it, and nothing is lost when a process stops or dies:

* **claim**: a worker takes the oldest claimable task with ``UPDATE ... WHERE id = (SELECT ...
  FOR UPDATE SKIP LOCKED LIMIT 1)``, so concurrent workers never take the same row.  A claim
  sets a lease (``lease_until``), a fresh claim token and ``attempts + 1``;
* **fencing**: completing, failing, renewing or releasing a task needs the current claim
  token, so a worker whose lease ran out and whose task was re-claimed cannot overwrite the
  new holder's outcome: a task is completed at most once;
* **crash**: a killed worker stops renewing its leases; when one runs out the task is claimed
  again and run **from the start** (at-least-once start, exactly-once completion).  A task
  claimed ``MAX_ATTEMPTS`` times without finishing is failed with a message saying so;
* **graceful stop**: running tasks get a grace period, then are cancelled and put back to
  pending with their attempt given back, for the next process;
* **wake-up**: a submit sends ``NOTIFY`` in its transaction; workers ``LISTEN`` on a
  dedicated connection and fall back to polling every ``poll_interval`` seconds;
* **retention**: finished tasks are deleted ``task_retention_seconds`` after they finished,
  and ``aget`` treats them as gone from that moment even before the purge runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from fengchao_chains.db import Database
from fengchao_chains.errors import DatabaseError, FengchaoError, one_line
from fengchao_chains.settings import Settings

logger = logging.getLogger(__name__)

TaskStatus = Literal["pending", "running", "done", "failed"]

MAX_ATTEMPTS = 3
"""Claims a task gets before a worker that keeps disappearing mid-run makes it fail."""
MAINTENANCE_INTERVAL = 60.0
"""Seconds between the workers' purge of expired results (and failing exhausted tasks)."""
ERROR_MAX_CHARS = 500
_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
_COLUMNS = (
    "id, owner, status, payload, result, error, attempts, created_at, started_at, finished_at"
)


class TaskError(FengchaoError, ValueError):
    """A task that cannot be stored: empty owner, or a payload or result that is not a JSON
    object."""


@dataclass(frozen=True)
class Task:
    """One async task as stored; ``owner`` is the submitting api_key."""

    id: str
    owner: str
    status: TaskStatus
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Claim:
    """A task a worker holds, and the token that proves it (fencing)."""

    task: Task
    token: uuid.UUID


TaskHandler = Callable[[Task], Awaitable[dict[str, Any]]]
"""Runs a task's payload and returns the result JSON (an exception fails the task)."""


def _task(row: tuple[Any, ...]) -> Task:
    return Task(*row)


def _json_object(value: Any, what: str) -> str:
    """``value`` as JSON text, or a :class:`TaskError` saying why it cannot be stored."""
    if not isinstance(value, dict):
        raise TaskError(f"the task {what} must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"the task {what} is not valid JSON: {one_line(exc)}") from None


class TaskQueue:
    """The ``tasks`` table: submit and read (for the API), claim and settle (for workers)."""

    max_attempts: int = MAX_ATTEMPTS

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.lease_seconds = float(settings.task_lease_seconds)
        self.retention_seconds = float(settings.task_retention_seconds)
        self._secrets = _secrets_of(settings, database)

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this schema's queue (schemas sharing a database stay apart;
        hashed so any schema name fits PostgreSQL's 63-byte identifiers)."""
        digest = hashlib.blake2b(self.database.schema.encode(), digest_size=8).hexdigest()
        return f"fengchao_tasks_{digest}"

    # ------------------------------------------------------------------ the API side -----
    async def asubmit(self, owner: str, payload: dict[str, Any]) -> str:
        """Store a pending task and wake the workers (on commit); return its id."""
        if not owner:
            raise TaskError("a task needs an owner (the caller's api_key)")
        text = _json_object(payload, "payload")
        task_id = uuid.uuid4().hex
        pool = await self.database.open_async_pool()
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO tasks (id, owner, payload) VALUES (%s, %s, %s::jsonb)",
                    (task_id, owner, text),
                )
                await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, task_id))
        except psycopg.DataError as exc:  # e.g. a \u0000 jsonb refuses
            raise TaskError(f"the task payload cannot be stored: {one_line(exc)}") from None
        return task_id

    async def aget(self, owner: str, task_id: str) -> Task | None:
        """The caller's task; None when unknown, another owner's, malformed or expired."""
        if not isinstance(task_id, str) or not _TASK_ID.match(task_id) or not owner:
            return None
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE id = %s AND owner = %s"  # noqa: S608
                " AND (finished_at IS NULL"
                "      OR finished_at > now() - make_interval(secs => %s))",
                (task_id, owner, self.retention_seconds),
            )
            row = await cursor.fetchone()
        return _task(row) if row else None

    async def apurge(self) -> int:
        """Delete finished tasks past retention; return how many."""
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM tasks WHERE finished_at <= now() - make_interval(secs => %s)",
                (self.retention_seconds,),
            )
            return cursor.rowcount

    # ------------------------------------------------------------------ the worker side --
    async def aclaim(self) -> Claim | None:
        """Take the oldest pending task, or a running one whose lease ran out; None if none.

        Expired tasks that used up their attempts are not taken (``areap`` fails them)."""
        token = uuid.uuid4()
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                f"UPDATE tasks SET status = 'running', claim_token = %(token)s,"  # noqa: S608
                "  lease_until = now() + make_interval(secs => %(lease)s),"
                "  attempts = attempts + 1, started_at = now()"
                " WHERE id = ("
                "  SELECT id FROM tasks"
                "  WHERE status = 'pending'"
                "     OR (status = 'running' AND lease_until < now() AND attempts < %(max)s)"
                "  ORDER BY created_at, id"
                "  FOR UPDATE SKIP LOCKED LIMIT 1)"
                f" RETURNING {_COLUMNS}",
                {"token": token, "lease": self.lease_seconds, "max": self.max_attempts},
            )
            row = await cursor.fetchone()
        return Claim(_task(row), token) if row else None

    async def arenew(self, claim: Claim) -> bool:
        """Extend the lease; False when the claim is no longer ours."""
        return await self._settle(
            claim, "lease_until = now() + make_interval(secs => %(lease)s)", {}
        )

    async def acomplete(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Mark the task done with ``result``; False (nothing written) when the claim is no
        longer ours.  A result that is not a JSON object raises :class:`TaskError`."""
        text = _json_object(result, "result")
        try:
            return await self._settle(
                claim,
                "status = 'done', result = %(result)s::jsonb, finished_at = now(),"
                " claim_token = NULL, lease_until = NULL",
                {"result": text},
            )
        except psycopg.DataError as exc:
            raise TaskError(f"the task result cannot be stored: {one_line(exc)}") from None

    async def afail(self, claim: Claim, error: str) -> bool:
        """Mark the task failed with a one-line ``error``; False when the claim is lost."""
        return await self._settle(
            claim,
            "status = 'failed', error = %(error)s, finished_at = now(),"
            " claim_token = NULL, lease_until = NULL",
            {"error": self._clean(error)},
        )

    async def arelease(self, claim: Claim) -> bool:
        """Put the task back to pending with its attempt given back (a graceful stop)."""
        return await self._settle(
            claim,
            "status = 'pending', claim_token = NULL, lease_until = NULL, started_at = NULL,"
            " attempts = greatest(attempts - 1, 0)",
            {},
        )

    async def areap(self) -> int:
        """Fail running tasks whose lease ran out after their last allowed attempt."""
        error = (
            f"the task was started {self.max_attempts} times and its worker stopped each time"
            " before it finished (process killed or lease lost); it is not retried again"
        )
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE tasks SET status = 'failed', error = %s, finished_at = now(),"
                "  claim_token = NULL, lease_until = NULL"
                " WHERE status = 'running' AND lease_until < now() AND attempts >= %s",
                (error, self.max_attempts),
            )
            return cursor.rowcount

    async def alisten(self) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection LISTENing on :attr:`channel` (the caller closes it)."""
        return await self.database.alisten(
            self.channel, purpose="listen for new tasks", application_name="fengchao-tasks"
        )

    def describe_error(self, exc: BaseException) -> str:
        """A handler's exception as the task's one-line error: our own errors by their
        message, others prefixed with their type; known secrets masked."""
        text = one_line(exc)
        if not isinstance(exc, FengchaoError) and text != type(exc).__name__:
            text = f"{type(exc).__name__}: {text}"
        return self._clean(text)

    def _clean(self, error: str) -> str:
        text = " ".join(error.split()) or "the task failed"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:ERROR_MAX_CHARS]

    async def _settle(self, claim: Claim, assignments: str, params: dict[str, Any]) -> bool:
        """Apply ``assignments`` to the task if ``claim`` is still its current claim."""
        query = (
            f"UPDATE tasks SET {assignments}"  # noqa: S608 - fixed text from this module
            " WHERE id = %(id)s AND claim_token = %(token)s AND status = 'running'"
        )
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                query,
                {"id": claim.task.id, "token": claim.token, "lease": self.lease_seconds, **params},
            )
            return cursor.rowcount == 1


def _secrets_of(settings: Settings, database: Database) -> list[str]:
    """Every secret the process knows (vendor keys, the database password), longest first,
    so a handler's error that quotes one is masked before it is stored."""
    found = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and len(value.get_secret_value()) >= 4:
            found.append(value.get_secret_value())
    password = conninfo_to_dict(database.conninfo).get("password")
    if password and len(str(password)) >= 4:
        found.append(str(password))
    return sorted(set(found), key=len, reverse=True)


class TaskWorkers:
    """Runs the queue's tasks in this event loop, at most ``concurrency`` at a time.

    One dispatcher claims a task whenever a slot is free and something may be waiting (a
    NOTIFY, a finished task, or ``poll_interval`` elapsed); each running task renews its lease
    every third of the lease.  A maintenance loop purges expired results and fails exhausted
    tasks every ``MAINTENANCE_INTERVAL`` seconds (or every lease, if shorter).
    """

    def __init__(
        self,
        queue: TaskQueue,
        handler: TaskHandler,
        *,
        concurrency: int | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.concurrency = queue.settings.task_workers if concurrency is None else concurrency
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.poll_interval = poll_interval
        self._renew_every = queue.lease_seconds / 3
        self._maintenance_every = min(MAINTENANCE_INTERVAL, queue.lease_seconds)
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._running: dict[uuid.UUID, tuple[Claim, asyncio.Task[None]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._listener: psycopg.AsyncConnection[Any] | None = None

    @property
    def active(self) -> int:
        """Handlers running now."""
        return len(self._running)

    async def start(self) -> None:
        """Listen for submissions and start claiming (idempotent while running)."""
        if self._loops:
            return
        await self.queue.database.open_async_pool()
        self._listener = await self.queue.alisten()
        self._stop = asyncio.Event()
        self._kick = asyncio.Event()
        self._loops = [
            asyncio.create_task(self._dispatch(), name="tasks-dispatch"),
            asyncio.create_task(self._listen(self._listener), name="tasks-listen"),
            asyncio.create_task(self._maintain(), name="tasks-maintain"),
        ]
        for loop in self._loops:
            loop.add_done_callback(_report_crash)
        logger.info(
            "async task workers started: %d at once, lease %.0fs",
            self.concurrency,
            self.queue.lease_seconds,
        )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, give running tasks ``grace`` seconds, then cancel the rest and put
        them back to pending for the next process."""
        if not self._loops:
            return
        dispatcher, *others = self._loops
        self._stop.set()
        self._kick.set()
        await asyncio.gather(dispatcher, return_exceptions=True)  # ends after a claim in flight
        for loop in others:
            loop.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._listener is not None:  # a listener cancelled before it ran never closed it
            await self._listener.close()
            self._listener = None
        running = [task for _, task in self._running.values()]
        if running:
            late = set(running)
            if grace > 0:
                _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if late:
                logger.info("%d unfinished async tasks returned to the queue", len(late))
        for claim, _ in list(self._running.values()):  # cancelled before they even began
            await self._give_back(claim)
        self._running.clear()
        self._loops = []

    # ------------------------------------------------------------------ loops ------------
    async def _nap(self, timeout: float | None) -> None:
        """Sleep until kicked (a NOTIFY, a finished task, stop) or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), timeout)

    async def _dispatch(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if len(self._running) >= self.concurrency:
                self._kick.clear()
                await self._nap(None)
                continue
            self._kick.clear()  # a NOTIFY during the claim makes the nap below return at once
            try:
                claim = await self.queue.aclaim()
            except (psycopg.Error, DatabaseError) as exc:
                failures += 1
                logger.warning("cannot claim an async task (will retry): %s", one_line(exc))
                await self._nap(min(30.0, 0.5 * 2**failures))
                continue
            failures = 0
            if claim is None:
                await self._nap(self.poll_interval)
            elif self._stop.is_set():
                await self._give_back(claim)
            else:
                run = asyncio.create_task(self._run(claim), name=f"task-{claim.task.id}")
                self._running[claim.token] = (claim, run)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Turn NOTIFYs into kicks; reconnect (and kick, for what was missed) on failure."""
        delay = 1.0
        while True:
            try:
                async with conn:
                    async for _ in conn.notifies():
                        self._kick.set()
            except psycopg.Error as exc:
                logger.warning("task notifications lost (polling meanwhile): %s", one_line(exc))
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                try:
                    conn = self._listener = await self.queue.alisten()
                except DatabaseError as exc:
                    logger.warning("%s", exc)
                    continue
                delay = 1.0
                self._kick.set()
                break

    async def _maintain(self) -> None:
        while True:
            try:
                failed = await self.queue.areap()
                purged = await self.queue.apurge()
            except (psycopg.Error, DatabaseError) as exc:
                logger.warning("async task maintenance failed (will retry): %s", one_line(exc))
            else:
                if failed:
                    logger.warning(
                        "%d async tasks failed after %d attempts", failed, self.queue.max_attempts
                    )
                if purged:
                    logger.info("%d expired async task results deleted", purged)
            await asyncio.sleep(self._maintenance_every)

    # ------------------------------------------------------------------ one task ---------
    async def _run(self, claim: Claim) -> None:
        try:
            await self._supervise(claim)
        finally:
            self._running.pop(claim.token, None)
            self._kick.set()

    async def _supervise(self, claim: Claim) -> None:
        """Run the handler, renewing the lease; settle the outcome while the claim is ours."""
        handler = asyncio.ensure_future(self.handler(claim.task))
        try:
            while not (await asyncio.wait({handler}, timeout=self._renew_every))[0]:
                if not await self._renew(claim):
                    logger.warning(
                        "async task %s: lease lost to another worker; stopping this run",
                        claim.task.id,
                    )
                    await _cancel(handler)
                    return
        except asyncio.CancelledError:  # stop() ran out of grace
            await _cancel(handler)
            if handler.done() and not handler.cancelled():
                await self._record(claim, handler)
            else:
                await self._give_back(claim)
            raise
        # the outcome is stored even if stop() runs out of grace meanwhile: a few milliseconds
        # of UPDATE rather than a whole re-run after the lease
        recording = asyncio.ensure_future(self._record(claim, handler))
        try:
            await asyncio.shield(recording)
        except asyncio.CancelledError:
            await recording
            raise

    async def _renew(self, claim: Claim) -> bool:
        """False only when the claim is lost; a database hiccup keeps the run going."""
        try:
            return await self.queue.arenew(claim)
        except (psycopg.Error, DatabaseError) as exc:
            logger.warning("async task %s: lease not renewed: %s", claim.task.id, one_line(exc))
            return True

    async def _record(self, claim: Claim, handler: asyncio.Future[dict[str, Any]]) -> None:
        task_id = claim.task.id
        exc: BaseException | None = (
            asyncio.CancelledError("the handler was cancelled")
            if handler.cancelled()
            else handler.exception()
        )
        try:
            if exc is None:
                try:
                    settled = await self.queue.acomplete(claim, handler.result())
                except TaskError as bad:
                    settled = await self.queue.afail(claim, str(bad))
            else:
                error = self.queue.describe_error(exc)
                logger.warning("async task %s failed: %s", task_id, error)
                settled = await self.queue.afail(claim, error)
        except (psycopg.Error, DatabaseError) as db_exc:
            logger.error(
                "async task %s: outcome not stored (it runs again after its lease): %s",
                task_id,
                one_line(db_exc),
            )
            return
        if not settled:
            logger.warning("async task %s finished after its claim was lost; dropped", task_id)

    async def _give_back(self, claim: Claim) -> None:
        try:
            await self.queue.arelease(claim)
        except (psycopg.Error, DatabaseError) as exc:
            logger.warning(
                "async task %s not returned to the queue (it runs again after its lease): %s",
                claim.task.id,
                one_line(exc),
            )


def _report_crash(loop: asyncio.Task[None]) -> None:
    """A worker loop that ended by a bug would otherwise stop the queue silently."""
    if not loop.cancelled() and (exc := loop.exception()) is not None:
        logger.error("async task loop %s stopped: %s", loop.get_name(), one_line(exc))


async def _cancel(task: asyncio.Future[Any], wait: float = 5.0) -> None:
    """Cancel ``task`` and wait (bounded) for it to end."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=wait)
