"""What every fake vendor shares: credentials, scripted faults, deterministic replies.

A fake answers every conversation with a deterministic reply (by default it echoes the last
user message), counts tokens with a simple rule (one per CJK character, word or punctuation
mark), honours ``max_tokens`` (finish reason ``length``) and stop sequences, and refuses a
prompt longer than its ``context_window``. Tests script failures with :meth:`FakeVendor.inject`;
each request takes the next scripted fault, and each vendor's fake renders it in that
vendor's own error format.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from fengchao_chains.streaming import HangUpAwareStreamingResponse

_TOKEN = re.compile(r"\s*(?:[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]|\w+|[^\w\s])", re.UNICODE)


def split_tokens(text: str) -> list[str]:
    """The fake tokenizer: pieces that join back into ``text`` (minus trailing space)."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return len(split_tokens(text))


class Fault(StrEnum):
    """Failures a test can script; each fake renders them in its vendor's format."""

    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CONTEXT_TOO_LONG = "context_too_long"
    CONTENT_FILTERED = "content_filtered"
    MID_STREAM_ERROR = "mid_stream_error"
    CUT_STREAM = "cut_stream"
    SLOW = "slow"
    STALL = "stall"
    """A stream that sends ``after_chunks`` pieces, then nothing until the client leaves."""


@dataclass
class FaultSpec:
    fault: Fault
    retry_after: float | None = None
    delay: float = 0.0
    after_chunks: int = 2


@dataclass
class Reply:
    """One answer: the pieces a stream sends, and the figures for usage."""

    pieces: list[str]
    prompt_tokens: int
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, int]:
        """The usage in OpenAI's names, which most vendors use."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class Served:
    """The fake's own account of one answer: the messages it was sent, the prompt tokens it
    counted, the pieces (completion tokens) it has sent so far, and whether it finished (a
    stream the client left early has ``finished`` False and only the pieces sent). A stream
    is accounted when it starts and its entry grows as pieces go out."""

    messages: list[dict[str, Any]]
    prompt_tokens: int
    sent: list[str] = field(default_factory=list)
    finished: bool = False
    writing: bool = True
    """False once the stream's body ended, finished or not (a client hanging up ends it)."""

    @property
    def completion_tokens(self) -> int:
        return len(self.sent)


class StreamCut(Exception):
    """Raised inside a streaming body to drop the connection mid-stream."""


def echo(last_user_text: str) -> str:
    return f"Echo: {last_user_text}" if last_user_text else "Echo: (empty)"


