"""Usage reports (api消费统计) over the ``usage_events`` table: one query builder for the
``/aigc/usage`` route, the usage page and ``fengchao usage``.

A report sums the calls that *ended* in ``[since, until)`` (UTC), grouped by model, key,
day or hour, optionally filtered by model, key and front door.  Two things are enforced
here rather than in the front ends, so no front end can get them wrong:

* **confinement**: a non-admin :class:`Viewer` only ever sees its own key's rows; asking for
  another key is a :class:`UsageAccessError`, not a silently empty report;
* **units**: costs are summed per unit (CNY and USD), never into one figure.

Every value the caller gives is a bound parameter; the SQL fragments (the grouping
expression, the filters) come from fixed tables in this module, chosen by validated names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar, get_args

from psycopg import sql

from fengchao_chains.db import Database
from fengchao_chains.errors import FengchaoError

GroupBy = Literal["model", "key", "day", "hour"]
FrontDoor = Literal["aigc", "langserve", "v1", "task"]
Bucket = Literal["hour", "day"]

GROUPINGS: tuple[GroupBy, ...] = get_args(GroupBy)
FRONT_DOORS: tuple[FrontDoor, ...] = get_args(FrontDoor)
UNITS = ("CNY", "USD")
"""The units of ``usage_events.unit`` (its CHECK): each is summed on its own."""

DEFAULT_RANGE = timedelta(days=7)
MAX_HOURLY_RANGE = timedelta(days=31)
"""Grouping by hour is for short ranges: a month is 744 rows already."""
HOURLY_SERIES_UP_TO = timedelta(days=2)
"""The chart's buckets are hours for ranges up to this long, days beyond."""
MAX_SERIES_BUCKETS = 1000
FILTER_MAX_CHARS = 256  # the table's CHECK on model and api_key
_RELATIVE = re.compile(r"^(\d{1,5})([hd])$")
_Choice = TypeVar("_Choice", bound=str)


class UsageQueryError(FengchaoError, ValueError):
    """A report that cannot be asked for: bad time, range, grouping or filter.  The message
    says which parameter and what is accepted."""


class UsageAccessError(FengchaoError):
    """A non-admin key asking for another key's usage."""


@dataclass(frozen=True)
class Viewer:
    """Who reads a report: an admin sees every key, anyone else only ``api_key``."""

    api_key: str | None
    admin: bool = False


OPERATOR = Viewer(api_key=None, admin=True)
"""The operator at the console (``fengchao usage``): sees every key."""


# --------------------------------------------------------------------------- the query ---
@dataclass(frozen=True)
class UsageQuery:
    """A validated report request: times are aware UTC datetimes, ``since < until``."""

    since: datetime
    until: datetime
    group_by: GroupBy = "model"
    model: str | None = None
    api_key: str | None = None
    front_door: FrontDoor | None = None

    @classmethod
    def parse(
        cls,
        *,
        since: str | None = None,
        until: str | None = None,
        group_by: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        front_door: str | None = None,
        now: datetime | None = None,
    ) -> UsageQuery:
        """The query from text as the front ends receive it (blank is the same as absent).

        ``since`` and ``until`` are ISO dates (``2026-11-01``: a date as ``until`` means up
        to the end of that day), ISO times (UTC unless they carry an offset), or a relative
        ``<n>h`` / ``<n>d`` before now.  The defaults: the last 7 days, grouped by model.
        """
        current = (now or datetime.now(UTC)).astimezone(UTC)
        end = _parse_time("until", until, current, end=True) if _given(until) else current
        start = (
            _parse_time("since", since, current, end=False)
            if _given(since)
            else _minus(end, DEFAULT_RANGE)
        )
        if start >= end:
            raise UsageQueryError(
                f"since ({start.isoformat()}) must be before until ({end.isoformat()})"
            )
        grouping = _choice("group_by", group_by, GROUPINGS) if _given(group_by) else "model"
        if grouping == "hour" and end - start > MAX_HOURLY_RANGE:
            raise UsageQueryError(
                f"group_by=hour is for ranges up to {MAX_HOURLY_RANGE.days} days;"
                " use group_by=day for longer ones"
            )
        door = _choice("front_door", front_door, FRONT_DOORS) if _given(front_door) else None
        return cls(
            since=start,
            until=end,
            group_by=grouping,
            model=_filter("model", model),
            api_key=_filter("key", api_key),
            front_door=door,
        )

    def seen_by(self, viewer: Viewer) -> UsageQuery:
        """This query as ``viewer`` may run it: a non-admin is confined to its own key."""
        if viewer.admin:
            return self
        if viewer.api_key is None:
            raise UsageAccessError("a report needs a key or an admin viewer")
        if self.api_key is not None and self.api_key != viewer.api_key:
            raise UsageAccessError("a key sees only its own usage (an admin key sees every key's)")
        return replace(self, api_key=viewer.api_key)

    def filters(self) -> dict[str, str]:
        """The filters in force, by parameter name (for answers and headings)."""
        given = {"model": self.model, "key": self.api_key, "front_door": self.front_door}
        return {name: value for name, value in given.items() if value is not None}

    @property
    def bucket(self) -> Bucket:
        """The chart's bucket for this range."""
        return "hour" if self.until - self.since <= HOURLY_SERIES_UP_TO else "day"


