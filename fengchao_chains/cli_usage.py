"""``fengchao usage``: the usage report at the console, over the database directly.

The operator's view: every key's usage (``--key`` narrows it to one).  The same report as
``GET /aigc/usage`` (:mod:`fengchao_chains.gateway.usage_reports`), as a table or, with
``--json``, as the route's ``data``.  Same conventions as ``cli.py``: ``error: ...`` on
stderr and exit 1 for a report that cannot be made, exit 2 for a usage error.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fengchao_chains.gateway.usage_reports import UsageFigures, UsageReport

usage_app = typer.Typer(
    help="Usage reports: tokens and cost per model, key, day or hour.",
    invoke_without_command=True,
    no_args_is_help=False,
)


class GroupBy(StrEnum):
    model = "model"
    key = "key"
    day = "day"
    hour = "hour"


class FrontDoor(StrEnum):
    aigc = "aigc"
    langserve = "langserve"
    v1 = "v1"
    task = "task"


@usage_app.callback(invoke_without_command=True)
def usage(
    *,
    since: Annotated[
        str | None,
        typer.Option(help="Start: 2026-11-01, 2026-11-01T08:00Z or 24h / 30d ago [default: 7d]."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="End (exclusive; a date counts to its end) [default: now]."),
    ] = None,
    group_by: Annotated[
        GroupBy, typer.Option("--group-by", help="One row per model, key, day or hour (UTC).")
    ] = GroupBy.model,
    key: Annotated[str | None, typer.Option("--key", help="Only this api_key's usage.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
    front_door: Annotated[
        FrontDoor | None, typer.Option("--front-door", help="Only calls through this door.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Tokens, cost (per unit: CNY and USD apart), errors and latency over a time range."""
    from fengchao_chains.cli import guarded, open_database, print_json, settings_from
    from fengchao_chains.gateway.usage_reports import OPERATOR, UsageQuery, UsageReports

    query = guarded(
        lambda: UsageQuery.parse(
            since=since,
            until=until,
            group_by=group_by.value,
            model=model,
            api_key=key,
            front_door=front_door.value if front_door else None,
        )
    )
    with open_database(settings_from()) as database:
        report = guarded(lambda: UsageReports(database).report(query, viewer=OPERATOR))
    if as_json:
        print_json(report.as_json())
        return
    _print_table(report)


def cost_text(cost: dict[str, Decimal]) -> str:
    """``0.0016 USD + 0.015 CNY``: each unit on its own, never summed."""
    if not cost:
        return "0"
    return " + ".join(f"{value.normalize():f} {unit}" for unit, value in sorted(cost.items()))


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _cells(figures: UsageFigures) -> list[str]:
    return [
        str(figures.requests),
        str(figures.errors),
        str(figures.aborted),
        str(figures.prompt_tokens),
        str(figures.completion_tokens),
        str(figures.total_tokens),
        str(figures.estimated_tokens),
        cost_text(figures.cost),
        _ms(figures.p50_latency_ms),
        _ms(figures.p50_ttft_ms),
    ]


def _print_table(report: UsageReport) -> None:
    from rich.table import Table
    from rich.text import Text

    from fengchao_chains.cli import stdout

    query = report.query
    by_key = query.group_by == "key"
    filters = ", ".join(f"{name}={value}" for name, value in query.filters().items())
    title = (
        f"usage {query.since:%Y-%m-%d %H:%M} to {query.until:%Y-%m-%d %H:%M} UTC"
        f" by {query.group_by}" + (f" ({filters})" if filters else "")
    )
    table = Table(title=Text(title), title_justify="left")
    heading = {"model": "model", "key": "api_key", "day": "day", "hour": "hour"}
    table.add_column(heading[query.group_by], overflow="fold")
    if by_key:
        table.add_column("name", overflow="fold")
    for column in ("requests", "errors", "aborted", "prompt", "completion", "total", "estimated"):
        table.add_column(column, justify="right")
    table.add_column("cost", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p50 ttft ms", justify="right")
    for row in report.rows:  # Text: a model id or key name is never read as rich markup
        labels = [row.group, *([row.name or ""] if by_key else [])]
        table.add_row(*(Text(cell) for cell in [*labels, *_cells(row.figures)]))
    table.add_section()
    labels = ["total", *([""] if by_key else [])]
    table.add_row(*(Text(cell) for cell in [*labels, *_cells(report.total)]), style="bold")
    stdout.print(table)
