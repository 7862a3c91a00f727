"""Usage reports over HTTP: ``GET /aigc/usage`` (a table), ``GET /aigc/usage/series`` (the
chart's data) and ``GET /usage``, a page for browsers that draws both.

Who sees what is decided by :mod:`fengchao_chains.gateway.usage_reports` from the verified
caller: a key sees its own usage, an admin key every key's.  Answers have the /aigc shape:
``{"status": 200, "msg": "执行成功", "data": ...}``; a bad parameter (unknown, repeated, or
a value the report refuses) is HTTP 445 ``{"status": 445, "msg": ...}``, asking for another
key's usage without being an admin is 403.

The page is signed in like the playground, with the ``fengchao_token`` cookie of ``/login``
(without it a browser is sent there and back).  Its script and the chart library (uPlot,
vendored under ``static/``, MIT) are served from this package, never from a CDN; the page's
Content-Security-Policy allows scripts from this server only, and its script puts every
text in with ``textContent``.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from fengchao_chains import __version__
from fengchao_chains.gateway.auth import Caller, CallerDep
from fengchao_chains.gateway.usage_reports import (
    FRONT_DOORS,
    GROUPINGS,
    UsageAccessError,
    UsageQuery,
    UsageQueryError,
    UsageReports,
    Viewer,
)
from fengchao_chains.server.deps import RuntimeDep

if TYPE_CHECKING:
    from fengchao_chains.runtime import Runtime

router = APIRouter(tags=["usage"])

REPORT_PARAMETERS = ("since", "until", "group_by", "model", "key", "front_door")
SERIES_PARAMETERS = ("since", "until", "model", "key", "front_door")
STATIC_FILES = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "usage.js": "text/javascript; charset=utf-8",
    "usage.css": "text/css; charset=utf-8",
}
_NO_STORE = {"Cache-Control": "no-store"}
_PAGE_HEADERS = _NO_STORE | {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


class BadParameter(Exception):
    """A query string the report cannot take (445)."""


class _Report(Protocol):
    def as_json(self) -> dict[str, Any]: ...


class _ReportMaker(Protocol):
    """``UsageReports.areport`` or ``UsageReports.aseries``."""

    def __call__(
        self, reports: UsageReports, query: UsageQuery, /, *, viewer: Viewer
    ) -> Awaitable[_Report]: ...


def _viewer(caller: Caller) -> Viewer:
    return Viewer(api_key=caller.api_key, admin=caller.admin)


def _usage_query(request: Request, allowed: tuple[str, ...]) -> UsageQuery:
    """The query from the query string: unknown or repeated parameters are refused, so a
    typo cannot silently widen a report."""
    given = request.query_params
    unknown = sorted(set(given.keys()) - set(allowed))
    if unknown:
        raise BadParameter(
            f"unknown parameter {unknown[0]!r}; the parameters are {', '.join(allowed)}"
        )
    repeated = [name for name in allowed if len(given.getlist(name)) > 1]
    if repeated:
        raise BadParameter(f"parameter {repeated[0]!r} is given more than once")
    try:
        return UsageQuery.parse(
            since=given.get("since"),
            until=given.get("until"),
            group_by=given.get("group_by"),
            model=given.get("model"),
            api_key=given.get("key"),
            front_door=given.get("front_door"),
        )
    except UsageQueryError as exc:
        raise BadParameter(str(exc)) from None


def _error(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"status": status, "msg": msg}, status_code=status, headers=_NO_STORE)


def _answer(data: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"status": 200, "msg": "执行成功", "data": data}, headers=_NO_STORE)


@router.get("/aigc/usage")
@router.get("/aigc/usage/", include_in_schema=False)
async def usage_report(request: Request, runtime: RuntimeDep, caller: CallerDep) -> JSONResponse:
    """Tokens, cost and outcomes per model, key, day or hour over a time range (UTC).

    Parameters: ``since``, ``until`` (ISO date or time, or ``<n>h``/``<n>d`` ago; default
    the last 7 days), ``group_by`` (model, key, day, hour), ``model``, ``key`` (an admin's
    filter; anyone else may only name their own) and ``front_door``.
    """
    return await _reported(request, runtime, caller, REPORT_PARAMETERS, UsageReports.areport)


@router.get("/aigc/usage/series")
async def usage_series(request: Request, runtime: RuntimeDep, caller: CallerDep) -> JSONResponse:
    """Tokens and cost per model per hour (ranges up to 2 days) or day, every bucket listed;
    the same parameters as ``/aigc/usage`` except ``group_by``."""
    return await _reported(request, runtime, caller, SERIES_PARAMETERS, UsageReports.aseries)


async def _reported(
    request: Request,
    runtime: Runtime,
    caller: Caller,
    allowed: tuple[str, ...],
    make: _ReportMaker,
) -> JSONResponse:
    """What both reports do: the query from the query string (``allowed`` parameters), the
    report the caller may see, a refused parameter as 445 and another key's usage as 403."""
    try:
        query = _usage_query(request, allowed)
        report = await make(UsageReports(runtime.database), query, viewer=_viewer(caller))
    except (BadParameter, UsageQueryError) as exc:
        return _error(445, str(exc))
    except UsageAccessError as exc:
        return _error(403, str(exc))
    return _answer(report.as_json())


