"""Per-key rate limits (RPM, TPM) and budgets, enforced atomically in PostgreSQL.

Several server processes share one database, so the counters live there (migration 0008):

* **limits**: ``key_limits`` holds a key's own limits; keys without a row get the defaults
  (``FENGCHAO_DEFAULT_RPM`` / ``FENGCHAO_DEFAULT_TPM``).  Each process caches the whole table
  for ``limits_cache_seconds``, so a key without limits (the common case) costs no database
  round trip per request, and a change reaches every process within that time;
* **admission** is one statement, ``limits_admit()``: an upsert of the key's current
  one-minute window guarded by ``WHERE <under the limit>`` (the row lock makes concurrent
  admissions from any process queue up, so none overshoots), then the same for the budget
  period's spend.  It is sent in one pipeline with its transaction: one round trip;
* **reservations**: tokens and cost are not known before the call, so admission reserves
  the prompt estimate plus ``max_tokens`` (``limits_default_max_tokens`` when unset) and the
  cost of that; :meth:`Limiter.asettle` corrects both to the real figures when the call ends.
  A request whose reservation alone exceeds the limit is refused at once (retrying cannot
  help), not left to retry forever;
* **clean-up**: :meth:`Limiter.apurge` (the hourly housekeeping) deletes past windows and
  the spend of ended days and months.

The values it deals in (limits, reservations, the 429 error, windows and periods) are in
:mod:`fengchao_chains.gateway.limit_types`; the HTTP answers to a refusal are in
:mod:`fengchao_chains.server.limits_http`.  The admin methods the CLI uses (set, clear and
report a key's limits) are in :mod:`fengchao_chains.gateway.limits_admin`, a mixin of
:class:`Limiter`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, LiteralString

import psycopg

from fengchao_chains.db import Database
from fengchao_chains.errors import DatabaseError, one_line
from fengchao_chains.gateway.limit_types import (
    NEVER_RENEWS_RETRY_AFTER,
    WINDOW,
    BudgetUnit,
    KeyLimits,
    RateLimitExceeded,
    Reservation,
    format_money,
    period_bounds,
    window_start,
)
from fengchao_chains.gateway.limits_admin import KEEP, LimitsAdmin
from fengchao_chains.settings import Settings

__all__ = ["KEEP", "Limiter"]

logger = logging.getLogger(__name__)


class Limiter(LimitsAdmin):
    """Admission and settlement for the server; the admin methods for the CLI are
    :class:`LimitsAdmin`'s."""

    def __init__(
        self, database: Database, settings: Settings, *, now: Callable[[], datetime] | None = None
    ) -> None:
        self.database = database
        self.settings = settings
        self._now = now or _utc_now
        self._defaults = KeyLimits(rpm=settings.default_rpm, tpm=settings.default_tpm)
        self._cache_for = timedelta(seconds=settings.limits_cache_seconds)
        self._usd_cny = Decimal(repr(settings.usd_cny_rate))
        self._table: dict[str, KeyLimits] = {}
        self._loaded_at: datetime | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ per request ------
    def completion_allowance(self, max_tokens: int | None) -> int:
        """Completion tokens a request reserves: its ``max_tokens``, else the default.  The
        caller's ``cost_ceiling`` is ``card.cost(prompt_tokens, completion_allowance(...))``."""
        if max_tokens is None:
            return self.settings.limits_default_max_tokens
        return max(0, max_tokens)

    async def alimits(self, api_key: str) -> KeyLimits | None:
        """The key's limits from the cached table (None: unlimited); reloads the table when
        it is older than ``limits_cache_seconds``."""
        if self._stale():
            async with self._lock():
                if self._stale():
                    await self._arefresh()
        limits = self._table.get(api_key, self._defaults)
        return None if limits.unlimited else limits

    async def aadmit(
        self,
        api_key: str,
        *,
        prompt_tokens: int,
        max_tokens: int | None,
        cost_ceiling: float,
        unit: str,
    ) -> Reservation | None:
        """Admit one request or raise :class:`RateLimitExceeded`; None (and no database
        round trip) when the key has no limits.  ``cost_ceiling`` is the most the call can
        cost, in ``unit`` (the model card's)."""
        limits = await self.alimits(api_key)
        if limits is None:
            return None
        tokens = max(0, prompt_tokens) + self.completion_allowance(max_tokens)
        if limits.tpm is not None and tokens > limits.tpm:
            raise RateLimitExceeded(
                "tpm",
                f"this request needs up to {tokens} tokens (prompt plus max_tokens"
                f"{self._unset_note(max_tokens)}), more than this API key's limit of"
                f" {limits.tpm} tokens per minute: lower max_tokens or shorten the prompt",
                NEVER_RENEWS_RETRY_AFTER,
                retry_helps=False,
            )
        budget = limits.budget
        cost = Decimal(0)
        if budget is not None:
            cost = self._convert(cost_ceiling, unit, budget.unit)
            if cost > budget.amount:
                raise RateLimitExceeded(
                    "budget",
                    f"this request may cost up to {format_money(cost)} {budget.unit}, more than"
                    f" this API key's whole budget of {budget}: lower max_tokens"
                    f"{self._unset_note(max_tokens)}",
                    NEVER_RENEWS_RETRY_AFTER,
                    retry_helps=False,
                )
        now = self._now()
        window = window_start(now) if limits.rpm is not None or limits.tpm is not None else None
        period_start = period_bounds(budget.period, now)[0] if budget else None
        rows = await self._execute(
            _ADMIT,
            (
                api_key,
                window,
                limits.rpm,
                limits.tpm,
                tokens,
                budget.period if budget else None,
                period_start,
                budget.amount if budget else None,
                cost,
            ),
        )
        if len(rows) != 1:  # the function always returns its one row
            raise DatabaseError("the rate-limit check returned nothing")
        refused, _, used_tokens, spent = rows[0]
        if refused is not None:
            raise self._refusal(
                refused, limits, now, tokens=tokens, cost=cost, used=(used_tokens, spent)
            )
        return Reservation(api_key, tokens, window, budget, period_start, cost)

    async def asettle(
        self, reservation: Reservation, *, tokens: int, cost: float, unit: str
    ) -> None:
        """Correct a reservation to the call's real tokens (prompt plus completion) and cost
        (in ``unit``); a call that failed before the model ran settles with zeros.  Settling
        twice does nothing.  A database failure is logged, not raised: the reservation then
        stays charged, which errs on the side of the limit."""
        if reservation.settled:
            return
        reservation.settled = True
        token_delta = max(0, tokens) - reservation.tokens
        cost_delta = Decimal(0)
        if reservation.budget is not None:
            cost_delta = self._convert(cost, unit, reservation.budget.unit) - reservation.cost
        if token_delta == 0 and cost_delta == 0:
            return
        try:
            await self._execute(
                _SETTLE,
                {
                    "key": reservation.api_key,
                    "window": reservation.window_start,
                    "tokens": token_delta,
                    "period": reservation.budget.period if reservation.budget else None,
                    "period_start": reservation.period_start,
                    "cost": cost_delta,
                },
            )
        except DatabaseError as exc:
            logger.warning("a rate-limit reservation could not be settled: %s", exc)

    async def apurge(self) -> tuple[int, int]:
        """Delete windows before the previous minute and the spend of ended days and months
        (for the hourly housekeeping); returns (windows, spend rows) deleted."""
        now = self._now()
        params = {
            "window": window_start(now) - WINDOW,
            "day": period_bounds("day", now)[0],
            "month": period_bounds("month", now)[0],
        }
        rows = await self._execute(_PURGE, params)
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    # ------------------------------------------------------------------ internals --------
    def _refusal(
        self,
        refused: str,
        limits: KeyLimits,
        now: datetime,
        *,
        tokens: int,
        cost: Decimal,
        used: tuple[int | None, Decimal | None],
    ) -> RateLimitExceeded:
        used_tokens, spent = used
        wait = _seconds_until(window_start(now) + WINDOW, now)
        if refused == "rpm":
            message = f"rate limit reached: {limits.rpm} requests per minute for this API key"
            return RateLimitExceeded("rpm", f"{message}; try again in {wait} s", wait)
        if refused == "tpm":
            message = (
                f"rate limit reached: {limits.tpm} tokens per minute for this API key"
                f" ({used_tokens or 0} used or reserved, this request needs up to {tokens})"
            )
            return RateLimitExceeded("tpm", f"{message}; try again in {wait} s", wait)
        budget = limits.budget
        if budget is None:  # the database refuses on the budget only when there is one
            raise DatabaseError(f"the rate-limit check refused on {refused!r} unexpectedly")
        message = (
            f"budget reached: {format_money(spent or Decimal(0))} of {budget} spent or reserved,"
            f" and this request may cost up to {format_money(cost)} {budget.unit}"
        )
        end = period_bounds(budget.period, now)[1]
        if end is None:
            return RateLimitExceeded(
                "budget",
                f"{message}; the budget does not renew: ask the operator to raise it",
                NEVER_RENEWS_RETRY_AFTER,
                retry_helps=False,
            )
        wait = _seconds_until(end, now)
        return RateLimitExceeded("budget", f"{message}; it renews in {wait} s", wait)

    def _unset_note(self, max_tokens: int | None) -> str:
        if max_tokens is not None:
            return ""
        return f"; unset, it counts as {self.settings.limits_default_max_tokens}"

    def _convert(self, amount: float, unit: str, to: BudgetUnit) -> Decimal:
        """``amount`` in ``unit`` as a Decimal in ``to``, at ``usd_cny_rate``."""
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"a cost is a finite amount of 0 or more, not {amount!r}")
        value = Decimal(repr(float(amount)))
        if unit == to:
            return value
        if unit == "USD" and to == "CNY":
            return value * self._usd_cny
        if unit == "CNY" and to == "USD":
            return value / self._usd_cny
        raise ValueError(f"unknown cost unit {unit!r} (CNY or USD)")

    def _stale(self) -> bool:
        if self._loaded_at is None:
            return True
        age = self._now() - self._loaded_at
        return age >= self._cache_for or age < timedelta(0)  # a clock set back: reload

    def _lock(self) -> asyncio.Lock:
        """The refresh lock of the running loop (a lock belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._refresh_lock is None or self._lock_loop is not loop:
            self._refresh_lock, self._lock_loop = asyncio.Lock(), loop
        return self._refresh_lock

    async def _arefresh(self) -> None:
        """Reload the limits table.  If the database cannot be read, a table read before
        is kept for another ``limits_cache_seconds`` (and a warning logged)."""
        try:
            rows = await self._execute(
                "SELECT api_key, rpm, tpm, budget, budget_unit, budget_period FROM key_limits"
            )
        except DatabaseError as exc:
            if self._loaded_at is None:
                raise
            logger.warning("keeping the cached rate limits: %s", exc)
        else:
            self._table = {row[0]: KeyLimits.from_row(row[1:]) for row in rows}
        self._loaded_at = self._now()

    async def _execute(
        self, query: LiteralString, params: tuple[Any, ...] | dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction, sent in one pipeline with its BEGIN,
        ``SET LOCAL synchronous_commit = off`` and COMMIT: one round trip, and the commit
        does not wait for the WAL to reach the disk (a database crash may forget the last
        fraction of a second of counting; the row locks are held that much shorter).  Driver
        errors become one-line :class:`DatabaseError`."""
        try:
            async with self.database.async_pool.connection() as conn:
                async with conn.pipeline(), conn.transaction():
                    await conn.execute("SET LOCAL synchronous_commit = off")
                    cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise DatabaseError(
                f"the rate-limit counters cannot be used: {one_line(exc)}"
            ) from None


# --------------------------------------------------------------------------- helpers ----
def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def _utc_now() -> datetime:
    return datetime.now(UTC)


_ADMIT = (
    "SELECT refused, used_requests, used_tokens, used_spend FROM limits_admit("
    "%s, %s, %s::integer, %s::integer, %s::integer, %s, %s, %s::numeric, %s::numeric)"
)
_SETTLE = (
    "WITH w AS (UPDATE rate_windows SET tokens = greatest(tokens + %(tokens)s::bigint, 0)"
    " WHERE api_key = %(key)s AND window_start = %(window)s::timestamptz)"
    " UPDATE budget_spend SET spent = greatest(spent + %(cost)s::numeric, 0)"
    " WHERE api_key = %(key)s AND period = %(period)s::text"
    " AND period_start = %(period_start)s::timestamptz"
)
_PURGE = (
    "WITH w AS (DELETE FROM rate_windows WHERE window_start < %(window)s RETURNING 1),"
    " s AS (DELETE FROM budget_spend WHERE (period = 'day' AND period_start < %(day)s)"
    " OR (period = 'month' AND period_start < %(month)s) RETURNING 1)"
    " SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM s)"
)
