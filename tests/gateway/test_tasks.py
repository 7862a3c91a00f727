"""The async task queue on a real PostgreSQL: submit and read, claims with fencing, bounded
and shared workers, graceful stop, retention, and a worker process killed mid-task."""

from __future__ import annotations

import asyncio
import collections
import inspect
import queue as thread_queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from psycopg.rows import dict_row
from pydantic import SecretStr

from fengchao_chains.db import Database
from fengchao_chains.gateway.tasks import (
    MAX_ATTEMPTS,
    Task,
    TaskError,
    TaskHandler,
    TaskQueue,
    TaskWorkers,
)
from fengchao_chains.settings import Settings
from tests.processes import clean_env

WORKER_SCRIPT = Path(__file__).with_name("task_worker_process.py")
OWNER = "ak-owner-one"


class Harness:
    """Queues and workers of one test; everything is stopped and the async pool closed at
    the end, even when the test fails."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.workers: list[TaskWorkers] = []

    def queue(self, **changes: Any) -> TaskQueue:
        return TaskQueue(self.database, self.settings.model_copy(update=changes))

    async def start(self, queue: TaskQueue, handler: TaskHandler, **options: Any) -> TaskWorkers:
        workers = TaskWorkers(queue, handler, **options)
        self.workers.append(workers)
        await workers.start()
        return workers

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.database.pool.connection() as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def row(self, task_id: str) -> dict[str, Any]:
        with self.database.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            found = cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,)).fetchone()
        assert found is not None
        return found

    def expire_lease(self, task_id: str) -> None:
        """What the passing of a lease looks like, without waiting for it."""
        self.sql(
            "UPDATE tasks SET lease_until = now() - interval '1 second' WHERE id = %s",
            (task_id,),
        )


@pytest_asyncio.fixture(loop_scope="function")
async def harness(database: Database, settings: Settings) -> AsyncIterator[Harness]:
    harness = Harness(database, settings)
    yield harness
    for workers in harness.workers:
        await workers.stop(grace=0)
    await database.close_async_pool()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0) -> None:
    """Wait until ``check()`` (plain or async) is true."""
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else result


async def all_finished(queue: TaskQueue, ids: list[str], owner: str = OWNER) -> list[Task]:
    tasks: list[Task] = []

    async def check() -> bool:
        tasks[:] = [t for t in [await queue.aget(owner, i) for i in ids] if t is not None]
        return len(tasks) == len(ids) and all(t.status in ("done", "failed") for t in tasks)

    await eventually(check)
    return tasks


# ---------------------------------------------------------------------- submit and read --
async def test_a_submitted_task_reads_back_pending(harness: Harness) -> None:
    queue = harness.queue()
    payload = {"query": "介绍一下北京", "model": "glm-4", "history": [{"role": "user"}]}
    task_id = await queue.asubmit(OWNER, payload)
    assert re.fullmatch(r"[0-9a-f]{32}", task_id)
    task = await queue.aget(OWNER, task_id)
    assert task is not None
    assert (task.id, task.owner, task.status, task.payload) == (task_id, OWNER, "pending", payload)
    assert (task.result, task.error, task.attempts) == (None, None, 0)
    assert task.created_at.tzinfo is not None
    assert task.started_at is None and task.finished_at is None
    assert await queue.asubmit(OWNER, payload) != task_id


async def test_a_key_sees_only_its_own_tasks(harness: Harness) -> None:
    queue = harness.queue()
    task_id = await queue.asubmit(OWNER, {"query": "q"})
    assert await queue.aget("ak-someone-else", task_id) is None
    assert await queue.aget("", task_id) is None
    for malformed in (task_id.upper(), task_id[:-1], task_id + "0", "' OR 1=1 --", "", "g" * 32):
        assert await queue.aget(OWNER, malformed) is None
    assert await queue.aget(OWNER, "0" * 32) is None
    assert await queue.aget(OWNER, task_id) is not None


@pytest.mark.parametrize(
    ("owner", "payload", "message"),
    [
        ("", {"q": 1}, "needs an owner"),
        (OWNER, ["not", "an", "object"], "must be a JSON object, not list"),
        (OWNER, {"temperature": float("nan")}, "not valid JSON"),
        (OWNER, {"files": {"a", "b"}}, "not valid JSON"),
        (OWNER, {"query": "nul \u0000 byte"}, "cannot be stored"),
    ],
)
async def test_bad_submissions_are_refused_and_nothing_is_written(
    harness: Harness, owner: str, payload: Any, message: str
) -> None:
    with pytest.raises(TaskError, match=message):
        await harness.queue().asubmit(owner, payload)
    assert harness.sql("SELECT count(*) FROM tasks") == [(0,)]


# ---------------------------------------------------------------------- claims -----------
async def test_claims_go_oldest_first_and_only_the_current_claim_settles(
    harness: Harness,
) -> None:
    queue = harness.queue()
    first = await queue.asubmit(OWNER, {"n": 1})
    second = await queue.asubmit(OWNER, {"n": 2})
    claim_a = await queue.aclaim()
    claim_b = await queue.aclaim()
    assert claim_a is not None and claim_b is not None
    assert (claim_a.task.id, claim_b.task.id) == (first, second)
    assert (claim_a.task.status, claim_a.task.attempts) == ("running", 1)
    assert claim_a.task.started_at is not None
    assert await queue.aclaim() is None  # both leased

    harness.expire_lease(first)
    again = await queue.aclaim()
    assert again is not None and again.task.id == first
    assert again.task.attempts == 2 and again.token != claim_a.token

    # the first holder lost its lease: nothing it does lands
    assert not await queue.acomplete(claim_a, {"by": "stale"})
    assert not await queue.afail(claim_a, "stale")
    assert not await queue.arenew(claim_a)
    assert not await queue.arelease(claim_a)
    assert await queue.arenew(again)
    assert await queue.acomplete(again, {"by": "current"})
    assert not await queue.acomplete(again, {"by": "twice"})  # completes at most once

    done = await queue.aget(OWNER, first)
    assert done is not None
    assert (done.status, done.result, done.attempts) == ("done", {"by": "current"}, 2)
    assert done.finished_at is not None
    assert harness.row(first)["claim_token"] is None


async def test_a_task_whose_worker_keeps_disappearing_fails_after_max_attempts(
    harness: Harness,
) -> None:
    queue = harness.queue()
    task_id = await queue.asubmit(OWNER, {"q": "x"})
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claim = await queue.aclaim()
        assert claim is not None and claim.task.attempts == attempt
        harness.expire_lease(task_id)
    assert await queue.aclaim() is None  # exhausted: not started a fourth time
    assert await queue.areap() == 1
    task = await queue.aget(OWNER, task_id)
    assert task is not None and task.status == "failed"
    assert task.error is not None and f"started {MAX_ATTEMPTS} times" in task.error
    assert task.finished_at is not None
    assert await queue.areap() == 0


# ---------------------------------------------------------------------- workers ----------
async def test_handler_outcomes_are_stored_as_results_or_one_line_errors(
    database: Database, settings: Settings
) -> None:
    secret = "sk-live-0123456789abcdef"
    harness = Harness(database, settings.model_copy(update={"openai_api_key": SecretStr(secret)}))
    queue = harness.queue()

    async def handler(task: Task) -> dict[str, Any]:
        kind = task.payload["kind"]
        if kind == "ok":
            return {"choices": [{"message": {"content": "你好"}}], "attempt": task.attempts}
        if kind == "raise":
            raise RuntimeError(f"vendor refused key {secret}\nTraceback (most recent call last):")
        if kind == "list":
            return ["not", "an", "object"]  # type: ignore[return-value]
        return {"score": float("inf")}

    kinds = ("ok", "raise", "list", "inf")
    ids = {kind: await queue.asubmit(OWNER, {"kind": kind}) for kind in kinds}
    try:
        await harness.start(queue, handler, concurrency=2, poll_interval=0.2)
        await all_finished(queue, list(ids.values()))
    finally:
        for workers in harness.workers:
            await workers.stop(grace=0)
        await database.close_async_pool()
    ok, raised, listed, inf = (harness.row(ids[k]) for k in ("ok", "raise", "list", "inf"))
    assert ok["status"] == "done" and ok["result"]["attempt"] == 1
    assert ok["result"]["choices"][0]["message"]["content"] == "你好"
    assert raised["status"] == "failed" and raised["result"] is None
    assert raised["error"] == "RuntimeError: vendor refused key ***"
    assert listed["status"] == "failed"
    assert listed["error"] == "the task result must be a JSON object, not list"
    assert inf["status"] == "failed" and "not valid JSON" in inf["error"]


async def test_no_more_than_concurrency_handlers_run_at_once(harness: Harness) -> None:
    queue = harness.queue()
    running = peak = 0

    async def handler(task: Task) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.15)
        running -= 1
        return {"n": task.payload["n"]}

    ids = [await queue.asubmit(OWNER, {"n": n}) for n in range(12)]
    workers = await harness.start(queue, handler, concurrency=3, poll_interval=0.2)
    tasks = await all_finished(queue, ids)
    assert peak == 3  # bounded, and the bound is used
    assert all(t.status == "done" and t.attempts == 1 for t in tasks)
    assert sorted(t.result["n"] for t in tasks if t.result) == list(range(12))
    assert workers.active == 0


async def test_two_worker_pools_on_one_database_run_every_task_exactly_once(
    harness: Harness,
) -> None:
    ran: list[tuple[str, str]] = []

    def handler_for(name: str) -> TaskHandler:
        async def handler(task: Task) -> dict[str, Any]:
            ran.append((name, task.id))
            await asyncio.sleep(0.01 * (task.payload["n"] % 4))
            return {"ran_by": name}

        return handler

    queue = harness.queue()
    ids = [await queue.asubmit(OWNER, {"n": n}) for n in range(40)]
    await harness.start(harness.queue(), handler_for("a"), concurrency=3, poll_interval=0.2)
    await harness.start(harness.queue(), handler_for("b"), concurrency=3, poll_interval=0.2)
    more = [await queue.asubmit(OWNER, {"n": n}) for n in range(40, 60)]
    tasks = await all_finished(queue, ids + more)

    runs = collections.Counter(task_id for _, task_id in ran)
    assert set(runs) == set(ids + more) and set(runs.values()) == {1}
    assert {name for name, _ in ran} == {"a", "b"}
    by_runner = dict((task_id, name) for name, task_id in ran)
    assert all(t.status == "done" and t.attempts == 1 for t in tasks)
    assert all(t.result == {"ran_by": by_runner[t.id]} for t in tasks)


async def test_a_submission_wakes_an_idle_worker_at_once_not_at_the_next_poll(
    harness: Harness,
) -> None:
    queue = harness.queue()
    arrivals: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def handler(task: Task) -> dict[str, Any]:
        arrivals.put_nowait((task.id, time.monotonic()))
        return {}

    await harness.start(queue, handler, concurrency=1, poll_interval=30.0)
    await asyncio.sleep(0.3)  # the first claim found nothing: the worker now sleeps 30 s
    latencies = []
    for n in range(3):
        submitted = time.monotonic()
        task_id = await queue.asubmit(OWNER, {"n": n})
        started_id, started_at = await asyncio.wait_for(arrivals.get(), timeout=5)
        assert started_id == task_id
        latencies.append(started_at - submitted)
        await asyncio.sleep(0.1)
    assert max(latencies) < 1.0, latencies


async def test_graceful_stop_returns_unfinished_tasks_and_new_workers_finish_them(
    harness: Harness,
) -> None:
    queue = harness.queue()
    never = asyncio.Event()
    cancelled = 0

    async def stuck(task: Task) -> dict[str, Any]:
        nonlocal cancelled
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return {}

    ids = [await queue.asubmit(OWNER, {"n": n}) for n in range(4)]
    workers = await harness.start(queue, stuck, concurrency=2, poll_interval=0.2)
    await eventually(lambda: workers.active == 2)
    began = time.monotonic()
    await workers.stop(grace=0.3)
    assert time.monotonic() - began < 3
    assert cancelled == 2
    rows = [harness.row(i) for i in ids]
    assert all(r["status"] == "pending" and r["attempts"] == 0 for r in rows)
    assert all(r["claim_token"] is None and r["started_at"] is None for r in rows)

    async def quick(task: Task) -> dict[str, Any]:
        return {"n": task.payload["n"]}

    await harness.start(harness.queue(), quick, concurrency=2, poll_interval=0.2)
    tasks = await all_finished(queue, ids)
    assert all(t.status == "done" and t.attempts == 1 for t in tasks)


async def test_stop_lets_handlers_that_finish_within_the_grace_period_finish(
    harness: Harness,
) -> None:
    queue = harness.queue()

    async def slow(task: Task) -> dict[str, Any]:
        await asyncio.sleep(0.4)
        return {"finished": True}

    ids = [await queue.asubmit(OWNER, {"n": n}) for n in range(3)]
    workers = await harness.start(queue, slow, concurrency=2, poll_interval=0.2)
    await eventually(lambda: workers.active == 2)
    await workers.stop(grace=5)
    rows = [harness.row(i) for i in ids]
    assert [r["status"] for r in rows] == ["done", "done", "pending"]
    assert rows[0]["result"] == {"finished": True}


async def test_a_running_task_keeps_its_lease_and_stops_when_it_loses_it(
    harness: Harness,
) -> None:
    queue = harness.queue(task_lease_seconds=5)  # renewed every 5/3 s
    release = asyncio.Event()
    outcome: list[str] = []

    async def handler(task: Task) -> dict[str, Any]:
        try:
            await release.wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        return {}

    kept = await queue.asubmit(OWNER, {"n": 1})
    workers = await harness.start(queue, handler, concurrency=2, poll_interval=0.2)
    await eventually(lambda: workers.active == 1)
    leased = harness.row(kept)["lease_until"]
    await asyncio.sleep(5.5)  # past the first lease: renewed, so nobody else may take it
    assert harness.row(kept)["lease_until"] > leased
    assert await harness.queue(task_lease_seconds=5).aclaim() is None

    lost = await queue.asubmit(OWNER, {"n": 2})
    await eventually(lambda: workers.active == 2)
    harness.sql(  # another worker re-claimed it (its lease had run out)
        "UPDATE tasks SET claim_token = gen_random_uuid() WHERE id = %s", (lost,)
    )
    await eventually(lambda: outcome == ["cancelled"], timeout=5)
    row = harness.row(lost)
    assert row["status"] == "running" and row["result"] is None  # left to the new holder

    release.set()
    (task,) = await all_finished(queue, [kept])
    assert task.status == "done" and task.attempts == 1


# ---------------------------------------------------------------------- retention --------
async def test_results_expire_after_retention_and_workers_purge_them(harness: Harness) -> None:
    queue = harness.queue(task_retention_seconds=60)
    old, recent, waiting = [await queue.asubmit(OWNER, {"n": n}) for n in range(3)]
    for _ in range(2):
        claim = await queue.aclaim()
        assert claim is not None
        assert await queue.acomplete(claim, {"n": claim.task.payload["n"]})
    harness.sql(
        "UPDATE tasks SET finished_at = now() - interval '61 seconds' WHERE id = %s", (old,)
    )
    assert await queue.aget(OWNER, old) is None  # expired before any purge
    assert await queue.aget(OWNER, recent) is not None
    assert await queue.apurge() == 1
    assert {r[0] for r in harness.sql("SELECT id FROM tasks")} == {recent, waiting}

    harness.sql(
        "UPDATE tasks SET finished_at = now() - interval '2 minutes' WHERE id = %s", (recent,)
    )

    async def handler(task: Task) -> dict[str, Any]:
        return {}

    await harness.start(queue, handler, concurrency=1, poll_interval=0.2)
    await eventually(lambda: harness.sql("SELECT id FROM tasks") == [(waiting,)])
    # the waiting task ran; it stays for its retention period
    (task,) = await all_finished(queue, [waiting])
    assert task.status == "done"


# ---------------------------------------------------------------------- other processes --
class WorkerProcess:
    """tests/gateway/task_worker_process.py with its stdout read line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: thread_queue.Queue[str] = thread_queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    async def expect(self, prefix: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = await asyncio.to_thread(self.lines.get, timeout=0.2)
            except thread_queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line
        if self.proc.poll() is None:
            self.proc.kill()
        assert self.proc.stderr is not None
        raise AssertionError(f"worker process never said {prefix!r}: {self.proc.stderr.read()}")

    def kill(self) -> None:
        """Make sure it is gone and its pipes are closed."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def worker_env(postgres_url: str, schema_name: str, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        FENGCHAO_DATABASE_URL=postgres_url,
        FENGCHAO_DATABASE_SCHEMA=schema_name,
        FENGCHAO_DATA_DIR=str(tmp_path / "worker-data"),
        FENGCHAO_TASK_LEASE_SECONDS="5",
    )


async def test_a_task_of_a_killed_worker_process_is_finished_once_by_another(
    harness: Harness, worker_env: dict[str, str]
) -> None:
    queue = harness.queue(task_lease_seconds=5)
    interrupted = await queue.asubmit(OWNER, {"n": 1})
    waiting = await queue.asubmit(OWNER, {"n": 2})
    process = WorkerProcess(worker_env)
    try:
        await process.expect("ready")
        assert await process.expect("started") == f"started {interrupted}"
        process.proc.send_signal(signal.SIGKILL)
        process.proc.wait(10)
    finally:
        process.kill()
    killed_at = time.monotonic()
    assert harness.row(interrupted)["status"] == "running"

    ran: dict[str, float] = {}

    async def handler(task: Task) -> dict[str, Any]:
        assert task.id not in ran, "a task ran twice in this process"
        ran[task.id] = time.monotonic()
        return {"ran_by": "survivor", "attempt": task.attempts}

    await harness.start(queue, handler, concurrency=2, poll_interval=0.3)
    tasks = {t.id: t for t in await all_finished(queue, [interrupted, waiting])}
    assert tasks[waiting].result == {"ran_by": "survivor", "attempt": 1}
    assert ran[waiting] - killed_at < 2  # pending work is picked up at once
    # the interrupted task waited for its lease (renewed at most 5/3 s before the kill) ...
    assert ran[interrupted] - killed_at > 2.5
    # ... then ran again from the start, once, and completed once
    assert tasks[interrupted].status == "done" and tasks[interrupted].attempts == 2
    assert tasks[interrupted].result == {"ran_by": "survivor", "attempt": 2}


async def test_a_worker_process_stopped_with_sigterm_hands_its_task_back(
    harness: Harness, worker_env: dict[str, str]
) -> None:
    queue = harness.queue(task_lease_seconds=5)
    task_id = await queue.asubmit(OWNER, {"n": 1})
    process = WorkerProcess(worker_env)
    try:
        await process.expect("ready")
        await process.expect("started")
        process.proc.send_signal(signal.SIGTERM)
        await process.expect("stopped")
        assert process.proc.wait(10) == 0
    finally:
        process.kill()
    row = harness.row(task_id)
    assert (row["status"], row["attempts"], row["claim_token"]) == ("pending", 0, None)

    async def handler(task: Task) -> dict[str, Any]:
        return {"attempt": task.attempts}

    began = time.monotonic()
    await harness.start(queue, handler, concurrency=1, poll_interval=0.3)
    (task,) = await all_finished(queue, [task_id])
    assert time.monotonic() - began < 2  # no lease to wait for
    assert task.status == "done" and task.result == {"attempt": 1}
