"""Usage reports over rows written straight into ``usage_events`` (the recording side's
contract), on real PostgreSQL: exact sums per group, ranges and their edges, confinement of
a non-admin key, CNY and USD kept apart, the chart's series, and refused parameters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fengchao_chains.db import Database
from fengchao_chains.gateway.usage_reports import (
    OPERATOR,
    UsageAccessError,
    UsageQuery,
    UsageQueryError,
    UsageReports,
    Viewer,
)

ALICE, BOB = "fc-alice", "fc-bob"
GPT, GLM = "gpt-3.5-turbo", "glm-4"  # billed in USD and in CNY
T0 = datetime(2026, 3, 2, 10, 15, tzinfo=UTC)
RANGE = {"since": "2026-03-01", "until": "2026-03-04"}


def event(
    *,
    api_key: str = ALICE,
    model: str = GPT,
    ended_at: datetime = T0,
    prompt: int = 10,
    completion: int = 20,
    cost: str = "0.001",
    unit: str = "USD",
    status: str = "ok",
    front_door: str = "aigc",
    latency_ms: float = 100.0,
    ttft_ms: float | None = None,
    estimated: bool = False,
) -> dict[str, Any]:
    """One usage_events row as the recorder writes it."""
    return {
        "run_id": uuid.uuid4(),
        "api_key": api_key,
        "model": model,
        "front_door": front_door,
        "started_at": ended_at - timedelta(milliseconds=latency_ms),
        "ended_at": ended_at,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "streamed": ttft_ms is not None,
        "status": status,
        "error": "boom" if status == "error" else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "estimated": estimated,
        "cost": Decimal(cost),
        "unit": unit,
    }


def insert_usage(conn: psycopg.Connection[Any], events: Iterable[dict[str, Any]]) -> None:
    """Write rows into usage_events (``conn`` has the project schema on its search_path)."""
    columns = list(event())
    with conn.cursor() as cursor:
        cursor.executemany(
            sql.SQL("INSERT INTO usage_events ({}) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() for _ in columns),
            ),
            [tuple(row[c] for c in columns) for row in events],
        )
    conn.commit()


def insert(database: Database, *events: dict[str, Any]) -> None:
    with database.pool.connection() as conn:
        insert_usage(conn, events)


@pytest.fixture
def reports(database: Database) -> UsageReports:
    return UsageReports(database)


@pytest.fixture
def sample(database: Database) -> None:
    """Alice: 3 GPT calls (USD) and 1 GLM call (CNY) on 2 March, 1 GPT call on 3 March;
    Bob: 2 GLM calls on 2 March; plus calls outside the range on both sides."""
    insert(
        database,
        event(prompt=10, completion=20, cost="0.0012", latency_ms=100),
        event(
            prompt=5,
            completion=7,
            cost="0.0003",
            status="aborted",
            latency_ms=300,
            ttft_ms=40,
            estimated=True,
        ),
        event(prompt=1, completion=0, cost="0", status="error", latency_ms=200, front_door="v1"),
        event(model=GLM, unit="CNY", prompt=100, completion=50, cost="0.015", latency_ms=50),
        event(ended_at=T0 + timedelta(days=1), prompt=3, completion=4, cost="0.0001"),
        event(api_key=BOB, model=GLM, unit="CNY", prompt=7, completion=8, cost="0.002"),
        event(
            api_key=BOB,
            model=GLM,
            unit="CNY",
            prompt=9,
            completion=1,
            cost="0.0005",
            front_door="langserve",
        ),
        event(ended_at=datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC), prompt=1000),
        event(ended_at=datetime(2026, 3, 5, 0, 0, tzinfo=UTC), prompt=1000),
    )


def query(**given: Any) -> UsageQuery:
    merged: dict[str, Any] = RANGE | given
    return UsageQuery.parse(**merged)


def figures(report_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["group"]: row for row in report_json["rows"]}


# --------------------------------------------------------------------------- sums --------
@pytest.mark.usefixtures("sample")
def test_grouped_by_model_the_admin_sees_exact_sums_per_model_and_unit(
    reports: UsageReports,
) -> None:
    report = reports.report(query(), viewer=OPERATOR).as_json()
    rows = figures(report)
    assert list(rows) == [GLM, GPT]  # most tokens first: 175 against 50
    assert rows[GPT] | {"group": GPT} == {
        "group": GPT,
        "name": None,
        "requests": 4,
        "errors": 1,
        "aborted": 1,
        "prompt_tokens": 19,
        "completion_tokens": 31,
        "total_tokens": 50,
        "estimated_tokens": 12,
        "cost": {"USD": 0.0016},
        "p50_latency_ms": 150.0,  # median of 100, 300, 200, 100
        "p50_ttft_ms": 40.0,
    }
    assert rows[GLM]["requests"] == 3
    assert rows[GLM]["total_tokens"] == 175
    assert rows[GLM]["cost"] == {"CNY": 0.0175}
    assert report["total"]["requests"] == 7
    assert report["total"]["total_tokens"] == 225
    assert report["total"]["cost"] == {"CNY": 0.0175, "USD": 0.0016}  # never summed together
    assert report["since"] == "2026-03-01T00:00:00Z"
    assert report["until"] == "2026-03-05T00:00:00Z"  # a date as until: to its end


@pytest.mark.usefixtures("sample")
def test_costs_are_exact_decimals(reports: UsageReports) -> None:
    report = reports.report(query(group_by="key"), viewer=OPERATOR)
    alice = next(row for row in report.rows if row.group == ALICE)
    assert alice.figures.cost == {"CNY": Decimal("0.015"), "USD": Decimal("0.0016")}
    assert report.total.cost == {"CNY": Decimal("0.0175"), "USD": Decimal("0.0016")}


@pytest.mark.usefixtures("sample")
def test_grouped_by_key_with_names_and_both_units_apart(
    reports: UsageReports, database: Database
) -> None:
    with database.pool.connection() as conn:
        conn.execute(
            "INSERT INTO api_keys (api_key, name, secret_ciphertext) VALUES (%s, 'Alice', 'x')",
            (ALICE,),
        )
    rows = figures(reports.report(query(group_by="key"), viewer=OPERATOR).as_json())
    assert list(rows) == [ALICE, BOB]
    assert rows[ALICE]["name"] == "Alice" and rows[BOB]["name"] is None
    assert rows[ALICE]["requests"] == 5
    assert rows[ALICE]["total_tokens"] == 50 + 150
    assert rows[ALICE]["cost"] == {"CNY": 0.015, "USD": 0.0016}
    assert rows[BOB]["cost"] == {"CNY": 0.0025}
    assert rows[BOB]["total_tokens"] == 25


@pytest.mark.usefixtures("sample")
def test_grouped_by_day_and_hour_in_time_order(reports: UsageReports) -> None:
    days = reports.report(query(group_by="day"), viewer=OPERATOR).as_json()
    assert [(r["group"], r["requests"], r["total_tokens"]) for r in days["rows"]] == [
        ("2026-03-02", 6, 218),
        ("2026-03-03", 1, 7),
    ]
    hours = reports.report(query(group_by="hour"), viewer=OPERATOR).as_json()
    assert [r["group"] for r in hours["rows"]] == ["2026-03-02T10:00Z", "2026-03-03T10:00Z"]


@pytest.mark.usefixtures("sample")
def test_the_range_includes_since_and_excludes_until(
    reports: UsageReports, database: Database
) -> None:
    edge = datetime(2026, 3, 1, tzinfo=UTC)
    insert(database, event(ended_at=edge, prompt=1, completion=1))
    at_since = UsageQuery.parse(since=edge.isoformat(), until="2026-03-01T00:00:01Z")
    assert reports.report(at_since, viewer=OPERATOR).total.requests == 1
    before = UsageQuery.parse(since="2026-02-28T12:00:00", until=edge.isoformat())
    assert reports.report(before, viewer=OPERATOR).total.prompt_tokens == 1000  # 23:59:59 only
    offset = UsageQuery.parse(since="2026-03-02T18:00:00+08:00", until="2026-03-02T19:00+08:00")
    assert offset.since == T0.replace(hour=10, minute=0)  # an offset is converted to UTC
    assert reports.report(offset, viewer=OPERATOR).total.requests == 6


@pytest.mark.usefixtures("sample")
def test_filters_by_model_key_and_front_door(reports: UsageReports) -> None:
    by_model = reports.report(query(model=GLM, group_by="key"), viewer=OPERATOR)
    assert [(r.group, r.figures.requests) for r in by_model.rows] == [(ALICE, 1), (BOB, 2)]
    by_key = reports.report(query(api_key=BOB), viewer=OPERATOR)
    assert by_key.total.requests == 2 and by_key.total.cost == {"CNY": Decimal("0.0025")}
    by_door = reports.report(query(front_door="langserve"), viewer=OPERATOR)
    assert by_door.total.requests == 1 and by_door.total.prompt_tokens == 9
    assert by_door.as_json()["filters"] == {"front_door": "langserve"}


@pytest.mark.usefixtures("sample")
def test_filter_values_are_bound_not_spliced(reports: UsageReports) -> None:
    sneaky = reports.report(query(model="x' OR '1'='1"), viewer=OPERATOR)
    assert sneaky.rows == [] and sneaky.total.requests == 0 and sneaky.total.cost == {}


def test_an_empty_range_is_an_empty_report(reports: UsageReports) -> None:
    report = reports.report(query(), viewer=OPERATOR).as_json()
    assert report["rows"] == []
    assert report["total"]["requests"] == 0 and report["total"]["cost"] == {}
    assert report["total"]["p50_latency_ms"] is None


# --------------------------------------------------------------------------- who sees ----
@pytest.mark.usefixtures("sample")
def test_a_key_sees_only_its_own_usage(reports: UsageReports) -> None:
    bob = Viewer(api_key=BOB)
    report = reports.report(query(group_by="key"), viewer=bob)
    assert [row.group for row in report.rows] == [BOB]
    assert report.total.requests == 2
    assert reports.report(query(api_key=BOB), viewer=bob).total.requests == 2
    by_model = reports.report(query(), viewer=bob)
    assert [(r.group, r.figures.requests) for r in by_model.rows] == [(GLM, 2)]
    with pytest.raises(UsageAccessError, match="only its own usage"):
        reports.report(query(api_key=ALICE), viewer=bob)
    with pytest.raises(UsageAccessError):
        reports.series(query(api_key=ALICE), viewer=bob)
    series = reports.series(query(), viewer=bob)
    assert [one.model for one in series.series] == [GLM]
    assert sum(series.series[0].tokens) == 25


@pytest.mark.usefixtures("sample")
def test_an_admin_key_sees_every_key_and_may_filter_by_one(reports: UsageReports) -> None:
    admin = Viewer(api_key="fc-admin", admin=True)
    assert reports.report(query(), viewer=admin).total.requests == 7
    assert reports.report(query(api_key=ALICE), viewer=admin).total.requests == 5


def test_a_viewer_without_a_key_or_admin_is_refused(reports: UsageReports) -> None:
    with pytest.raises(UsageAccessError):
        reports.report(query(), viewer=Viewer(api_key=None))


# --------------------------------------------------------------------------- series ------
@pytest.mark.usefixtures("sample")
def test_series_has_every_day_bucket_with_tokens_and_cost_per_model(
    reports: UsageReports,
) -> None:
    series = reports.series(query(), viewer=OPERATOR).as_json()
    assert series["bucket"] == "day"
    assert series["buckets"] == [
        "2026-03-01T00:00:00Z",
        "2026-03-02T00:00:00Z",
        "2026-03-03T00:00:00Z",
        "2026-03-04T00:00:00Z",
    ]
    by_model = {one["model"]: one for one in series["series"]}
    assert by_model[GPT]["tokens"] == [0, 43, 7, 0]
    assert by_model[GPT]["cost"] == {"USD": [0.0, 0.0015, 0.0001, 0.0]}
    assert by_model[GLM]["tokens"] == [0, 175, 0, 0]
    assert by_model[GLM]["cost"] == {"CNY": [0.0, 0.0175, 0.0, 0.0]}


@pytest.mark.usefixtures("sample")
def test_series_of_a_short_range_is_hourly(reports: UsageReports) -> None:
    series = reports.series(
        UsageQuery.parse(since="2026-03-02T09:30:00Z", until="2026-03-02T12:00Z"),
        viewer=OPERATOR,
    )
    assert series.bucket == "hour"
    assert [start.hour for start in series.starts] == [9, 10, 11]  # the first one rounded down
    tokens = {one.model: one.tokens for one in series.series}
    assert tokens == {GPT: [0, 43, 0], GLM: [0, 175, 0]}


def test_series_longer_than_the_chart_takes_is_refused(reports: UsageReports) -> None:
    with pytest.raises(UsageQueryError, match="at most 1000 days"):
        reports.series(UsageQuery.parse(since="2020-01-01", until="2026-01-01"), viewer=OPERATOR)


# --------------------------------------------------------------------------- async -------
@pytest.fixture
async def async_reports(database: Database) -> AsyncIterator[UsageReports]:
    await database.open_async_pool()
    yield UsageReports(database)
    await database.close_async_pool()


@pytest.mark.usefixtures("sample")
async def test_async_reports_answer_the_same(async_reports: UsageReports) -> None:
    bob = Viewer(api_key=BOB)
    assert await async_reports.areport(query(), viewer=bob) == async_reports.report(
        query(), viewer=bob
    )
    assert await async_reports.aseries(query(), viewer=OPERATOR) == async_reports.series(
        query(), viewer=OPERATOR
    )


# --------------------------------------------------------------------------- parsing -----
NOW = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)


def test_defaults_are_the_last_seven_days_by_model() -> None:
    parsed = UsageQuery.parse(now=NOW)
    assert (parsed.since, parsed.until, parsed.group_by) == (NOW - timedelta(days=7), NOW, "model")
    blank = UsageQuery.parse(since=" ", until="", group_by="", model="", now=NOW)
    assert blank == parsed


def test_relative_times_count_back_from_now() -> None:
    assert UsageQuery.parse(since="24h", now=NOW).since == NOW - timedelta(hours=24)
    parsed = UsageQuery.parse(since="30d", until="1d", now=NOW)
    assert (parsed.since, parsed.until) == (NOW - timedelta(days=30), NOW - timedelta(days=1))
    assert UsageQuery.parse(since="2026-11-22T12:00", now=NOW).since == NOW - timedelta(hours=1)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"group_by": "api_key"}, "group_by must be one of model, key, day, hour"),
        ({"group_by": "model; DROP TABLE usage_events"}, "group_by must be one of"),
        ({"since": "yesterday"}, "since must be an ISO date"),
        ({"until": "2026-13-01"}, "until must be an ISO date"),
        ({"since": "2026-11-22", "until": "2026-11-21"}, "must be before until"),
        ({"since": "1d", "until": "1d"}, "must be before until"),
        ({"since": "2026-01-01", "group_by": "hour"}, "group_by=hour is for ranges up to 31"),
        ({"front_door": "mqtt"}, "front_door must be one of aigc, langserve, v1, task"),
        ({"model": "m" * 257}, "model has at most 256 characters"),
        ({"api_key": "k" * 257}, "key has at most 256 characters"),
        ({"until": "0001-01-02"}, "before the year 1"),
        ({"until": "9999-12-31"}, "past the last representable day"),
    ],
)
def test_bad_parameters_are_refused_with_a_clear_message(
    given: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageQueryError, match=message.replace("(", r"\(")):
        UsageQuery.parse(now=NOW, **given)
