"""The gateway's ASGI application: FastAPI, plus a direct lane for the chat routes and an
access log written after the answer has left.

**Direct lane.** A request reaches a FastAPI endpoint through Starlette's error and
exception middleware, the router's matching over ~100 routes, and FastAPI's request
handler; at low load that path costs about 0.25 ms of a chat answer's ~2.5 ms of gateway
time (measured with marks in the server, docs/benchmarks.md). The chat endpoints take only
the :class:`~starlette.requests.Request` and answer every failure of their own, so a POST
to one of their paths is handed straight to it. Everything else, and every request once
any middleware is added to the app, takes the usual path. The routes stay registered with
FastAPI as well (the OpenAPI schema, and the usual path when the lane is off).

**Access log.** uvicorn logs a request before it writes the answer's head, so the line's
formatting and its write to stderr delay the answer. :class:`GatewayApp` logs uvicorn's
line, plus the time to the answer's last byte, on the loop's next turn instead, once the
answer has been written, on ``fengchao_chains.access`` (masked like uvicorn's,
by :mod:`~fengchao_chains.server.auth_routes`); ``fengchao serve`` turns uvicorn's own access
log off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from fengchao_chains.logging_setup import log_after_turn

Endpoint = Callable[[Request], Awaitable[Response]]
access_logger = logging.getLogger("fengchao_chains.access")


class GatewayApp(FastAPI):
    """FastAPI with :meth:`direct_route` and an optional deferred access log."""

    def __init__(self, *args: Any, access_log: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = access_log
        self._direct: dict[str, Endpoint] = {}

    def direct_route(self, path: str, endpoint: Endpoint) -> None:
        """Serve POST ``path`` with ``endpoint`` without the middleware and the router.
        ``endpoint`` must answer its own failures (an escaping exception is still handled
        by the app's exception handlers, else answered 500 and re-raised)."""
        self._direct[path] = endpoint

    @property
    def direct_paths(self) -> frozenset[str]:
        return frozenset(self._direct)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if not self.access_log:
            await self._route(scope, receive, send)
            return
        access = _AccessLog(scope, send)
        try:
            await self._route(scope, receive, access)
        finally:
            access.done()  # also a request that failed, or whose client left mid-answer

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._direct.get(scope["path"]) if scope["method"] == "POST" else None
        if endpoint is None or self.user_middleware:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self._serve_direct(endpoint, scope, receive, send)

    async def _serve_direct(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        request = Request(scope, receive, send)
        try:
            try:
                response = await endpoint(request)
            except Exception as exc:
                handler = self._exception_handler(exc)
                if handler is None:
                    raise
                if asyncio.iscoroutinefunction(handler):
                    response = await handler(request, exc)
                else:  # as Starlette runs a plain function's handler
                    response = await run_in_threadpool(handler, request, exc)
            await response(scope, receive, sending)
        except Exception:
            if not started:  # as Starlette's ServerErrorMiddleware answers
                await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
            raise

    def _exception_handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The handler the app registered for ``exc``'s class or its nearest base."""
        for cls in type(exc).__mro__:
            if (handler := self.exception_handlers.get(cls)) is not None:
                return handler
        return None


class _AccessLog:
    """``send`` that notes the status and, once the last body part is handed over, logs
    the request on the event loop's next turn (after the answer's bytes are written)."""

    __slots__ = ("logged", "scope", "send", "started", "status")

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope = scope
        self.send = send
        self.started = time.perf_counter()
        self.status = 0
        self.logged = False

    async def __call__(self, message: Message) -> None:
        await self.send(message)
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.done()

    def done(self) -> None:
        """Log the request (once), on the loop's next turn: uvicorn's line, plus the time to
        the answer's last byte."""
        if self.logged:
            return
        self.logged = True
        scope = self.scope
        client = scope.get("client")
        path = quote(scope["path"])
        if query := scope.get("query_string"):
            path = f"{path}?{query.decode('latin-1')}"
        log_after_turn(
            access_logger,
            logging.INFO,
            '%s - "%s %s HTTP/%s" %d %.1fms',
            f"{client[0]}:{client[1]}" if client else "",
            scope["method"],
            path,
            scope.get("http_version", "1.1"),
            self.status,
            (time.perf_counter() - self.started) * 1000,
        )
