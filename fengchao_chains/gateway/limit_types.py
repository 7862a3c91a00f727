"""The vocabulary of per-key limits: their values, their errors and the clock they count by.

These are split from :mod:`fengchao_chains.gateway.limits` (the :class:`Limiter` that admits
and settles in PostgreSQL) because more than the limiter speaks them: the CLI shows
:class:`KeyLimits` and :class:`LimitsStatus`, an async task carries a :class:`Reservation`
to the worker that settles it, and the front doors turn :class:`RateLimitExceeded` into
their 429s.  None of them needs the database or the web framework to be imported.

Windows and budget periods are UTC and fixed (not sliding): :func:`window_start` and
:func:`period_bounds` are the one definition of them, so admission, settling, the hourly
purge and ``fengchao limits show`` all count in the same buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from fengchao_chains.errors import FengchaoError

LimitName = Literal["rpm", "tpm", "budget"]
BudgetUnit = Literal["CNY", "USD"]
BudgetPeriod = Literal["total", "day", "month"]
BUDGET_UNITS: tuple[BudgetUnit, ...] = ("CNY", "USD")
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = ("total", "day", "month")

WINDOW = timedelta(seconds=60)
TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)
NEVER_RENEWS_RETRY_AFTER = 86400
"""Retry-After for a refusal no roll-over ends (a total budget, an oversized request)."""


class RateLimitExceeded(FengchaoError):
    """A request over its key's RPM, TPM or budget: HTTP 429 with ``Retry-After``.

    ``retry_after`` is the seconds until the window or budget period rolls over (at least
    1); ``retry_helps`` is False when waiting cannot help (the request alone needs more than
    the limit, or a total budget is used up).  The message is safe to show the client.
    """

    def __init__(
        self, limit: LimitName, message: str, retry_after: int, *, retry_helps: bool = True
    ) -> None:
        super().__init__(message)
        self.limit: LimitName = limit
        self.message = message
        self.retry_after = max(1, int(retry_after))
        self.retry_helps = retry_helps


class LimitsError(FengchaoError, ValueError):
    """A limit that cannot be stored (``fengchao limits set`` with a bad value)."""


@dataclass(frozen=True)
class Budget:
    amount: Decimal
    unit: BudgetUnit
    period: BudgetPeriod

    def __str__(self) -> str:
        per = "in total" if self.period == "total" else f"per {self.period}"
        return f"{format_money(self.amount)} {self.unit} {per}"


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits; None is no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    budget: Budget | None = None

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.budget is None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> KeyLimits:
        """From ``key_limits``' columns: rpm, tpm, budget, budget_unit, budget_period."""
        rpm, tpm, amount, unit, period = row
        budget = Budget(Decimal(amount), unit, period) if amount is not None else None
        return cls(rpm=rpm, tpm=tpm, budget=budget)


@dataclass(frozen=True)
class LimitsStatus:
    """A key's limits (``own``: its own row, else the defaults) and its current usage."""

    api_key: str
    limits: KeyLimits
    own: bool
    window_start: datetime
    requests: int
    tokens: int
    period_start: datetime | None
    spent: Decimal | None


@dataclass
class Reservation:
    """What one admitted request holds until
    :meth:`~fengchao_chains.gateway.limits.Limiter.asettle`: its tokens in a window (None:
    the key has no RPM/TPM limit) and its cost in a budget period (None: no budget), in the
    budget's unit."""

    api_key: str
    tokens: int
    window_start: datetime | None
    budget: Budget | None
    period_start: datetime | None
    cost: Decimal
    settled: bool = False

    def to_json(self) -> dict[str, Any]:
        """The reservation as JSON: an async task carries it to the worker that settles it."""
        budget = self.budget
        return {
            "api_key": self.api_key,
            "tokens": self.tokens,
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "budget": None
            if budget is None
            else {"amount": str(budget.amount), "unit": budget.unit, "period": budget.period},
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "cost": str(self.cost),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reservation:
        budget = data.get("budget")
        window, period = data.get("window_start"), data.get("period_start")
        return cls(
            api_key=data["api_key"],
            tokens=int(data["tokens"]),
            window_start=datetime.fromisoformat(window) if window else None,
            budget=None
            if budget is None
            else Budget(Decimal(budget["amount"]), budget["unit"], budget["period"]),
            period_start=datetime.fromisoformat(period) if period else None,
            cost=Decimal(data["cost"]),
        )


# --------------------------------------------------------------------------- time -------
def window_start(now: datetime) -> datetime:
    """The start of the fixed one-minute window ``now`` falls in."""
    return datetime.fromtimestamp(math.floor(now.timestamp() / 60) * 60, UTC)


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """The UTC budget period ``now`` falls in: (start, end); a total budget never ends."""
    if period == "total":
        return TOTAL_PERIOD_START, None
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    month = day.replace(day=1)
    following = (
        month.replace(year=month.year + 1, month=1)
        if month.month == 12
        else month.replace(month=month.month + 1)
    )
    return month, following


def format_money(amount: Decimal) -> str:
    """An amount to 4 decimals without trailing zeros: 0.05, 12, 0.0001."""
    return format(amount.quantize(Decimal("0.0001")).normalize(), "f")
