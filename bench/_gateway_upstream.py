"""The upstream every target of bench/gateway.py calls: the tests' fake OpenAI, slowed down.

It answers every conversation with the same 20-token reply (so a stream is 20 content
chunks, plus OpenAI's role and finish chunks) after a fixed ``latency``, the stand-in for a
vendor's time to first token. ``chunk_interval`` spaces a stream's chunks out (the fake's
``event_interval``; the soak uses it to hold streams open). Requests are not recorded: the
tests' fake keeps every request in a list, which would grow for the whole run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fengchao_chains.testing.fakes._common import split_tokens
from fengchao_chains.testing.fakes.openai import FakeOpenAI

REPLY = (
    "Connection pools keep sockets warm, so each request skips the slow handshake"
    " and the whole answer starts sooner."
)
"""The answer to every request: 20 tokens by the fakes' tokenizer."""
REPLY_CHUNKS = len(split_tokens(REPLY))
REPLY_END = b"sooner"
"""The reply's last word: a body (or stream) holding it was answered in full."""
API_KEY = "sk-test"


@dataclass
class BenchUpstream(FakeOpenAI):
    """The fake OpenAI with a fixed latency before each answer and no request log."""

    latency: float = 0.05

    def record(self, **request: Any) -> None:
        """Keep nothing: a benchmark sends hundreds of thousands of requests."""

    async def chat(self, request: Request) -> Response:
        await asyncio.sleep(self.latency)
        return await super().chat(request)


def upstream_factory(latency: float, chunk_interval: float = 0.0) -> Callable[[], Any]:
    """Builds the upstream's ASGI app (called in the child process that serves it)."""

    def build() -> Any:
        upstream = BenchUpstream(
            api_keys={API_KEY},
            reply=lambda _text: REPLY,
            latency=latency,
            event_interval=chunk_interval,
        )
        return upstream.app

    return build
