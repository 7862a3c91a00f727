"""Per-key rate limits and budgets on a real PostgreSQL: RPM, TPM reservations and settling,
budgets and their units, windows and periods rolling over (an injected clock), no queries for
keys without limits, and exactly the limit admitted under concurrency, in one process and
across three."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from fengchao_chains.db import Database
from fengchao_chains.errors import DatabaseError
from fengchao_chains.gateway.keys import KeyStore, UnknownKeyError
from fengchao_chains.gateway.limit_types import (
    Budget,
    KeyLimits,
    LimitsError,
    RateLimitExceeded,
    Reservation,
    period_bounds,
    window_start,
)
from fengchao_chains.gateway.limits import Limiter
from fengchao_chains.server.limits_http import aigc_rate_limit_response
from fengchao_chains.server.openai_v1_errors import openai_error
from fengchao_chains.settings import Settings
from fengchao_chains.testing.serve import serve_in_thread
from tests.processes import clean_env

NOON = datetime(2025, 3, 31, 12, 0, 15, tzinfo=UTC)


class Clock:
    """The limiter's ``now``: stands still until moved."""

    def __init__(self, at: datetime = NOON) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Harness:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.clock = Clock()
        self.keys = KeyStore(database, settings)

    def limiter(self, **changes: Any) -> Limiter:
        return Limiter(self.database, self.settings.model_copy(update=changes), now=self.clock)

    def key(self) -> str:
        return self.keys.create().api_key

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.database.pool.connection() as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def window(self, key: str) -> tuple[int, int] | None:
        rows = self.sql(
            "SELECT requests, tokens FROM rate_windows WHERE api_key = %s AND window_start = %s",
            (key, window_start(self.clock())),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def spent(self, key: str, period: str = "day") -> Decimal | None:
        rows = self.sql(
            "SELECT spent FROM budget_spend WHERE api_key = %s AND period = %s"
            " AND period_start = %s",
            (key, period, period_bounds(period, self.clock())[0]),
        )
        return rows[0][0] if rows else None


@pytest_asyncio.fixture(loop_scope="function")
async def harness(database: Database, settings: Settings) -> AsyncIterator[Harness]:
    await database.open_async_pool()
    yield Harness(database, settings)
    await database.close_async_pool()


async def admit(
    limiter: Limiter,
    key: str,
    *,
    prompt: int = 10,
    max_tokens: int | None = 10,
    cost: float = 0.0,
    unit: str = "CNY",
) -> Reservation | None:
    return await limiter.aadmit(
        key, prompt_tokens=prompt, max_tokens=max_tokens, cost_ceiling=cost, unit=unit
    )


async def refused(call: Callable[[], Any]) -> RateLimitExceeded:
    with pytest.raises(RateLimitExceeded) as caught:
        await call()
    return caught.value


# ---------------------------------------------------------------------------- RPM -------
async def test_admits_exactly_rpm_then_refuses_until_the_window_rolls_over(
    harness: Harness,
) -> None:
    key = harness.key()
    limiter = harness.limiter()
    limiter.set(key, rpm=3)
    for _ in range(3):
        assert await admit(limiter, key) is not None
    over = await refused(lambda: admit(limiter, key))
    assert (over.limit, over.retry_after, over.retry_helps) == ("rpm", 45, True)
    assert over.message == (
        "rate limit reached: 3 requests per minute for this API key; try again in 45 s"
    )
    assert harness.window(key) == (3, 60)  # the refusal counted nothing

    harness.clock.advance(44.5)  # 12:00:59.5: still the same window, half a second left
    assert (await refused(lambda: admit(limiter, key))).retry_after == 1
    harness.clock.advance(0.5)  # 12:01:00: a new window
    assert await admit(limiter, key) is not None
    assert harness.window(key) == (1, 20)


async def test_default_limits_apply_to_keys_without_their_own(harness: Harness) -> None:
    plain, own = harness.key(), harness.key()
    limiter = harness.limiter(default_rpm=2)
    limiter.set(own, rpm=None, tpm=None)  # explicitly unlimited
    for _ in range(2):
        await admit(limiter, plain)
    assert (await refused(lambda: admit(limiter, plain))).limit == "rpm"
    assert all([await admit(limiter, own) is None for _ in range(5)])
    assert harness.window(own) is None


# ---------------------------------------------------------------------------- TPM -------
async def test_tpm_reserves_prompt_plus_max_tokens_and_settles_to_the_real_count(
    harness: Harness,
) -> None:
    key = harness.key()
    limiter = harness.limiter()
    limiter.set(key, tpm=1000)
    first = await admit(limiter, key, prompt=100, max_tokens=400)
    second = await admit(limiter, key, prompt=100, max_tokens=400)
    assert first is not None and second is not None and first.tokens == 500
    assert harness.window(key) == (2, 1000)

    over = await refused(lambda: admit(limiter, key, prompt=1, max_tokens=0))
    assert (over.limit, over.retry_after) == ("tpm", 45)
    assert "1000 tokens per minute" in over.message and "1000 used or reserved" in over.message

    await limiter.asettle(first, tokens=150, cost=0.0, unit="CNY")  # it used only 150
    assert harness.window(key) == (2, 650)
    await limiter.asettle(first, tokens=150, cost=0.0, unit="CNY")  # twice: nothing more
    assert harness.window(key) == (2, 650)
    assert await admit(limiter, key, prompt=50, max_tokens=300) is not None  # 350 fits
    assert (await refused(lambda: admit(limiter, key, prompt=0, max_tokens=1))).limit == "tpm"
    await limiter.asettle(second, tokens=0, cost=0.0, unit="CNY")  # failed before the model
    assert harness.window(key) == (3, 500)


async def test_unset_max_tokens_reserves_the_documented_default(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter(limits_default_max_tokens=200)
    limiter.set(key, tpm=10_000)
    reservation = await admit(limiter, key, prompt=30, max_tokens=None)
    assert reservation is not None and reservation.tokens == 230
    assert limiter.completion_allowance(None) == 200 and limiter.completion_allowance(7) == 7


async def test_a_request_larger_than_the_tpm_limit_is_refused_for_good(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter(limits_default_max_tokens=900)
    limiter.set(key, tpm=1000)
    over = await refused(lambda: admit(limiter, key, prompt=200, max_tokens=None))
    assert (over.limit, over.retry_helps) == ("tpm", False)
    assert over.message == (
        "this request needs up to 1100 tokens (prompt plus max_tokens; unset, it counts as"
        " 900), more than this API key's limit of 1000 tokens per minute: lower max_tokens"
        " or shorten the prompt"
    )
    assert harness.window(key) is None  # nothing counted


# ---------------------------------------------------------------------------- budget ----
async def test_budget_reserves_the_ceiling_settles_the_cost_and_renews_each_day(
    harness: Harness,
) -> None:
    key = harness.key()
    limiter = harness.limiter()
    limiter.set(key, budget=Decimal("1"), unit="CNY", period="day")
    first = await admit(limiter, key, cost=0.4)
    await admit(limiter, key, cost=0.4)
    assert harness.spent(key) == Decimal("0.8")
    over = await refused(lambda: admit(limiter, key, cost=0.4))
    assert over.limit == "budget" and over.retry_helps
    assert over.retry_after == 12 * 3600 - 15  # until midnight UTC
    assert over.message.startswith(
        "budget reached: 0.8 of 1 CNY per day spent or reserved, and this request may cost up"
        " to 0.4 CNY; it renews in"
    )
    assert first is not None
    await limiter.asettle(first, tokens=20, cost=0.1, unit="CNY")
    assert harness.spent(key) == Decimal("0.5")
    assert await admit(limiter, key, cost=0.4) is not None

    harness.clock.at = datetime(2025, 4, 1, 0, 0, tzinfo=UTC)  # the next day
    assert harness.spent(key) is None
    assert await admit(limiter, key, cost=0.9) is not None


async def test_a_budget_refusal_takes_back_the_windows_count(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter()
    limiter.set(key, rpm=10, tpm=1000, budget=Decimal("0.5"), period="month")
    await admit(limiter, key, prompt=5, max_tokens=5, cost=0.3)
    assert (await refused(lambda: admit(limiter, key, cost=0.3))).limit == "budget"
    assert harness.window(key) == (1, 10)
    assert harness.spent(key, "month") == Decimal("0.3")


async def test_costs_are_converted_to_the_budgets_unit(harness: Harness) -> None:
    cny_key, usd_key = harness.key(), harness.key()
    limiter = harness.limiter(usd_cny_rate=7.0)
    limiter.set(cny_key, budget=Decimal("10"), unit="CNY", period="total")
    limiter.set(usd_key, budget=Decimal("10"), unit="USD", period="total")
    in_cny = await admit(limiter, cny_key, cost=0.5, unit="USD")
    in_usd = await admit(limiter, usd_key, cost=7.0, unit="CNY")
    assert in_cny is not None and in_cny.cost == Decimal("3.5")
    assert in_usd is not None and in_usd.cost == Decimal("1")
    await limiter.asettle(in_cny, tokens=1, cost=0.1, unit="USD")
    await limiter.asettle(in_usd, tokens=1, cost=3.5, unit="CNY")
    assert harness.spent(cny_key, "total") == Decimal("0.7")
    assert harness.spent(usd_key, "total") == Decimal("0.5")

    limiter.set(usd_key, unit="CNY")  # the spend so far is converted with the budget
    assert harness.spent(usd_key, "total") == Decimal("3.5")


async def test_a_used_up_total_budget_never_renews(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter()
    limiter.set(key, budget=Decimal("1"), unit="USD", period="total")
    await admit(limiter, key, cost=0.75, unit="USD")
    over = await refused(lambda: admit(limiter, key, cost=0.5, unit="USD"))
    assert (over.limit, over.retry_helps) == ("budget", False)
    assert over.message.endswith("the budget does not renew: ask the operator to raise it")
    whole = await refused(lambda: admit(limiter, key, cost=2.0, unit="USD"))
    assert whole.message.startswith(
        "this request may cost up to 2 USD, more than this API key's whole budget of 1 USD in total"
    )


# ---------------------------------------------------------------------- no limits -------
async def test_keys_without_limits_cost_no_database_round_trip(harness: Harness) -> None:
    limited, free = harness.key(), harness.key()
    limiter = harness.limiter()
    limiter.set(limited, rpm=5)
    assert await admit(limiter, free) is None  # loads the limits table once
    await harness.database.close_async_pool()  # any query from now on would fail
    started = time.perf_counter()
    for _ in range(10_000):
        assert await admit(limiter, free) is None
    per_call = (time.perf_counter() - started) / 10_000
    with pytest.raises(DatabaseError):
        await admit(limiter, limited)  # a limited key does need the database
    await harness.database.open_async_pool()
    assert per_call < 200e-6


async def test_a_changed_limit_takes_effect_after_the_cache_time(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter(limits_cache_seconds=5)
    assert await admit(limiter, key) is None
    limiter.set(key, rpm=1)
    harness.clock.advance(4.9)
    assert await admit(limiter, key) is None  # still the cached table
    harness.clock.advance(0.1)
    assert await admit(limiter, key) is not None
    assert (await refused(lambda: admit(limiter, key))).limit == "rpm"


# ---------------------------------------------------------------------- concurrency -----
async def test_200_concurrent_admissions_admit_exactly_the_rpm(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter()
    limiter.set(key, rpm=50)
    await limiter.alimits(key)

    async def one() -> bool:
        try:
            await admit(limiter, key)
        except RateLimitExceeded:
            return False
        return True

    outcomes = await asyncio.gather(*(one() for _ in range(200)))
    assert sum(outcomes) == 50
    assert harness.window(key) == (50, 1000)


CHILD = """
import asyncio, json, os, sys
from datetime import datetime
from fengchao_chains.db import Database
from fengchao_chains.gateway.limit_types import RateLimitExceeded
from fengchao_chains.gateway.limits import Limiter
from fengchao_chains.settings import load_settings

async def main(database):
    fixed = datetime.fromisoformat(os.environ["LIMITS_NOW"])
    limiter = Limiter(database, load_settings(), now=lambda: fixed)
    await database.open_async_pool()
    key = os.environ["LIMITS_KEY"]
    await limiter.alimits(key)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    async def one():
        try:
            await limiter.aadmit(key, prompt_tokens=1, max_tokens=1, cost_ceiling=0.0, unit="CNY")
        except RateLimitExceeded:
            return False
        return True

    outcomes = await asyncio.gather(*(one() for _ in range(int(os.environ["LIMITS_CALLS"]))))
    print(json.dumps({"admitted": sum(outcomes), "refused": outcomes.count(False)}), flush=True)
    await database.close_async_pool()

database = Database.start(load_settings())
try:
    asyncio.run(main(database))
finally:
    database.close()
"""


async def test_three_processes_admit_exactly_the_rpm_between_them(harness: Harness) -> None:
    key = harness.key()
    harness.limiter().set(key, rpm=75)
    settings = harness.settings
    assert settings.database_url is not None
    env = clean_env(
        FENGCHAO_DATABASE_URL=settings.database_url.get_secret_value(),
        FENGCHAO_DATABASE_SCHEMA=settings.database_schema,
        FENGCHAO_DATA_DIR=str(settings.data_dir),
        FENGCHAO_DATABASE_POOL_MIN_SIZE="4",
        FENGCHAO_DATABASE_POOL_MAX_SIZE="4",
        LIMITS_KEY=key,
        LIMITS_NOW=NOON.isoformat(),
        LIMITS_CALLS="60",
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.to_thread(child.stdout.readline)
            assert line.strip() == "ready", child.stderr.read() if child.stderr else ""
        for child in children:  # all three are warmed up: let them loose together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            out, err = await asyncio.to_thread(child.communicate, timeout=60)
            assert child.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
    assert sum(r["admitted"] for r in reports) == 75
    assert sum(r["refused"] for r in reports) == 180 - 75
    assert harness.window(key) == (75, 150)


# ---------------------------------------------------------------------- admin -----------
async def test_set_clear_and_status(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter(default_rpm=60)
    status = limiter.status(key)
    assert (status.own, status.limits, status.requests) == (False, KeyLimits(rpm=60), 0)

    limits = limiter.set(key, tpm=5000, budget=Decimal("2.5"))
    assert limits == KeyLimits(rpm=60, tpm=5000, budget=Budget(Decimal("2.5"), "CNY", "month"))
    assert str(limits.budget) == "2.5 CNY per month"
    limits = limiter.set(key, rpm=None, period="day")
    assert limits == KeyLimits(tpm=5000, budget=Budget(Decimal("2.5"), "CNY", "day"))
    await admit(limiter, key, prompt=10, max_tokens=20, cost=0.5)
    status = limiter.status(key)
    assert (status.own, status.requests, status.tokens, status.spent) == (
        True,
        1,
        30,
        Decimal("0.5"),
    )
    assert status.period_start == datetime(2025, 3, 31, tzinfo=UTC)
    assert [s.api_key for s in limiter.statuses()] == [key]

    assert limiter.clear(key) is True
    assert limiter.clear(key) is False
    assert limiter.status(key).limits == KeyLimits(rpm=60)
    assert limiter.set(key, budget=None) == KeyLimits(rpm=60)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rpm": 0}, "rpm is a whole number of 1 or more (or unlimited)"),
        ({"tpm": -5}, "tpm is a whole number of 1 or more (or unlimited)"),
        ({"budget": Decimal("-1")}, "a budget is an amount of 0 or more"),
        ({"budget": Decimal("NaN")}, "a budget is an amount of 0 or more"),
        ({"budget": Decimal(1), "unit": "EUR"}, "a budget unit is one of CNY, USD"),
        ({"budget": Decimal(1), "period": "week"}, "a budget period is one of total, day, month"),
        ({"unit": "USD"}, "--unit and --period need a budget (--budget AMOUNT)"),
    ],
)
async def test_bad_limits_are_refused_and_nothing_is_stored(
    harness: Harness, changes: dict[str, Any], message: str
) -> None:
    key = harness.key()
    with pytest.raises(LimitsError) as caught:
        harness.limiter().set(key, **changes)
    assert str(caught.value) == message
    assert harness.sql("SELECT count(*) FROM key_limits") == [(0,)]


async def test_unknown_keys_are_refused(harness: Harness) -> None:
    limiter = harness.limiter()
    for action in (
        lambda: limiter.set("fc-nope", rpm=1),
        lambda: limiter.clear("fc-nope"),
        lambda: limiter.status("fc-nope"),
    ):
        with pytest.raises(UnknownKeyError):
            action()


async def test_purge_deletes_past_windows_and_ended_periods(harness: Harness) -> None:
    key = harness.key()
    limiter = harness.limiter()
    limiter.set(key, rpm=100, budget=Decimal(5), period="day")
    total_key = harness.key()
    limiter.set(total_key, budget=Decimal(5), period="total")
    for minute in range(3):  # 12:00, 12:01 and 12:02 on 31 March
        harness.clock.advance(60 if minute else 0)
        await admit(limiter, key, cost=0.1)
        await admit(limiter, total_key, cost=0.1)
    assert await limiter.apurge() == (1, 0)  # the first window; 12:02 and 12:01 stay
    harness.clock.at = datetime(2025, 4, 1, 0, 0, 30, tzinfo=UTC)
    assert await limiter.apurge() == (2, 1)  # both windows and 31 March's spend
    assert harness.sql("SELECT api_key FROM budget_spend") == [(total_key,)]


# ---------------------------------------------------------------------- HTTP ------------
def test_period_bounds_and_windows() -> None:
    at = datetime(2024, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)
    assert window_start(at) == datetime(2024, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds("month", at) == (
        datetime(2024, 12, 1, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("day", at)[1] == datetime(2025, 1, 1, tzinfo=UTC)
    assert period_bounds("total", at)[1] is None


def _app(exc: RateLimitExceeded, calls: list[str]) -> FastAPI:
    app = FastAPI()

    @app.post("/aigc/chat/")
    async def aigc() -> JSONResponse:
        calls.append("aigc")
        return aigc_rate_limit_response(exc)

    @app.post("/v1/chat/completions")
    async def v1() -> JSONResponse:
        calls.append("v1")
        return openai_error(exc).response()

    return app


def test_the_aigc_answer_is_429_with_retry_after_and_the_sdk_shape() -> None:
    exc = RateLimitExceeded("rpm", "rate limit reached: 3 requests per minute", 17)
    calls: list[str] = []
    with serve_in_thread(_app(exc, calls)) as base_url:
        response = httpx.post(f"{base_url}/aigc/chat/", json={})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "17"
    assert "x-should-retry" not in response.headers
    assert response.json() == {"status": 429, "msg": "rate limit reached: 3 requests per minute"}


@pytest.mark.parametrize(
    ("limit", "retry_helps", "error_type", "code", "calls"),
    [
        ("tpm", True, "tokens", "rate_limit_exceeded", 2),  # retried once after Retry-After
        ("budget", False, "insufficient_quota", "insufficient_quota", 1),  # not retried
    ],
)
def test_the_openai_sdk_sees_a_rate_limit_error_and_retries_only_when_it_helps(
    limit: Any, retry_helps: bool, error_type: str, code: str, calls: int
) -> None:
    exc = RateLimitExceeded(limit, "over the limit", 1, retry_helps=retry_helps)
    seen: list[str] = []
    with serve_in_thread(_app(exc, seen)) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=1)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 429
    assert caught.value.body == {
        "message": "over the limit",
        "type": error_type,
        "param": None,
        "code": code,
    }
    assert caught.value.code == code
    assert len(seen) == calls


def test_a_reservation_survives_its_trip_through_a_task_payload() -> None:
    """An async task stores its reservation as JSON; the worker settles what it reads back."""
    with_budget = Reservation(
        "fc-alpha",
        1337,
        window_start(NOON),
        Budget(Decimal("12.5"), "USD", "month"),
        period_bounds("month", NOON)[0],
        Decimal("0.0012345"),
    )
    tokens_only = Reservation("fc-alpha", 40, window_start(NOON), None, None, Decimal(0))
    for reservation in (with_budget, tokens_only):
        carried = json.loads(json.dumps(reservation.to_json()))
        assert Reservation.from_json(carried) == reservation
