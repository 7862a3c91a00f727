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

__all__ = ["ServerSentEvent", "aiter_events", "event_json", "iter_events"]

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


def iter_events(model: Exchange, response: urllib3.BaseHTTPResponse) -> Iterator[ServerSentEvent]:
    reader = _EventReader()
    try:
        while raw := response.read1(READ_SIZE):
            yield from reader.feed(raw)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during="stream broke off") from None
    yield from reader.end()


async def aiter_events(
    model: Exchange, response: aiohttp.ClientResponse
) -> AsyncIterator[ServerSentEvent]:
    reader = _EventReader()
    try:
        async for raw in response.content.iter_any():
            for event in reader.feed(raw):
                yield event
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during="stream broke off") from None
    for event in reader.end():
        yield event


def event_json(model: Exchange, event: ServerSentEvent) -> Any:
    """An event's data as JSON, or an :class:`UpstreamError` naming what arrived."""
    try:
        return loads_json(event.data)
    except ValueError:
        raise UpstreamError(
            f"unreadable stream event: {event.data[:200]!r}", vendor=model.vendor_name
        ) from None
