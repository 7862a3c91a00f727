"""The limiter's admin half: setting, clearing and reporting a key's limits.

What the CLI (``fengchao limits set|clear|show``) and the tests use, kept apart from the
admission and settlement the server runs per request (:mod:`fengchao_chains.gateway.limits`).
:class:`LimitsAdmin` is a mixin of :class:`~fengchao_chains.gateway.limits.Limiter`, which
provides the attributes it declares; it writes ``key_limits`` on the sync pool and reads each
key's usage in the current window and budget period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any

import psycopg

from fengchao_chains.db import Database
from fengchao_chains.errors import DatabaseError, one_line
from fengchao_chains.gateway.keys import UnknownKeyError
from fengchao_chains.gateway.limit_types import (
    BUDGET_PERIODS,
    BUDGET_UNITS,
    TOTAL_PERIOD_START,
    Budget,
    BudgetPeriod,
    BudgetUnit,
    KeyLimits,
    LimitsError,
    LimitsStatus,
    period_bounds,
    window_start,
)

logger = logging.getLogger("fengchao_chains.gateway.limits")  # the limiter's one logger


class _Keep(Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP
"""For :meth:`Limiter.set`: leave this limit as it is."""


class LimitsAdmin:
    """The admin methods of :class:`~fengchao_chains.gateway.limits.Limiter`, for the CLI."""

    # provided by Limiter
    database: Database
    _now: Callable[[], datetime]
    _defaults: KeyLimits

    if TYPE_CHECKING:

        def _convert(self, amount: float, unit: str, to: BudgetUnit) -> Decimal: ...

    def set(
        self,
        api_key: str,
        *,
        rpm: int | _Keep | None = KEEP,
        tpm: int | _Keep | None = KEEP,
        budget: Decimal | _Keep | None = KEEP,
        unit: BudgetUnit | _Keep = KEEP,
        period: BudgetPeriod | _Keep = KEEP,
    ) -> KeyLimits:
        """Give a key its own limits, changing only those passed (None: no limit of that
        kind).  A key without a row starts from the defaults; a new budget is CNY per month
        unless said otherwise; changing a budget's unit converts the spend so far at
        ``usd_cny_rate``.  Unknown keys raise :class:`UnknownKeyError`."""
        _check_positive("rpm", rpm)
        _check_positive("tpm", tpm)
        if isinstance(budget, Decimal) and (not budget.is_finite() or budget < 0):
            raise LimitsError("a budget is an amount of 0 or more")
        if unit is not KEEP and unit not in BUDGET_UNITS:
            raise LimitsError(f"a budget unit is one of {', '.join(BUDGET_UNITS)}")
        if period is not KEEP and period not in BUDGET_PERIODS:
            raise LimitsError(f"a budget period is one of {', '.join(BUDGET_PERIODS)}")
        with self._connection() as conn, conn.transaction():
            self._check_key(conn, api_key)
            row = conn.execute(
                "SELECT rpm, tpm, budget, budget_unit, budget_period FROM key_limits"
                " WHERE api_key = %s FOR UPDATE",
                (api_key,),
            ).fetchone()
            current = KeyLimits.from_row(row) if row else self._defaults
            merged = self._merged(
                current, rpm=rpm, tpm=tpm, amount=budget, unit=unit, period=period
            )
            old, new = current.budget, merged.budget
            if old is not None and new is not None and old.unit != new.unit:
                conn.execute(
                    "UPDATE budget_spend SET spent = spent * %s WHERE api_key = %s",
                    (self._convert(1.0, old.unit, new.unit), api_key),
                )
            conn.execute(
                "INSERT INTO key_limits (api_key, rpm, tpm, budget, budget_unit, budget_period)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (api_key) DO UPDATE SET"
                " rpm = excluded.rpm, tpm = excluded.tpm, budget = excluded.budget,"
                " budget_unit = excluded.budget_unit, budget_period = excluded.budget_period,"
                " updated_at = now()",
                (
                    api_key,
                    merged.rpm,
                    merged.tpm,
                    new.amount if new else None,
                    new.unit if new else None,
                    new.period if new else None,
                ),
            )
        logger.info("limits of API key %s set: %s", api_key, merged)
        return merged

    def clear(self, api_key: str) -> bool:
        """Remove a key's own limits (the defaults apply again); False if it had none.  Its
        spend so far is kept."""
        with self._connection() as conn, conn.transaction():
            self._check_key(conn, api_key)
            deleted = conn.execute(
                "DELETE FROM key_limits WHERE api_key = %s RETURNING 1", (api_key,)
            ).fetchone()
        return deleted is not None

    def status(self, api_key: str) -> LimitsStatus:
        """One key's limits and usage in the current window and budget period."""
        found = self._statuses(api_key)
        if not found:
            raise UnknownKeyError(api_key)
        return found[0]

    def statuses(self) -> list[LimitsStatus]:
        """Every active key (and revoked keys with limits of their own), oldest first."""
        return self._statuses(None)

    @property
    def defaults(self) -> KeyLimits:
        return self._defaults

    # ------------------------------------------------------------------ internals --------
    def _statuses(self, api_key: str | None) -> list[LimitsStatus]:
        now = self._now()
        window = window_start(now)
        params = {
            "key": api_key,
            "window": window,
            "day": period_bounds("day", now)[0],
            "month": period_bounds("month", now)[0],
            "total": TOTAL_PERIOD_START,
        }
        with self._connection() as conn:
            rows = conn.execute(_STATUS, params).fetchall()
        result = []
        for key, own, rpm, tpm, amount, unit, period, requests, tokens, spent in rows:
            limits = KeyLimits.from_row((rpm, tpm, amount, unit, period)) if own else self._defaults
            period_start = period_bounds(period, now)[0] if period else None
            result.append(
                LimitsStatus(
                    api_key=key,
                    limits=limits,
                    own=own,
                    window_start=window,
                    requests=requests or 0,
                    tokens=tokens or 0,
                    period_start=period_start,
                    spent=(spent or Decimal(0)) if limits.budget else None,
                )
            )
        return result

    def _merged(
        self,
        current: KeyLimits,
        *,
        rpm: int | _Keep | None,
        tpm: int | _Keep | None,
        amount: Decimal | _Keep | None,
        unit: BudgetUnit | _Keep,
        period: BudgetPeriod | _Keep,
    ) -> KeyLimits:
        old = current.budget
        amount = (old.amount if old else None) if amount is KEEP else amount
        if amount is None:
            if unit is not KEEP or period is not KEEP:
                raise LimitsError("--unit and --period need a budget (--budget AMOUNT)")
            budget = None
        else:
            budget = Budget(
                amount=amount,
                unit=(old.unit if old else "CNY") if unit is KEEP else unit,
                period=(old.period if old else "month") if period is KEEP else period,
            )
        return KeyLimits(
            rpm=current.rpm if rpm is KEEP else rpm,
            tpm=current.tpm if tpm is KEEP else tpm,
            budget=budget,
        )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for the admin methods; driver errors as :class:`DatabaseError`."""
        try:
            with self.database.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise DatabaseError(
                f"the rate limits cannot be read or stored: {one_line(exc)}"
            ) from None

    @staticmethod
    def _check_key(conn: psycopg.Connection[Any], api_key: str) -> None:
        if conn.execute("SELECT 1 FROM api_keys WHERE api_key = %s", (api_key,)).fetchone() is None:
            raise UnknownKeyError(api_key)


# --------------------------------------------------------------------------- helpers ----
def _check_positive(name: str, value: int | _Keep | None) -> None:
    if isinstance(value, int) and value < 1:
        raise LimitsError(f"{name} is a whole number of 1 or more (or unlimited)")


_STATUS = """
SELECT a.api_key, l.api_key IS NOT NULL, l.rpm, l.tpm, l.budget, l.budget_unit,
       l.budget_period, w.requests, w.tokens, s.spent
FROM api_keys AS a
LEFT JOIN key_limits AS l ON l.api_key = a.api_key
LEFT JOIN rate_windows AS w ON w.api_key = a.api_key AND w.window_start = %(window)s
LEFT JOIN budget_spend AS s ON s.api_key = a.api_key AND s.period = l.budget_period
    AND s.period_start = CASE l.budget_period WHEN 'day' THEN %(day)s
        WHEN 'month' THEN %(month)s ELSE %(total)s END
WHERE CASE WHEN %(key)s::text IS NULL THEN a.revoked_at IS NULL OR l.api_key IS NOT NULL
    ELSE a.api_key = %(key)s::text END
ORDER BY a.created_at, a.api_key
"""
