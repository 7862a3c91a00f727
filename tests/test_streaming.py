"""The gateway's streaming response, driven through its ASGI interface: each piece goes out as
it comes (a last piece with the end), the head with the first, nothing waits for more, a
hang-up cancels the body, a failing body has its earlier pieces written first, and a slow
client holds the body back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response

from fengchao_chains.streaming import HangUpAwareStreamingResponse, LastPiece

SCOPE = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET", "headers": []}


class Client:
    """The server side of one response: what was sent, when, and a disconnect on demand."""

    def __init__(self, *, send_delay: asyncio.Event | None = None) -> None:
        self.messages: list[MutableMapping[str, Any]] = []
        self.sent_at: list[float] = []
        self.gone = asyncio.Event()
        self.send_delay = send_delay

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self.send_delay is not None and message["type"] == "http.response.body":
            await self.send_delay.wait()
        self.messages.append(message)
        self.sent_at.append(time.perf_counter())

    @property
    def bodies(self) -> list[MutableMapping[str, Any]]:
        return [m for m in self.messages if m["type"] == "http.response.body"]


async def respond(body: AsyncIterator[str | bytes], client: Client, **options: Any) -> None:
    response = HangUpAwareStreamingResponse(body, media_type="text/event-stream", **options)
    await response(SCOPE, client.receive, client.send)


async def test_a_last_piece_carries_the_end_of_the_body_in_its_write() -> None:
    async def burst() -> AsyncIterator[str | bytes]:
        yield "data: 0\n\n"
        yield LastPiece(b"data: 1\n\ndata: [DONE]\n\n")

    client = Client()
    await respond(burst(), client)
    assert client.messages[0]["type"] == "http.response.start"
    assert client.bodies == [
        {"type": "http.response.body", "body": b"data: 0\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"data: 1\n\ndata: [DONE]\n\n", "more_body": False},
    ]
    assert type(client.bodies[1]["body"]) is bytes  # what the server is given is plain bytes


async def test_without_a_last_piece_the_end_is_a_write_of_its_own() -> None:
    async def burst() -> AsyncIterator[str]:
        for i in range(3):
            yield f"data: {i}\n\n"

    client = Client()
    await respond(burst(), client)
    pieces = [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [m["body"] for m in client.bodies] == pieces
    assert [m["more_body"] for m in client.bodies] == [True, True, True, False]


async def test_a_piece_after_the_last_is_an_error() -> None:
    async def wrong() -> AsyncIterator[bytes]:
        yield LastPiece(b"data: end\n\n")
        yield b"data: more\n\n"

    client = Client()
    with pytest.raises(RuntimeError, match="after its LastPiece"):
        await respond(wrong(), client)
    assert len(client.bodies) == 1


async def test_a_piece_is_written_as_soon_as_the_body_waits() -> None:
    yielded: list[float] = []

    async def spaced() -> AsyncIterator[str]:
        for i in range(5):
            yielded.append(time.perf_counter())
            yield f"data: {i}\n\n"
            await asyncio.sleep(0.03)

    client = Client()
    await respond(spaced(), client)
    pieces = [m for m in client.bodies if m["body"]]
    assert [m["body"] for m in pieces] == [f"data: {i}\n\n".encode() for i in range(5)]
    # each went out before the next was made (the body sleeps 30 ms between them)
    for sent, next_made in zip(client.sent_at[1:], yielded[1:], strict=False):
        assert sent < next_made


async def test_the_head_goes_out_with_the_first_piece() -> None:
    made: list[float] = []

    async def late() -> AsyncIterator[str]:
        await asyncio.sleep(0.05)  # the upstream call
        made.append(time.perf_counter())
        yield "data: first\n\n"

    client = Client()
    await respond(late(), client)
    head, first = client.messages[0], client.messages[1]
    assert head["type"] == "http.response.start" and head["status"] == 200
    assert first["body"] == b"data: first\n\n"
    assert client.sent_at[0] >= made[0]  # not sent while the body was still waiting
    assert client.sent_at[1] - client.sent_at[0] < 0.01


async def test_the_head_waits_for_a_slow_first_piece_only_so_long() -> None:
    async def slow() -> AsyncIterator[str]:
        await asyncio.sleep(0.4)  # a model slow to its first token
        yield "data: first\n\n"

    client = Client()
    started = time.perf_counter()
    await respond(slow(), client, head_hold=0.05)
    assert client.messages[0]["type"] == "http.response.start"
    assert client.sent_at[0] - started < 0.3  # the head did not wait for the piece
    assert client.sent_at[1] - started >= 0.4
    assert client.bodies == [
        {"type": "http.response.body", "body": b"data: first\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


async def test_a_body_failing_after_the_hold_sent_the_head_is_not_answered_again() -> None:
    client = Client()
    with pytest.raises(RuntimeError, match="vendor gone"):  # the head went out alone first
        await respond(
            refused("vendor gone", after=0.1), client, head_hold=0.02, early_failure=_never
        )
    assert [m["type"] for m in client.messages] == ["http.response.start"]


async def refused(message: str, *, after: float = 0) -> AsyncIterator[str]:
    """A body whose upstream call fails before its first piece."""
    pieces: list[str] = []
    await asyncio.sleep(after)
    if not pieces:
        raise RuntimeError(message)
    for piece in pieces:
        yield piece


async def test_a_body_failing_before_its_first_piece_leaves_the_response_unstarted() -> None:
    client = Client()
    with pytest.raises(RuntimeError, match="no connection"):
        await respond(refused("no connection"), client)
    assert client.messages == []  # so the server can still answer 500


async def test_without_a_hold_limit_the_head_waits_for_the_first_piece() -> None:
    async def slow() -> AsyncIterator[str]:
        await asyncio.sleep(0.3)
        yield "data: first\n\n"

    client = Client()
    started = time.perf_counter()
    await respond(slow(), client, head_hold=None)
    assert client.messages[0]["type"] == "http.response.start"
    assert client.bodies[0]["body"] == b"data: first\n\n"
    assert client.sent_at[0] - started >= 0.3  # the head went with the piece
    assert client.sent_at[0] == pytest.approx(client.sent_at[1], abs=0.05)


async def test_an_early_failure_gets_the_answer_early_failure_gives() -> None:
    answered: list[Exception] = []

    def early_failure(exc: Exception) -> Response:
        answered.append(exc)
        return JSONResponse({"error": str(exc)}, status_code=429)

    client = Client()
    ran: list[str] = []

    async def bookkeeping() -> None:
        ran.append("background")

    response = HangUpAwareStreamingResponse(
        refused("slow down", after=0.05),
        media_type="text/event-stream",
        background=BackgroundTask(bookkeeping),
        head_hold=None,
        early_failure=early_failure,
    )
    await response(SCOPE, client.receive, client.send)  # no error: it was answered
    assert [str(exc) for exc in answered] == ["slow down"]
    assert client.messages[0]["status"] == 429
    assert client.bodies[0]["body"] == b'{"error":"slow down"}'
    assert ran == ["background"]


async def test_a_failure_after_the_first_piece_is_not_answered_again() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "data: first\n\n"
        await asyncio.sleep(0.01)
        raise RuntimeError("cut")

    client = Client()
    with pytest.raises(RuntimeError, match="cut"):
        await respond(broken(), client, head_hold=None, early_failure=_never)
    assert client.messages[0]["status"] == 200
    assert client.bodies[0]["body"] == b"data: first\n\n"


def _never(exc: Exception) -> Response:
    raise AssertionError(f"answered {exc!r} after the head")


async def test_an_empty_body_is_a_complete_response() -> None:
    async def empty() -> AsyncIterator[str]:
        pieces: list[str] = []
        for piece in pieces:
            yield piece

    client = Client()
    await respond(empty(), client)
    assert [m["type"] for m in client.messages] == ["http.response.start", "http.response.body"]
    assert client.bodies == [{"type": "http.response.body", "body": b"", "more_body": False}]


async def test_a_hang_up_cancels_the_body_at_once() -> None:
    closed: list[str] = []

    async def stalled() -> AsyncIterator[str]:
        try:
            yield "data: first\n\n"
            await asyncio.sleep(30)
            yield "data: never\n\n"
        finally:
            closed.append("closed")

    client = Client()
    task = asyncio.create_task(respond(stalled(), client))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    client.gone.set()
    await asyncio.wait_for(task, 2)
    assert time.perf_counter() - started < 0.5
    assert closed == ["closed"]
    assert [m["body"] for m in client.bodies] == [b"data: first\n\n"]  # and no end of body


async def test_a_failing_body_has_its_earlier_pieces_written_then_fails() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "data: a\n\n"
        yield "data: b\n\n"
        raise RuntimeError("upstream cut")

    client = Client()
    with pytest.raises(RuntimeError, match="upstream cut"):
        await respond(failing(), client)
    assert b"".join(m["body"] for m in client.bodies) == b"data: a\n\ndata: b\n\n"
    assert all(m["more_body"] for m in client.bodies)  # the body was never ended as complete


async def test_a_slow_client_holds_the_body_back() -> None:
    piece = "x" * 1024
    made = 0

    async def endless() -> AsyncIterator[str]:
        nonlocal made
        while made < 100:
            made += 1
            yield piece
            await asyncio.sleep(0)

    unblocked = asyncio.Event()
    client = Client(send_delay=unblocked)
    task = asyncio.create_task(respond(endless(), client))
    await asyncio.sleep(0.2)
    assert made == 1  # the first piece's write waits, and the body with it
    unblocked.set()
    await asyncio.wait_for(task, 5)
    assert sum(len(m["body"]) for m in client.bodies) == 100 * len(piece)


async def test_a_hang_up_while_a_write_waits_closes_the_body() -> None:
    closed: list[str] = []
    ran: list[str] = []

    async def pieces() -> AsyncIterator[str]:
        try:
            while True:
                yield "data: x\n\n"
        finally:
            closed.append("closed")

    async def bookkeeping() -> None:
        ran.append("background")

    client = Client(send_delay=asyncio.Event())  # a client that never reads
    task = asyncio.create_task(respond(pieces(), client, background=BackgroundTask(bookkeeping)))
    await asyncio.sleep(0.05)
    client.gone.set()
    await asyncio.wait_for(task, 2)
    assert closed == ["closed"]
    assert ran == ["background"]


async def test_a_cancellation_from_elsewhere_still_runs_the_background_and_propagates() -> None:
    ran: list[str] = []

    async def stalled() -> AsyncIterator[str]:
        yield "data: first\n\n"
        await asyncio.sleep(30)
        yield "data: never\n\n"

    async def bookkeeping() -> None:
        ran.append("background")

    client = Client()
    task = asyncio.create_task(respond(stalled(), client, background=BackgroundTask(bookkeeping)))
    await asyncio.sleep(0.05)
    task.cancel()  # the server shutting down, not the client leaving
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran == ["background"]
