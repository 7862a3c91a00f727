"""A streaming response that notices at once when its client hangs up and writes what is
ready in one piece.

What Starlette's ``StreamingResponse`` does not do (the first three measured on the
gateway's streams, docs/benchmarks.md):

- **Hang-ups.** Under an ASGI 2.4 server (uvicorn) Starlette learns of a disconnect only
  when its next write fails. A model that is slow to send its next piece (or a vendor that
  stalls) would keep the upstream call, and its bill, running until then. This response
  listens for ``http.disconnect`` while it streams, so the stream is cancelled when the
  client leaves: the upstream request is closed and the call is recorded as ``aborted`` with
  what it had consumed.
- **One write per burst, not per piece.** Starlette sends every piece the body yields as its
  own write (a system call, and a wake-up of the client, each). A vendor usually delivers
  several events in one network read, and the model's pieces then arrive together. Here the
  body is read by its own task into a buffer, and the response task writes whatever has
  collected each time it runs: the producer runs until it waits for the network, so
  everything that came in one read goes out in one write, and nothing is ever held back to
  wait for more. A slow client bounds the buffer (:data:`BUFFER_LIMIT`): the producer waits
  until the writer has drained it.
- **The head goes out with the first piece.** Starlette writes the status line and headers
  before the body starts, a whole upstream call ahead of the first piece, and so wakes the
  client twice. Here they wait for the first piece, for :data:`HEAD_HOLD_SECONDS` at most,
  and go out right before it: the client gets its data no later, with one wake-up fewer per
  stream (on this machine a write that wakes an idle reader costs 25-90 us of the writer's
  CPU). The hold is short because some clients time the head: the fengchao SDK retries a
  request whose head does not come within its timeout, and a retried stream is another
  upstream call. The wake-up saved is CPU that counts on a busy server; on an idle one the
  head's write costs least while the vendor works, so a caller may send it at once
  (``head_hold=0``: /aigc does while its server is not busy).
- **The background task runs however the stream ended.** Starlette's is skipped when a
  write fails; the gateway's finishes the model's run and settles the request's limits
  there, which a client that left must not skip.

A body that fails midway has what it yielded before the failure written first, then the
error propagates (the server closes the connection), as with Starlette's response. One that
fails before its first piece and within the hold leaves the response unstarted: the
response's ``early_failure`` answers instead (the gateway's ``/v1`` gives the error's HTTP
status and body), or without one the error propagates and the server answers 500. So a
front door can hand the response its stream before the vendor has answered, and set the
response up while the vendor works, yet still refuse with a status: with ``head_hold=None``
the head waits for the first piece however long that takes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Callable, Mapping

from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

BUFFER_LIMIT = 64 * 1024
"""Bytes the body may run ahead of a slow client before it waits."""
HEAD_HOLD_SECONDS = 0.5
"""How long the response head waits for the first piece to go out with it."""


class HangUpAwareStreamingResponse(StreamingResponse):
    def __init__(
        self,
        content: AsyncIterable[str | bytes | memoryview],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
        *,
        head_hold: float | None = HEAD_HOLD_SECONDS,
        early_failure: Callable[[Exception], Response] | None = None,
    ) -> None:
        """``head_hold``: how long the head waits for the first piece (None: until it comes
        or the body ends); ``early_failure``: the answer to a body that fails before its
        first piece, while the head is still unsent."""
        super().__init__(content, status_code, headers, media_type, background)
        self.head_hold = head_hold
        self.early_failure = early_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        head = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        pipe = _Pipe(self.charset)
        producer = asyncio.create_task(pipe.fill(self.body_iterator))
        listener = asyncio.create_task(_cancel_on_disconnect(receive, producer, pipe))
        answered = False  # the body's failure, by early_failure
        try:
            if not await pipe.drain(send, head, self.head_hold):
                listener.cancel()
                answered = await self._answer_early_failure(producer, scope, receive, send)
        except OSError as exc:  # what servers other than uvicorn raise on a dead socket
            raise ClientDisconnect() from exc
        finally:
            listener.cancel()
            if not producer.done():  # the writer failed: the body stops with it
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await (asyncio.wait([producer]) if answered else producer)
            if self.background is not None:  # the request's bookkeeping: however it ended
                await self.background()

    async def _answer_early_failure(
        self, producer: asyncio.Task[None], scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """The head unsent, a body that failed gets :attr:`early_failure`'s answer; whether
        it did."""
        if self.early_failure is None:
            return False
        await asyncio.wait([producer])
        failure = None if producer.cancelled() else producer.exception()
        if not isinstance(failure, Exception):
            return False
        await self.early_failure(failure)(scope, receive, send)
        return True


class _Pipe:
    """The pieces the body has yielded and the writer has not yet sent."""

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self.pieces: list[bytes] = []
        self.size = 0
        self.finished = False  # the body ended, normally or not
        self.failed = False
        self.hung_up = False
        self.head_due = False  # the head's hold is over
        self.ready = asyncio.Event()  # pieces to write, or the end
        self.room = asyncio.Event()  # the buffer is under the limit
        self.room.set()

    async def fill(self, body: AsyncIterable[str | bytes | memoryview]) -> None:
        try:
            async for piece in body:
                data = piece.encode(self.charset) if isinstance(piece, str) else bytes(piece)
                if not data:
                    continue
                self.pieces.append(data)
                self.size += len(data)
                self.ready.set()
                if self.size >= BUFFER_LIMIT:
                    self.room.clear()
                    await self.room.wait()
        except BaseException:
            self.failed = True
            raise
        finally:
            self.finished = True
            self.ready.set()

    async def drain(self, send: Send, head: Message, head_hold: float | None) -> bool:
        """Write what has collected each time there is some, until the body ends; ``head``
        (the response's start) goes right before the first write, or alone when the hold
        (``head_hold`` seconds; None: no limit) is over first. Whether the head was sent."""
        unsent: Message | None = head
        loop = asyncio.get_running_loop()
        hold = None if head_hold is None else loop.call_later(head_hold, self._head_due)
        try:
            while True:
                await self.ready.wait()
                self.ready.clear()
                finished = self.finished  # before taking: pieces may come while sending
                pieces, self.pieces, self.size = self.pieces, [], 0
                self.room.set()
                if self.hung_up or (self.failed and not pieces):
                    return unsent is None
                last = finished and not self.failed
                if unsent is not None and (pieces or last or self.head_due):
                    await send(unsent)
                    unsent = None
                if pieces or last:
                    body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    more = not last
                    await send({"type": "http.response.body", "body": body, "more_body": more})
                if finished:
                    return unsent is None
        finally:
            if hold is not None:
                hold.cancel()

    def _head_due(self) -> None:
        self.head_due = True
        self.ready.set()


async def _cancel_on_disconnect(
    receive: Receive, producer: asyncio.Task[None], pipe: _Pipe
) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    pipe.hung_up = True
    producer.cancel()
    pipe.ready.set()
