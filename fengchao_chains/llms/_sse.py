"""The one SSE reader: httpx-sse's decoder over an opened stream.

httpx-sse follows the SSE spec, so ``data:{...}`` and ``data: {...}`` both parse, named
events (Anthropic) keep their names, and comments are skipped. What each vendor's events
mean is the job of that vendor's stream decoder; this module only turns a connection that
drops mid-stream into the project's error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from fengchao_chains.llms._http import Exchange, transport_error
from fengchao_chains.llms.errors import UpstreamError

__all__ = ["ServerSentEvent", "aiter_events", "event_json", "iter_events"]


def iter_events(model: Exchange, response: httpx.Response) -> Iterator[ServerSentEvent]:
    try:
        yield from EventSource(response).iter_sse()
    except httpx.HTTPError as exc:
        raise transport_error(model, exc, during="stream broke off") from None


async def aiter_events(model: Exchange, response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in EventSource(response).aiter_sse():
            yield event
    except httpx.HTTPError as exc:
        raise transport_error(model, exc, during="stream broke off") from None


def event_json(model: Exchange, event: ServerSentEvent) -> Any:
    """An event's data as JSON, or an :class:`UpstreamError` naming what arrived."""
    try:
        return json.loads(event.data)
    except ValueError:
        raise UpstreamError(
            f"unreadable stream event: {event.data[:200]!r}", vendor=model.vendor_name
        ) from None
