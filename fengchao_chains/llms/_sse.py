"""The one SSE reader: httpx-sse's decoders over an opened stream (a urllib3 response for
sync calls, an aiohttp response for async ones: the same line splitting and event decoding).

httpx-sse follows the SSE spec, so ``data:{...}`` and ``data: {...}`` both parse, named
events (Anthropic) keep their names, and comments are skipped; the common read of whole
one-line ``data:`` events takes a shortcut that decodes the same (:class:`EventReader`).
What each vendor's events mean is the job of that vendor's stream decoder; this module
only turns a connection that drops mid-stream into the project's error.
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

__all__ = [
    "EventReader",
    "ServerSentEvent",
    "aiter_event_batches",
    "event_json",
    "iter_event_batches",
]

READ_SIZE = 65536
"""The most bytes one sync read returns; a read returns whatever has arrived."""


class EventReader:
    """Bytes as they arrive in, events out (SSE is always UTF-8).

    Nearly every read of a vendor's stream is whole events of one ``data:`` line each, one
    event or a burst of them: such a read is split in one pass (:func:`_data_events`)
    instead of line by line, a quarter less work (a 24-event burst: 20 us against 28
    warm, 106 against 130 after 50 ms of idleness; docs/benchmarks.md, change 39).
    Anything else (a named event, an id, a retry, a comment, a CR, a read that ends
    inside an event) goes through httpx-sse's decoders, and the one-pass split is used
    again only once they hold nothing over and no event id has been seen: a read of whole
    ``data:`` events then decodes the same either way (a test holds the two to each other
    on random streams cut at random).
    """

    def __init__(self) -> None:
        self._events, self._lines = SSEDecoder(), SSELineDecoder()
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._between_events = True
        """Whether httpx-sse's decoders are as new: no part of a line or event held, no
        last event id (which every later event would carry)."""

    def feed(self, raw: bytes) -> list[ServerSentEvent]:
        text = self._text.decode(raw)
        if self._between_events and (events := _data_events(text)) is not None:
            return events
        events = self._decoded(self._lines.decode(text))
        self._between_events = self._decoders_as_new()
        return events

    def end(self) -> list[ServerSentEvent]:
        return self._decoded(
            self._lines.decode(self._text.decode(b"", final=True)) + self._lines.flush()
        )

    def _decoded(self, lines: list[str]) -> list[ServerSentEvent]:
        decode = self._events.decode
        return [event for line in lines if (event := decode(line)) is not None]

    def _decoders_as_new(self) -> bool:
        lines, events = self._lines, self._events
        # (httpx-sse's own fields, its version pinned; were they renamed, this says no)
        pending = (
            getattr(lines, "buffer", True),
            getattr(lines, "trailing_cr", True),
            getattr(events, "_event", True),
            getattr(events, "_data", True),
            getattr(events, "_last_event_id", True),
        )
        return not any(pending) and getattr(events, "_retry", 0) is None


def _data_events(text: str) -> list[ServerSentEvent] | None:
    """The events of a read that is whole events of one ``data:`` line each (what the SSE
    spec makes of them: data after one optional space, type ``message``, no id), or None
    for any other read."""
    if not text.endswith("\n\n") or "\r" in text:
        return None
    events = []
    for block in text[:-2].split("\n\n"):
        if not block.startswith("data:") or "\n" in block:
            return None
        data = block[5:]
        events.append(ServerSentEvent(data=data[1:] if data.startswith(" ") else data))
    return events


def iter_event_batches(
    model: Exchange, response: urllib3.BaseHTTPResponse
) -> Iterator[list[ServerSentEvent]]:
    """The stream's events, grouped by the network read that completed them (a read that
    completes none yields nothing): a caller may treat the events of one read as arrived
    together."""
    reader = EventReader()
    try:
        while raw := response.read1(READ_SIZE):
            if events := reader.feed(raw):
                yield events
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during="stream broke off") from None
    if events := reader.end():
        yield events


async def aiter_event_batches(
    model: Exchange, response: aiohttp.ClientResponse, reader: EventReader | None = None
) -> AsyncIterator[list[ServerSentEvent]]:
    """As :func:`iter_event_batches`; a read returns everything that has arrived since the
    last one, so a vendor's burst (or a backlog while the loop was busy) is one batch.
    ``reader``: one made while the vendor works (made after the wait, on a core that idled
    through it, a reader cost up to 0.06 ms at c=1; docs/benchmarks.md, change 39); None:
    a new one."""
    reader = reader if reader is not None else EventReader()
    try:
        async for raw in response.content.iter_any():
            if events := reader.feed(raw):
                yield events
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during="stream broke off") from None
    if events := reader.end():
        yield events


def event_json(model: Exchange, event: ServerSentEvent) -> Any:
    """An event's data as JSON, or an :class:`UpstreamError` naming what arrived."""
    try:
        return loads_json(event.data)
    except ValueError:
        raise UpstreamError(
            f"unreadable stream event: {event.data[:200]!r}", vendor=model.vendor_name
        ) from None
