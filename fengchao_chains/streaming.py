"""A streaming response that notices at once when its client hangs up, and holds its head
for the first piece.

What Starlette's ``StreamingResponse`` does not do (measured on the gateway's streams,
docs/benchmarks.md):

- **Hang-ups.** Under an ASGI 2.4 server (uvicorn) Starlette learns of a disconnect only
  when its next write fails. A model that is slow to send its next piece (or a vendor that
  stalls) would keep the upstream call, and its bill, running until then. This response
  listens for ``http.disconnect`` while it streams and cancels the body when the client
  leaves: the upstream request is closed and the call is recorded as ``aborted`` with what
  it had consumed.
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

The body runs in the response's own task and each piece is sent as it comes: no second
task and no hand-over between them (one task hop fewer per stream, 0.04-0.06 ms at c=1,
docs/benchmarks.md, change 35). Every ``send`` is a write of its own (uvicorn writes each
message at once, and so does uvloop), so a body should yield what it has made together as
one piece, and may mark its last (:class:`LastPiece`) for the response's end to go out in
the same write: a stream that arrives in one network read leaves either front door in two
writes after its head (/aigc: its text line, then the closing line with the end; /v1: its
first events, then the last ones with the end). A slow client holds the body back through
the server's flow control: ``send`` waits while the socket's buffer is full.

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
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

HEAD_HOLD_SECONDS = 0.5
"""How long the response head waits for the first piece to go out with it."""


class LastPiece(bytes):
    """A body's last piece: the response's end goes out with it, in the same write, instead
    of in a write of its own. The body must yield nothing after it."""


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
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - an ASGI app runs in a task
        writer = _Writer(send, self.status_code, self.raw_headers, self.charset)
        hang_up = _HangUp(task)
        listener = asyncio.create_task(hang_up.listen(receive))
        hold = writer.hold(self.head_hold)
        try:
            try:
                await writer.write(self.body_iterator, head_now=self.head_hold == 0)
            except Exception as exc:
                if writer.head_sent or self.early_failure is None:
                    raise
                listener.cancel()
                await self.early_failure(exc)(scope, receive, send)
        except asyncio.CancelledError:
            if not hang_up.cancelled or task.uncancel() > 0:
                raise  # cancelled by someone else (the server shutting down): go on
        except OSError as exc:  # what servers other than uvicorn raise on a dead socket
            raise ClientDisconnect() from exc
        finally:
            listener.cancel()
            if hold is not None:
                hold.cancel()
            writer.withdraw_head()
            if self.background is not None:  # the request's bookkeeping: however it ended
                await self.background()


class _Writer:
    """The response's head, held until the first piece (or the hold's end), then its body."""

    def __init__(
        self, send: Send, status: int, headers: list[tuple[bytes, bytes]], charset: str
    ) -> None:
        self.send = send
        self.charset = charset
        self.head: Message = {"type": "http.response.start", "status": status, "headers": headers}
        self.head_sent = False
        """Whether the head is sent, or on its way (:meth:`hold`)."""
        self._head_on_its_way: asyncio.Task[None] | None = None

    def hold(self, seconds: float | None) -> asyncio.TimerHandle | None:
        """After ``seconds``, send the head alone if no piece has come by then."""
        if not seconds:
            return None
        return asyncio.get_running_loop().call_later(seconds, self._head_due)

    def _head_due(self) -> None:
        if not self.head_sent:
            self.head_sent = True
            self._head_on_its_way = asyncio.get_running_loop().create_task(self._head_alone())

    async def _head_alone(self) -> None:
        await self.send(self.head)

    def withdraw_head(self) -> None:
        """A head sent by the hold that has not gone out when the response ends stays
        unsent (the response failed or its client left)."""
        if self._head_on_its_way is not None:
            self._head_on_its_way.cancel()

    async def write(self, body: AsyncIterable[str | bytes | memoryview], *, head_now: bool) -> None:
        """The head (at once, or with the first piece), the body's pieces as they come, and
        the body's end (with a :class:`LastPiece`, else on its own)."""
        if head_now:
            await self._send_head()
        ended = False
        try:
            async for piece in body:
                data = piece.encode(self.charset) if isinstance(piece, str) else piece
                if not data:
                    continue
                if ended:
                    raise RuntimeError("the body went on after its LastPiece")
                ended = isinstance(data, LastPiece)
                await self._send_head()
                await self.send(
                    {"type": "http.response.body", "body": bytes(data), "more_body": not ended}
                )
        except BaseException:  # also a hang-up while a write waited: the body is closed now
            if isinstance(body, AsyncGenerator):
                await body.aclose()
            raise
        if not ended:
            await self._send_head()
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_head(self) -> None:
        """Send the head unless it has gone out; if the hold sent it, wait until it has."""
        if (on_its_way := self._head_on_its_way) is not None:
            self._head_on_its_way = None
            await on_its_way
        elif not self.head_sent:
            self.head_sent = True
            await self.send(self.head)


class _HangUp:
    """Cancels the response's task when its client disconnects."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelled = False

    async def listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.cancelled = True
        self.task.cancel()
