"""The one SSE reader: httpx-sse's decoder over an opened stream (an httpx response for sync
calls, an aiohttp response for async ones: the same line splitting and event decoding).

httpx-sse follows the SSE spec, so ``data:{...}`` and ``data: {...}`` both parse, named
events (Anthropic) keep their names, and comments are skipped. What each vendor's events
mean is the job of that vendor's stream decoder; this module only turns a connection that
drops mid-stream into the project's error.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
from httpx_sse import EventSource, ServerSentEvent

# The decoders behind httpx-sse's EventSource (which only reads httpx responses), so aiohttp
# streams are split and decoded by exactly the same code (the version is pinned).
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from fengchao_chains.llms._http import TRANSPORT_ERRORS, Exchange, transport_error
from fengchao_chains.llms.errors import UpstreamError

__all__ = ["ServerSentEvent", "aiter_events", "event_json", "iter_events"]


def iter_events(model: Exchange, response: httpx.Response) -> Iterator[ServerSentEvent]:
    try:
        yield from EventSource(response).iter_sse()
    except httpx.HTTPError as exc:
        raise transport_error(model, exc, during="stream broke off") from None


async def aiter_events(
    model: Exchange, response: aiohttp.ClientResponse
) -> AsyncIterator[ServerSentEvent]:
    events, lines = SSEDecoder(), SSELineDecoder()
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # SSE is always UTF-8
    try:
        async for raw in response.content.iter_any():
            for line in lines.decode(text.decode(raw)):
                if (event := events.decode(line)) is not None:
                    yield event
        for line in lines.decode(text.decode(b"", final=True)) + lines.flush():
            if (event := events.decode(line)) is not None:
                yield event
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during="stream broke off") from None


def event_json(model: Exchange, event: ServerSentEvent) -> Any:
    """An event's data as JSON, or an :class:`UpstreamError` naming what arrived."""
    try:
        return json.loads(event.data)
    except ValueError:
        raise UpstreamError(
            f"unreadable stream event: {event.data[:200]!r}", vendor=model.vendor_name
        ) from None
