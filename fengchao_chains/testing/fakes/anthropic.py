"""A fake of Anthropic's Messages API (``POST /v1/messages``), Claude 3 era.

Auth by ``x-api-key`` (Anthropic's SDK 2.x sends the key as ``Authorization: Bearer``
instead, so that is accepted too); the ``anthropic-version`` header must be present (any
value). The 2024 request rules are enforced: ``max_tokens`` required, the system prompt
top-level only, messages starting with ``user`` and alternating. Answers carry a
``request-id`` header; the stream is named SSE events (``event: X`` + ``data: {...}``) from
``message_start`` to ``message_stop`` with no ``[DONE]``, input tokens in ``message_start``
and cumulative output tokens in ``message_delta``. Every fault is rendered as
``{"type": "error", "error": {"type": ..., "message": ...}}``, a mid-stream one as
``event: error``; :meth:`FakeAnthropic.overload` scripts 529 ``overloaded_error``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    FakeVendor,
    Fault,
    FaultSpec,
    Reply,
    bearer,
    content_text,
    new_id,
    paced,
    retry_after,
    sse_response,
    stream_error_at,
)

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
_REFUSALS = {
    Fault.UNAUTHORIZED,
    Fault.TOKEN_EXPIRED,
    Fault.RATE_LIMITED,
    Fault.SERVER_ERROR,
    Fault.CONTEXT_TOO_LONG,
    Fault.CONTENT_FILTERED,
}
"""Faults answered with an error instead of an answer (the others shape the answer)."""


def _text(content: Any) -> str:
    """A string, or the text of the ``text`` blocks (the only text Anthropic reads)."""
    return content_text(content, block_type="text")


def event(name: str, data: dict[str, Any]) -> str:
    """One named SSE event, framed as Anthropic sends it."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _prompt(body: dict[str, Any]) -> str:
    """All the text the model reads (system prompt included), for usage and the window."""
    parts = [_text(body.get("system")), *(_text(m.get("content")) for m in body["messages"])]
    return "\n".join(parts)


def _problems(body: Any) -> Iterator[str]:
    """Why the 2024 API would refuse ``body`` with a 400, first reason first."""
    if not isinstance(body, dict):
        yield "request body must be a JSON object"
        return
    if not body.get("model"):
        yield "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        yield "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        yield "messages: at least one message is required"
        return
    previous = None
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            yield (
                f'messages.{n}.role: Unexpected role "{role}". The Messages API accepts a'
                ' top-level `system` parameter, not "system" as an input message role.'
            )
        elif n == 0 and role != "user":
            yield 'messages: first message must use the "user" role'
        elif role == previous:
            yield (
                'messages: roles must alternate between "user" and "assistant", but found'
                f' multiple "{role}" roles in a row'
            )
        previous = role


