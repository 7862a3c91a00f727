"""The one SSE reader: httpx-sse's decoders over an opened stream (a urllib3 response for
sync calls, an aiohttp response for async ones: the same line splitting and event decoding).

httpx-sse follows the SSE spec, so ``data:{...}`` and ``data: {...}`` both parse, named
events (Anthropic) keep their names, and comments are skipped. What each vendor's events
mean is the job of that vendor's stream decoder; this module only turns a connection that
drops mid-stream into the project's error.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import urllib3
from httpx_sse import ServerSentEvent

# The decoders behind httpx-sse's EventSource, which only reads httpx responses; neither of
# our clients is httpx, so both sides split and decode with them directly (the version is
# pinned).
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from fengchao_chains.llms._http import TRANSPORT_ERRORS, Exchange, loads_json, transport_error
from fengchao_chains.llms.errors import UpstreamError

__all__ = ["ServerSentEvent", "aiter_event_batches", "event_json", "iter_event_batches"]

READ_SIZE = 65536
"""The most bytes one sync read returns; a read returns whatever has arrived."""


class _EventReader:
    """Bytes as they arrive in, events out (SSE is always UTF-8)."""

    def __init__(self) -> None:
        self._events, self._lines = SSEDecoder(), SSELineDecoder()
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, raw: bytes) -> Iterator[ServerSentEvent]:
        return self._decoded(self._lines.decode(self._text.decode(raw)))

    def end(self) -> Iterator[ServerSentEvent]:
        return self._decoded(
            self._lines.decode(self._text.decode(b"", final=True)) + self._lines.flush()
        )

    def _decoded(self, lines: list[str]) -> Iterator[ServerSentEvent]:
        for line in lines:
            if (event := self._events.decode(line)) is not None:
                yield event


def iter_event_batches(
    model: Exchange, response: urllib3.BaseHTTPResponse
) -> Iterator[list[ServerSentEvent]]:
    """The stream's events, grouped by the network read that completed them (a read that
    completes none yields nothing): a caller may treat the events of one read as arrived
    together."""
    reader = _EventReader()
    try:
        while raw := response.read1(READ_SIZE):
            if events := list(reader.feed(raw)):
                yield events
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during="stream broke off") from None
    if events := list(reader.end()):
        yield events


async def aiter_event_batches(
    model: Exchange, response: aiohttp.ClientResponse
) -> AsyncIterator[list[ServerSentEvent]]:
    """As :func:`iter_event_batches`; a read returns everything that has arrived since the
    last one, so a vendor's burst (or a backlog while the loop was busy) is one batch."""
    reader = _EventReader()
    try:
        async for raw in response.content.iter_any():
            if events := list(reader.feed(raw)):
                yield events
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during="stream broke off") from None
    if events := list(reader.end()):
        yield events


def event_json(model: Exchange, event: ServerSentEvent) -> Any:
    """An event's data as JSON, or an :class:`UpstreamError` naming what arrived."""
    try:
        return loads_json(event.data)
    except ValueError:
        raise UpstreamError(
            f"unreadable stream event: {event.data[:200]!r}", vendor=model.vendor_name
        ) from None