def _given(value: str | None) -> bool:
    return value is not None and value.strip() != ""


def _minus(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment - delta
    except OverflowError:
        raise UsageQueryError("the time range reaches before the year 1") from None


def _parse_time(name: str, value: str | None, now: datetime, *, end: bool) -> datetime:
    text = (value or "").strip()
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = int(relative[1]), relative[2]
        return _minus(now, timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        if not end:
            return start
        try:
            return start + timedelta(days=1)
        except OverflowError:
            raise UsageQueryError(f"{name}: {text} is past the last representable day") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageQueryError(
            f"{name} must be an ISO date (2026-11-01), an ISO time (2026-11-01T08:00:00Z;"
            " in a URL write + as %2B) or a relative <n>h / <n>d"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise UsageQueryError(f"{name}: {text} is out of range in UTC") from None


def _choice(name: str, value: str | None, allowed: tuple[_Choice, ...]) -> _Choice:
    text = (value or "").strip()
    for option in allowed:
        if text == option:
            return option
    raise UsageQueryError(f"{name} must be one of {', '.join(allowed)}")


def _filter(name: str, value: str | None) -> str | None:
    if not _given(value):
        return None
    text = (value or "").strip()
    if len(text) > FILTER_MAX_CHARS:
        raise UsageQueryError(f"{name} has at most {FILTER_MAX_CHARS} characters")
    return text


# --------------------------------------------------------------------------- results -----
@dataclass(frozen=True)
class UsageFigures:
    """The sums over a set of calls.  ``cost`` has one entry per unit that was used."""

    requests: int
    errors: int
    aborted: int
    prompt_tokens: int
    completion_tokens: int
    estimated_tokens: int
    """Tokens of calls whose counts are tokenizer estimates (the vendor reported none)."""
    cost: dict[str, Decimal]
    p50_latency_ms: float | None
    p50_ttft_ms: float | None
    """Median time to first token, over streamed calls only."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "aborted": self.aborted,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "estimated_tokens": self.estimated_tokens,
            "cost": {unit: float(value) for unit, value in self.cost.items()},
            "p50_latency_ms": _rounded(self.p50_latency_ms),
            "p50_ttft_ms": _rounded(self.p50_ttft_ms),
        }


@dataclass(frozen=True)
class UsageRow:
    """One group: a model id, an api_key (with the key's ``name``), a day ``2026-11-01``
    or an hour ``2026-11-01T08:00Z``."""

    group: str
    name: str | None
    figures: UsageFigures

    def as_json(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, **self.figures.as_json()}


@dataclass(frozen=True)
class UsageReport:
    query: UsageQuery
    rows: list[UsageRow]
    total: UsageFigures

    def as_json(self) -> dict[str, Any]:
        return {
            **_range_json(self.query),
            "group_by": self.query.group_by,
            "rows": [row.as_json() for row in self.rows],
            "total": self.total.as_json(),
        }


@dataclass(frozen=True)
class ModelSeries:
    """One model's tokens per bucket, and its cost per bucket in each unit it was billed in."""

    model: str
    tokens: list[int]
    cost: dict[str, list[Decimal]]


@dataclass(frozen=True)
class UsageSeries:
    """Tokens and cost per model over time, every bucket present (zeros where idle)."""

    query: UsageQuery
    bucket: Bucket
    starts: list[datetime]
    series: list[ModelSeries]

    def as_json(self) -> dict[str, Any]:
        return {
            **_range_json(self.query),
            "bucket": self.bucket,
            "buckets": [_iso(start) for start in self.starts],
            "series": [
                {
                    "model": one.model,
                    "tokens": one.tokens,
                    "cost": {unit: [float(v) for v in values] for unit, values in one.cost.items()},
                }
                for one in self.series
            ],
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _range_json(query: UsageQuery) -> dict[str, Any]:
    return {"since": _iso(query.since), "until": _iso(query.until), "filters": query.filters()}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --------------------------------------------------------------------------- SQL ---------
_GROUP_EXPRESSIONS: dict[GroupBy, sql.Composable] = {
    "model": sql.SQL("u.model"),
    "key": sql.SQL("u.api_key"),
    "day": sql.SQL("to_char(u.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
    "hour": sql.SQL("""to_char(u.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":00Z"')"""),
}
_FIGURES = sql.SQL(
    "count(*), count(*) FILTER (WHERE u.status = 'error'),"
    " count(*) FILTER (WHERE u.status = 'aborted'),"
    " coalesce(sum(u.prompt_tokens), 0)::bigint, coalesce(sum(u.completion_tokens), 0)::bigint,"
    " coalesce(sum(u.prompt_tokens::bigint + u.completion_tokens)"
    " FILTER (WHERE u.estimated), 0)::bigint,"
    " {costs},"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY u.latency_ms),"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY u.ttft_ms)"
).format(
    costs=sql.SQL(", ").join(
        sql.SQL(
            "count(*) FILTER (WHERE u.unit = {unit}), sum(u.cost) FILTER (WHERE u.unit = {unit})"
        ).format(unit=sql.Literal(unit))
        for unit in UNITS
    )
)


def _where(query: UsageQuery) -> tuple[sql.Composed, dict[str, Any]]:
    conditions: list[sql.Composable] = [
        sql.SQL("u.ended_at >= %(since)s"),
        sql.SQL("u.ended_at < %(until)s"),
    ]
    params: dict[str, Any] = {"since": query.since, "until": query.until}
    for column, value in (
        ("model", query.model),
        ("api_key", query.api_key),
        ("front_door", query.front_door),
    ):
        if value is not None:
            conditions.append(
                sql.SQL("u.{} = %({})s").format(sql.Identifier(column), sql.SQL(column))
            )
            params[column] = value
    return sql.SQL(" AND ").join(conditions), params


def report_sql(query: UsageQuery) -> tuple[sql.Composed, dict[str, Any]]:
    """The report's one statement: the groups and, as the empty grouping set, the total."""
    where, params = _where(query)
    group = _GROUP_EXPRESSIONS[query.group_by]
    chronological = query.group_by in ("day", "hour")
    order = (
        sql.SQL("GROUPING(grp), grp")
        if chronological
        # the most tokens first
        else sql.SQL(
            "GROUPING(grp), coalesce(sum(u.prompt_tokens::bigint + u.completion_tokens), 0) DESC,"
            " grp"
        )
    )
    statement = sql.SQL(
        "SELECT GROUPING(grp), grp, {name}, {figures} FROM ("
        " SELECT u.*, {group} AS grp FROM usage_events u WHERE {where}) AS u"
        " {join} GROUP BY GROUPING SETS ((grp), ()) ORDER BY {order}"
    ).format(
        name=sql.SQL("min(k.name)") if query.group_by == "key" else sql.SQL("NULL::text"),
        figures=_FIGURES,
        group=group,
        where=where,
        join=(
            sql.SQL("LEFT JOIN api_keys k ON k.api_key = u.api_key")
            if query.group_by == "key"
            else sql.SQL("")
        ),
        order=order,
    )
    return statement, params


def series_sql(query: UsageQuery) -> tuple[sql.Composed, dict[str, Any]]:
    """Tokens and cost per bucket, model and unit (idle buckets are filled in afterwards)."""
    where, params = _where(query)
    statement = sql.SQL(
        "SELECT date_trunc(%(bucket)s, u.ended_at, 'UTC') AS start, u.model, u.unit,"
        " sum(u.prompt_tokens::bigint + u.completion_tokens)::bigint, sum(u.cost)"
        " FROM usage_events u WHERE {where} GROUP BY 1, 2, 3 ORDER BY 2, 1, 3"
    ).format(where=where)
    return statement, params | {"bucket": query.bucket}


def _figures(row: tuple[Any, ...]) -> UsageFigures:
    requests, errors, aborted, prompt, completion, estimated, *rest = row
    *costs, p50_latency, p50_ttft = rest
    cost = {
        unit: Decimal(costs[2 * i + 1] or 0).normalize()
        for i, unit in enumerate(UNITS)
        if costs[2 * i]
    }
    return UsageFigures(
        requests=requests,
        errors=errors,
        aborted=aborted,
        prompt_tokens=prompt,
        completion_tokens=completion,
        estimated_tokens=estimated,
        cost=cost,
        p50_latency_ms=p50_latency,
        p50_ttft_ms=p50_ttft,
    )


def _report(query: UsageQuery, rows: list[tuple[Any, ...]]) -> UsageReport:
    groups = [UsageRow(str(row[1]), row[2], _figures(row[3:])) for row in rows if not row[0]]
    totals = [_figures(row[3:]) for row in rows if row[0]]
    return UsageReport(query=query, rows=groups, total=totals[0] if totals else _NOTHING)


_NOTHING = UsageFigures(0, 0, 0, 0, 0, 0, {}, None, None)


def bucket_starts(query: UsageQuery) -> list[datetime]:
    """Every bucket that overlaps ``[since, until)``, the first one truncated down."""
    step = timedelta(hours=1) if query.bucket == "hour" else timedelta(days=1)
    since = query.since.astimezone(UTC)
    first = (
        since.replace(minute=0, second=0, microsecond=0)
        if query.bucket == "hour"
        else since.replace(hour=0, minute=0, second=0, microsecond=0)
    )
    count = -(-(query.until - first) // step)  # ceiling division
    if count > MAX_SERIES_BUCKETS:
        raise UsageQueryError(
            f"the chart shows at most {MAX_SERIES_BUCKETS} {query.bucket}s; choose a shorter range"
        )
    return [first + i * step for i in range(count)]


def _series(query: UsageQuery, starts: list[datetime], rows: list[tuple[Any, ...]]) -> UsageSeries:
    index = {start: i for i, start in enumerate(starts)}
    by_model: dict[str, ModelSeries] = {}
    for start, model, unit, tokens, cost in rows:
        one = by_model.setdefault(model, ModelSeries(model, [0] * len(starts), {}))
        slot = index[start.astimezone(UTC)]
        one.tokens[slot] += tokens
        values = one.cost.setdefault(unit, [Decimal(0)] * len(starts))
        values[slot] = (values[slot] + cost).normalize()
    return UsageSeries(
        query=query, bucket=query.bucket, starts=starts, series=list(by_model.values())
    )


# --------------------------------------------------------------------------- the reports -
class UsageReports:
    """Runs reports on the database (sync for the CLI, async for the server)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def report(self, query: UsageQuery, *, viewer: Viewer) -> UsageReport:
        query = query.seen_by(viewer)
        statement, params = report_sql(query)
        with self.database.pool.connection() as conn:
            rows = conn.execute(statement, params).fetchall()
        return _report(query, rows)

    async def areport(self, query: UsageQuery, *, viewer: Viewer) -> UsageReport:
        query = query.seen_by(viewer)
        statement, params = report_sql(query)
        async with self.database.async_pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            rows = await cursor.fetchall()
        return _report(query, rows)

    def series(self, query: UsageQuery, *, viewer: Viewer) -> UsageSeries:
        query = query.seen_by(viewer)
        starts = bucket_starts(query)
        statement, params = series_sql(query)
        with self.database.pool.connection() as conn:
            rows = conn.execute(statement, params).fetchall()
        return _series(query, starts, rows)

    async def aseries(self, query: UsageQuery, *, viewer: Viewer) -> UsageSeries:
        query = query.seen_by(viewer)
        starts = bucket_starts(query)
        statement, params = series_sql(query)
        async with self.database.async_pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            rows = await cursor.fetchall()
        return _series(query, starts, rows)