@dataclass
class FakeAnthropic(FakeVendor):
    """Anthropic's protocol; ``api_keys`` are the keys it accepts."""

    api_keys: set[str] = field(default_factory=lambda: {"sk-ant-test"})
    context_window: int = 200_000
    _overloaded: int = 0

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    def overload(self, times: int = 1) -> None:
        """Make the next ``times`` requests fail with 529 ``overloaded_error`` (before any
        scripted :class:`Fault`)."""
        with self._lock:
            self._overloaded += times

    def clear_faults(self) -> None:
        super().clear_faults()
        with self._lock:
            self._overloaded = 0

    def _take_overload(self) -> bool:
        with self._lock:
            if self._overloaded:
                self._overloaded -= 1
                return True
            return False

    # ----------------------------------------------------------------- errors

    @staticmethod
    def error(
        status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return JSONResponse(
            body, status_code=status, headers={"request-id": new_id("req_"), **(headers or {})}
        )

    def fault_response(self, fault: FaultSpec | None, prompt: str) -> Response | None:
        kind = fault.fault if fault else None
        if kind in (Fault.UNAUTHORIZED, Fault.TOKEN_EXPIRED):
            return self.error(401, "authentication_error", "invalid x-api-key")
        if kind is Fault.RATE_LIMITED:
            return self.error(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
                retry_after(fault),
            )
        if kind is Fault.SERVER_ERROR:
            return self.error(500, "api_error", "Internal server error")
        if kind is Fault.CONTENT_FILTERED:
            return self.error(
                400, "invalid_request_error", "Output blocked by content filtering policy"
            )
        if kind is Fault.CONTEXT_TOO_LONG or self.too_long(prompt):
            return self.error(
                400,
                "invalid_request_error",
                f"prompt is too long: {max(self.context_window + 1, len(prompt.split()))}"
                f" tokens > {self.context_window} maximum",
            )
        return None

    def gatekeep(self, headers: Any) -> Response | None:
        """The key, the version header, then a scripted overload."""
        key = headers.get("x-api-key") or bearer(headers)
        if not key or key not in self.api_keys:
            message = "invalid x-api-key" if key else "x-api-key header is required"
            return self.error(401, "authentication_error", message)
        if not headers.get("anthropic-version"):
            return self.error(400, "invalid_request_error", "anthropic-version: header is required")
        if self._take_overload():
            return self.error(529, "overloaded_error", "Overloaded")
        return None

    def refusal(self, fault: FaultSpec | None, body: Any) -> Response | None:
        """A scripted refusal, a malformed request (the 2024 API's 400s), a prompt too long."""
        failed = self.fault_response(fault if fault and fault.fault in _REFUSALS else None, "")
        problem = next(_problems(body), None)
        if failed is None and problem is not None:
            failed = self.error(400, "invalid_request_error", problem)
        if failed is None:
            failed = self.fault_response(None, _prompt(body))
        return failed

    # ----------------------------------------------------------------- the route

    async def messages(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self.error(400, "invalid_request_error", "There was an error parsing the body")
        self.record(body=body, headers=dict(request.headers), path=request.url.path)
        refused = self.gatekeep(request.headers)
        if refused is not None:
            return refused
        fault = self.next_fault()
        await paced(fault)
        refused = self.refusal(fault, body)
        if refused is not None:
            return refused
        messages = body["messages"]
        last_user = next(
            (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        stops = body.get("stop_sequences") or []
        reply = self.compose(_prompt(body), last_user, max_tokens=body["max_tokens"], stop=stops)
        stop = self._stop(last_user, reply, stops)
        message_id = new_id("msg_")
        headers = {"request-id": new_id("req_")}
        if body.get("stream"):
            events = self.stream(body, reply, message_id=message_id, stop=stop, fault=fault)
            return sse_response(events, headers=headers)
        answer = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": stop[0],
            "stop_sequence": stop[1],
            "usage": {
                "input_tokens": reply.prompt_tokens,
                "output_tokens": reply.completion_tokens,
            },
        }
        return JSONResponse(answer, headers=headers)

    def _stop(self, last_user: str, reply: Reply, stops: list[str]) -> tuple[str, str | None]:
        """``stop_reason`` and ``stop_sequence``: which stop sequence (if any) cut the reply."""
        if reply.finish_reason != "stop":
            return _STOP_REASONS.get(reply.finish_reason, reply.finish_reason), None
        full = self.reply(last_user)
        hits = [(full.index(s), s) for s in stops if s and s in full]
        if hits:
            return "stop_sequence", min(hits)[1]
        return "end_turn", None

    async def stream(
        self,
        body: dict[str, Any],
        reply: Reply,
        *,
        message_id: str,
        stop: tuple[str, str | None],
        fault: FaultSpec | None,
    ) -> AsyncIterator[str]:
        start = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body["model"],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 1},
        }
        yield event("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        yield event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        yield event("ping", {"type": "ping"})
        for n, piece in enumerate(reply.pieces):
            if stream_error_at(fault, n):
                error = {"type": "overloaded_error", "message": "Overloaded"}
                yield event("error", {"type": "error", "error": error})
                return
            delta = {"type": "text_delta", "text": piece}
            yield event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop[0], "stop_sequence": stop[1]},
                "usage": {"output_tokens": reply.completion_tokens},
            },
        )
        yield event("message_stop", {"type": "message_stop"})