@dataclass
class FakeVendor:
    """State shared by a fake's routes; subclasses add the vendor's routes in ``app``."""

    context_window: int = 8192
    reply: Callable[[str], str] = echo
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)
    """Every answer given, in the order they ended (the fakes that keep this account)."""
    _faults: deque[FaultSpec] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(
        self,
        fault: Fault | str,
        *,
        times: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        after_chunks: int = 2,
    ) -> None:
        """Make the next ``times`` requests fail with ``fault``."""
        spec = FaultSpec(
            Fault(fault), retry_after=retry_after, delay=delay, after_chunks=after_chunks
        )
        with self._lock:
            self._faults.extend([spec] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def next_fault(self) -> FaultSpec | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def record(self, **request: Any) -> None:
        with self._lock:
            self.requests.append(request)

    async def record_request(self, request: Request) -> Any:
        """Record ``request`` as it came (route, method, headers, and its body as JSON, or as
        text when it is not JSON) and return the body: for servers that answer a body that
        is not JSON themselves, after recording it."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        path = request.url.path
        headers = dict(request.headers)
        self.record(route=path, path=path, method=request.method, body=body, headers=headers)
        return body

    def account(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    @property
    def last_request(self) -> dict[str, Any]:
        return self.requests[-1]

    def compose(
        self,
        prompt_text: str,
        last_user_text: str,
        *,
        max_tokens: int | None = None,
        stop: Iterable[str] | str | None = None,
    ) -> Reply:
        """The reply to a conversation (``prompt_text`` is all of it, for usage)."""
        text = self.reply(last_user_text)
        finish = "stop"
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        for word in stops:
            if word and word in text:
                text = text[: text.index(word)]
        pieces = split_tokens(text)
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces, finish = pieces[:max_tokens], "length"
        return Reply(pieces, count_tokens(prompt_text), finish)

    def too_long(self, prompt_text: str) -> bool:
        return count_tokens(prompt_text) > self.context_window


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def sse_response(
    events: AsyncIterator[str], *, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """A ``text/event-stream`` answer from already framed events (cancelled as soon as the
    client hangs up, as a vendor stops generating), the events of a burst in one write."""
    return HangUpAwareStreamingResponse(
        in_bursts(events), media_type="text/event-stream", headers=headers
    )


async def in_bursts(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """``events``, those made without a wait between them joined into one piece. The
    response writes each piece it is given as it comes; a vendor that has several events
    ready sends them in one write, and the client reads them in one read (what the
    gateway's stream coalescing, and the bench's upstream, rely on). The events are made in
    a task of their own, and a burst is what has collected when this generator's turn
    comes."""
    pending: list[str] = []
    ready = asyncio.Event()
    finished = False

    async def make() -> None:
        nonlocal finished
        try:
            async for event in events:
                pending.append(event)
                ready.set()
        finally:
            finished = True
            ready.set()

    maker = asyncio.get_running_loop().create_task(make())
    try:
        while not finished or pending:
            await ready.wait()
            ready.clear()
            if pending:
                burst = "".join(pending)
                pending.clear()
                yield burst
        await maker  # its failure (a fault cutting the stream), after what came before it
    finally:
        if not maker.done():  # the client left: the events stop too
            maker.cancel()
            await asyncio.wait([maker])


async def spaced(events: AsyncIterator[str], interval: float) -> AsyncIterator[str]:
    """``events`` with ``interval`` seconds before each but the first."""
    first = True
    async for event in events:
        if interval and not first:
            await asyncio.sleep(interval)
        first = False
        yield event


async def paced(fault: FaultSpec | None) -> None:
    """Apply a SLOW fault's delay."""
    if fault is not None and fault.fault is Fault.SLOW and fault.delay:
        await asyncio.sleep(fault.delay)


def bearer(headers: Any) -> str:
    """The token of an ``Authorization: Bearer`` header ('' if absent)."""
    value = str(headers.get("authorization", ""))
    return value[7:].strip() if value.lower().startswith("bearer ") else value.strip()


def content_text(content: Any, *, block_type: str | None = None) -> str:
    """A message's text: a string as is, content blocks' ``text`` joined (only blocks of
    ``block_type`` when given); anything else is no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and (block_type is None or block.get("type") == block_type)
        )
    return ""


def conversation(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """An OpenAI-style message list's whole text (for usage and the context window) and its
    last user message's text (what the reply answers)."""
    prompt = "\n".join(content_text(m.get("content")) for m in messages)
    last_user = next(
        (content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
        "",
    )
    return prompt, last_user


def answer_fault(fault: FaultSpec | None) -> FaultSpec | None:
    """The fault that refuses the request itself; the stream faults (MID_STREAM_ERROR,
    CUT_STREAM) strike later, inside the answer's stream."""
    if fault is None or fault.fault in (Fault.MID_STREAM_ERROR, Fault.CUT_STREAM):
        return None
    return fault


def stream_error_at(fault: FaultSpec | None, n: int) -> bool:
    """Whether a stream fault strikes before piece ``n``: a CUT_STREAM raises
    :class:`StreamCut` here; True means send the vendor's error event and end the stream."""
    if fault is None or n != fault.after_chunks:
        return False
    if fault.fault is Fault.CUT_STREAM:
        raise StreamCut
    return fault.fault is Fault.MID_STREAM_ERROR


def retry_after(fault: FaultSpec | None) -> dict[str, str]:
    """The ``Retry-After`` header a scripted rate limit asks for (none if it names no wait)."""
    if fault is None or fault.retry_after is None:
        return {}
    return {"retry-after": str(fault.retry_after)}
