"""``fengchao limits``: give API keys their own RPM, TPM and budget, clear them, and show
limits with the usage of the current minute and budget period.

Kept apart from ``cli.py`` (same conventions: ``error: ...`` on stderr, exit 1 on a reported
error, 2 on a usage error, ``--json`` where the output is data).  Running servers see a
change within ``FENGCHAO_LIMITS_CACHE_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fengchao_chains.gateway.limit_types import KeyLimits, LimitsStatus
    from fengchao_chains.gateway.limits import Limiter

limits_app = typer.Typer(help="Per-key rate limits (RPM, TPM) and budgets.", no_args_is_help=True)

_NO_LIMIT = {"unlimited", "none"}
_KEY_ARGUMENT = typer.Argument(metavar="API_KEY", help="The API key (`fengchao keys list`).")


@contextmanager
def _limiter() -> Iterator[Limiter]:
    """The limiter on the started database, closed (an embedded server released) after."""
    from fengchao_chains.cli import open_database, settings_from
    from fengchao_chains.gateway.limits import Limiter

    settings = settings_from()
    with open_database(settings) as database:
        yield Limiter(database, settings)


@limits_app.command("set")
def set_limits(
    api_key: Annotated[str, _KEY_ARGUMENT],
    *,
    rpm: Annotated[
        str | None,
        typer.Option("--rpm", metavar="N|unlimited", help="Requests per minute."),
    ] = None,
    tpm: Annotated[
        str | None,
        typer.Option(
            "--tpm", metavar="N|unlimited", help="Tokens (prompt plus completion) per minute."
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option("--budget", metavar="AMOUNT|none", help="Most the key may spend per period."),
    ] = None,
    unit: Annotated[
        str | None, typer.Option("--unit", metavar="CNY|USD", help="The budget's currency.")
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(
            "--period",
            metavar="total|day|month",
            help="The budget's period (UTC day or month; total never renews).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Give a key its own limits; only the options given change.  A key without limits of
    its own starts from the defaults (FENGCHAO_DEFAULT_RPM/TPM); a new budget is CNY per
    month unless --unit/--period say otherwise."""
    from fengchao_chains.cli import guarded, print_json, stdout
    from fengchao_chains.gateway.limit_types import BUDGET_PERIODS, BUDGET_UNITS
    from fengchao_chains.gateway.limits import KEEP

    if all(value is None for value in (rpm, tpm, budget, unit, period)):
        raise typer.BadParameter("pass at least one of --rpm, --tpm, --budget, --unit, --period")
    changes: dict[str, Any] = {
        "rpm": KEEP if rpm is None else _count(rpm, "--rpm"),
        "tpm": KEEP if tpm is None else _count(tpm, "--tpm"),
        "budget": KEEP if budget is None else _amount(budget),
    }
    if unit is not None:
        changes["unit"] = _choice(unit.upper(), BUDGET_UNITS, "--unit")
    if period is not None:
        changes["period"] = _choice(period.lower(), BUDGET_PERIODS, "--period")
    with _limiter() as limiter:
        limits = guarded(lambda: limiter.set(api_key, **changes))
        seconds = limiter.settings.limits_cache_seconds
    if as_json:
        print_json({"api_key": api_key, **_limits_json(limits)})
        return
    stdout.print(f"{api_key}: {_describe(limits)}", markup=False, highlight=False)
    stdout.print(f"(running servers apply it within {seconds:g} s)", markup=False, highlight=False)


@limits_app.command("clear")
def clear_limits(api_key: Annotated[str, _KEY_ARGUMENT]) -> None:
    """Remove a key's own limits: the defaults apply to it again (its spend so far is kept)."""
    from fengchao_chains.cli import guarded, stdout

    with _limiter() as limiter:
        had_own = guarded(lambda: limiter.clear(api_key))
        defaults = _describe(limiter.defaults)
    if had_own:
        stdout.print(f"{api_key}: cleared; the defaults apply ({defaults})", markup=False)
    else:
        stdout.print(f"{api_key} had no limits of its own ({defaults})", markup=False)


@limits_app.command("show")
def show_limits(
    api_key: Annotated[
        str | None,
        typer.Argument(metavar="[API_KEY]", help="One key; default: every active key."),
    ] = None,
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Limits and usage: requests and tokens this minute, spend this budget period."""
    from rich.table import Table

    from fengchao_chains.cli import guarded, print_json, stdout
    from fengchao_chains.gateway.limit_types import format_money

    with _limiter() as limiter:
        statuses = guarded(
            lambda: [limiter.status(api_key)] if api_key is not None else limiter.statuses()
        )
    if as_json:
        print_json([_status_json(status) for status in statuses])
        return
    count = f"{len(statuses)} key" + ("" if len(statuses) == 1 else "s")
    title = count if api_key is None else api_key
    table = Table(
        title=f"{title}, minute from {statuses[0].window_start:%H:%M} UTC" if statuses else title
    )
    for column in ("api_key", "limits", "requests/min", "tokens/min", "budget spent"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        limits = status.limits
        table.add_row(
            status.api_key,
            "own" if status.own else "default",
            _used(status.requests, limits.rpm),
            _used(status.tokens, limits.tpm),
            f"{format_money(status.spent or Decimal(0))} of {limits.budget}"
            if limits.budget
            else "-",
        )
    stdout.print(table)


# --------------------------------------------------------------------------- parsing -----
def _count(text: str, option: str) -> int | None:
    if text.strip().lower() in _NO_LIMIT:
        return None
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a whole number or 'unlimited'", param_hint=option
        ) from None
    if value < 1:
        raise typer.BadParameter("must be 1 or more (or 'unlimited')", param_hint=option)
    return value


def _amount(text: str) -> Decimal | None:
    if text.strip().lower() in _NO_LIMIT:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise typer.BadParameter(
            f"{text!r} is not an amount or 'none'", param_hint="--budget"
        ) from None
    if not value.is_finite() or value < 0:
        raise typer.BadParameter("must be an amount of 0 or more", param_hint="--budget")
    return value


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"must be one of {', '.join(choices)}", param_hint=option)
    return value


# --------------------------------------------------------------------------- output ------
def _describe(limits: KeyLimits) -> str:
    rpm = f"{limits.rpm} requests/min" if limits.rpm else "requests unlimited"
    tpm = f"{limits.tpm} tokens/min" if limits.tpm else "tokens unlimited"
    budget = f"budget {limits.budget}" if limits.budget else "no budget"
    return f"{rpm}, {tpm}, {budget}"


def _used(used: int, limit: int | None) -> str:
    return f"{used}/{limit}" if limit is not None else f"{used} (unlimited)"


def _limits_json(limits: KeyLimits) -> dict[str, Any]:
    budget = limits.budget
    return {
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "budget": (
            {"amount": float(budget.amount), "unit": budget.unit, "period": budget.period}
            if budget
            else None
        ),
    }


def _status_json(status: LimitsStatus) -> dict[str, Any]:
    return {
        "api_key": status.api_key,
        "source": "own" if status.own else "default",
        **_limits_json(status.limits),
        "window_start": status.window_start.isoformat(),
        "requests": status.requests,
        "tokens": status.tokens,
        "period_start": status.period_start.isoformat() if status.period_start else None,
        "spent": float(status.spent) if status.spent is not None else None,
    }
