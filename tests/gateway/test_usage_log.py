"""The usage log on a real PostgreSQL: records become rows exactly once, written behind in
batches, kept across a failed write, dropped (not retried forever) when the database
refuses their data, and flushed at the end of the server's flushing block."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from psycopg.rows import dict_row

from fengchao_chains.callbacks import UsageRecord
from fengchao_chains.catalog import load_catalog
from fengchao_chains.db import Database
from fengchao_chains.gateway.usage import UsageLog


def record(**fields: Any) -> UsageRecord:
    start = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "run_id": uuid.uuid4(),
        "caller": "fc-alpha",
        "model": "gpt-3.5-turbo",
        "front_door": "aigc",
        "started_at": start,
        "ended_at": start + timedelta(milliseconds=250),
        "latency_ms": 250.0,
        "ttft_ms": 40.5,
        "streamed": True,
        "status": "ok",
        "error": None,
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "estimated": False,
        "cost": 0.000123,
        "unit": "USD",
        "request_id": "req-1",
    }
    return UsageRecord(**(values | fields))


def rows(database: Database) -> list[dict[str, Any]]:
    with database.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute("SELECT * FROM usage_events ORDER BY id").fetchall()


@pytest_asyncio.fixture(loop_scope="function")
async def log(database: Database) -> AsyncIterator[UsageLog]:
    await database.open_async_pool()
    yield UsageLog(database, load_catalog())
    await database.close_async_pool()


async def test_records_become_rows_with_every_field(log: UsageLog, database: Database) -> None:
    first, second = record(), record(status="aborted", error="CancelledError", estimated=True)
    log.add(first)
    log.add(second)
    assert len(log) == 2 and rows(database) == []  # written behind, not at once
    assert await log.aflush() == 2
    assert len(log) == 0
    stored = rows(database)
    assert [row["run_id"] for row in stored] == [first.run_id, second.run_id]
    row = stored[0]
    assert row["api_key"] == "fc-alpha" and row["model"] == "gpt-3.5-turbo"
    assert row["front_door"] == "aigc" and row["status"] == "ok" and row["streamed"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 30)
    assert row["cost"] == Decimal("0.0001230000") and row["unit"] == "USD"
    assert row["latency_ms"] == 250.0 and row["ttft_ms"] == 40.5
    assert row["started_at"] == first.started_at and row["ended_at"] == first.ended_at
    assert row["request_id"] == "req-1" and row["error"] is None
    assert stored[1]["status"] == "aborted" and stored[1]["estimated"] is True


async def test_a_record_written_twice_is_one_row(log: UsageLog, database: Database) -> None:
    once = record()
    log.add(once)
    await log.aflush()
    log.add(once)  # a batch retried after its commit
    log.add(record())
    assert await log.aflush() == 2
    assert [row["run_id"] for row in rows(database)].count(once.run_id) == 1
    assert len(rows(database)) == 2


async def test_a_failed_write_keeps_the_records_for_the_next(
    log: UsageLog, database: Database
) -> None:
    kept = [record(), record()]
    for item in kept:
        log.add(item)
    await database.close_async_pool()  # the database cannot be reached
    with pytest.raises(Exception):  # noqa: B017 (the pool's closed error)
        await log.aflush()
    assert len(log) == 2
    await database.open_async_pool()
    log.add(later := record())
    assert await log.aflush() == 3
    assert [row["run_id"] for row in rows(database)] == [*(r.run_id for r in kept), later.run_id]


async def test_records_the_database_refuses_are_dropped_not_retried_forever(
    log: UsageLog, database: Database
) -> None:
    log.add(replace(record(), prompt_tokens=-1))  # breaks a CHECK: no retry can fix it
    with pytest.raises(Exception):  # noqa: B017 (psycopg's CheckViolation)
        await log.aflush()
    assert len(log) == 0
    log.add(good := record())
    assert await log.aflush() == 1
    assert [row["run_id"] for row in rows(database)] == [good.run_id]


async def test_flushing_writes_every_interval_and_at_the_end(
    log: UsageLog, database: Database
) -> None:
    async with log.flushing(interval=0.05):
        log.add(early := record())
        for _ in range(100):
            if rows(database):
                break
            await asyncio.sleep(0.02)
        assert [row["run_id"] for row in rows(database)] == [early.run_id]
        log.add(late := record())
    # the block's end flushed the last record without waiting for the interval
    assert [row["run_id"] for row in rows(database)] == [early.run_id, late.run_id]
