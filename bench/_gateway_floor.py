"""The floor: the least a Python proxy adds on this machine.

A raw ASGI app under the same uvicorn (uvloop, httptools) as ``fengchao serve``, forwarding
each request's bytes to the upstream through one pooled aiohttp session and relaying the
answer's bytes back, with no parsing, authentication, accounting or model layer. Its added
latency is what the HTTP server, the client and the extra hop cost by themselves, the part
of every gateway cell that no gateway code can remove.

Run as ``uvicorn bench._gateway_floor:app`` with ``FLOOR_UPSTREAM`` (the upstream's base URL)
and ``FLOOR_AUTHORIZATION`` (the header it expects) in the environment.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_session: aiohttp.ClientSession | None = None


async def app(scope: Message, receive: Receive, send: Send) -> None:
    global _session  # noqa: PLW0603 - one pooled session for the process
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if _session is None:
        _session = aiohttp.ClientSession()
    headers = {
        "content-type": "application/json",
        "authorization": os.environ["FLOOR_AUTHORIZATION"],
    }
    url = os.environ["FLOOR_UPSTREAM"] + scope["path"]
    async with _session.post(url, data=body, headers=headers) as answer:
        content_type = answer.headers.get("content-type", "application/json").encode()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(b"content-type", content_type)],
            }
        )
        async for chunk in answer.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