# --------------------------------------------------------------------------- the page ----
@router.get("/usage", response_class=HTMLResponse)
async def usage_page(request: Request, caller: CallerDep) -> HTMLResponse:
    """The usage page: charts of tokens and cost over time per model, and the table."""
    root = html.escape(request.scope.get("root_path", ""), quote=True)
    key_filter = (
        '<label>key <input name="key" placeholder="every key"></label>' if caller.admin else ""
    )
    page = _PAGE.format(
        root=root,
        version=html.escape(__version__, quote=True),
        who=html.escape(caller.api_key) + (" (admin: every key)" if caller.admin else ""),
        groupings="".join(f'<option value="{g}">{g}</option>' for g in GROUPINGS),
        front_doors="".join(f'<option value="{d}">{d}</option>' for d in FRONT_DOORS),
        key_filter=key_filter,
    )
    return HTMLResponse(page, headers=_PAGE_HEADERS)


@router.get("/usage/static/{name}", include_in_schema=False)
async def usage_static(name: str) -> Response:
    """The page's script, style and the vendored chart library (a fixed list of files)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return _error(404, "no such file")
    return Response(
        _static_bytes(name),
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@cache
def _static_bytes(name: str) -> bytes:
    return (files("fengchao_chains.server") / "static" / name).read_bytes()


_PAGE = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fengchao · usage</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}/usage/static/uPlot.min.css?v={version}">
<link rel="stylesheet" href="{root}/usage/static/usage.css?v={version}">
<script src="{root}/usage/static/uPlot.iife.min.js?v={version}" defer></script>
<script src="{root}/usage/static/usage.js?v={version}" defer></script>
</head>
<body data-root="{root}">
<header>
<h1>fengchao usage</h1>
<span id="who">{who}</span>
<form method="post" action="{root}/logout"><button type="submit">Sign out</button></form>
</header>
<form id="range" method="get" action="{root}/usage">
<label>since <input name="since" placeholder="7d, 24h or 2026-11-01"></label>
<label>until <input name="until" placeholder="now"></label>
<label>group by <select name="group_by">{groupings}</select></label>
<label>model <input name="model" placeholder="every model"></label>
{key_filter}
<label>front door <select name="front_door">
<option value="">every one</option>{front_doors}</select></label>
<span class="presets">
<button type="submit" data-since="24h">24 hours</button>
<button type="submit" data-since="7d">7 days</button>
<button type="submit" data-since="30d">30 days</button>
<button type="submit" data-since="90d">90 days</button>
</span>
<button type="submit">Show</button>
</form>
<p id="error" hidden></p>
<p id="period"></p>
<div id="charts"></div>
<table id="table"></table>
</body>
</html>
"""
