"""A fake of OpenAI's chat completions API (``POST /v1/chat/completions``).

Bearer auth; the JSON answer and ``data: {chunk}`` ... ``data: [DONE]`` stream of the
OpenAI SDK, with the extra usage chunk (empty ``choices``) when the request sets
``stream_options.include_usage``; OpenAI's error bodies and status codes.
Subclasses reuse it for OpenAI-compatible vendors (Ark v3, Moonshot) by changing the prefix
and a few hooks.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
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
    StreamCut,
    bearer,
    new_id,
    paced,
    sse_response,
)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


@dataclass
class FakeOpenAI(FakeVendor):
    """OpenAI's protocol; ``api_keys`` are the keys it accepts."""

    api_keys: set[str] = field(default_factory=lambda: {"sk-test"})
    prefix: str = "/v1"

    # ----------------------------------------------------------------- hooks for subclasses

    def routes(self) -> list[Route]:
        return [Route(f"{self.prefix}/chat/completions", self.chat, methods=["POST"])]

    def error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        headers = {"x-request-id": new_id("req_"), **(headers or {})}
        return JSONResponse(body, status_code=status, headers=headers)

    def usage(self, reply: Reply) -> dict[str, int]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.total_tokens,
        }

    def final_usage_chunks(
        self, base: dict[str, Any], reply: Reply, body: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """OpenAI sends usage in an extra chunk only when asked."""
        if not (body.get("stream_options") or {}).get("include_usage"):
            return []
        return [{**base, "choices": [], "usage": self.usage(reply)}]

    # ----------------------------------------------------------------- the app

    @property
    def app(self) -> Starlette:
        return Starlette(routes=self.routes())

    def fault_response(self, fault: FaultSpec | None, prompt: str) -> Response | None:
        """The error answer for a scripted fault or a prompt over the context window."""
        kind = fault.fault if fault else None
        if kind in (Fault.UNAUTHORIZED, Fault.TOKEN_EXPIRED):
            return self.error(
                401,
                "Incorrect API key provided: sk-****.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if kind is Fault.RATE_LIMITED:
            headers = (
                {"retry-after": str(fault.retry_after)}
                if fault and fault.retry_after is not None
                else {}
            )
            return self.error(
                429, "Rate limit reached for requests.", "requests", "rate_limit_exceeded", headers
            )
        if kind is Fault.SERVER_ERROR:
            return self.error(
                500, "The server had an error while processing your request.", "server_error", None
            )
        if kind is Fault.CONTENT_FILTERED:
            return self.error(
                400,
                "The response was filtered due to the prompt triggering"
                " the content management policy.",
                "invalid_request_error",
                "content_filter",
            )
        if kind is Fault.CONTEXT_TOO_LONG or self.too_long(prompt):
            return self.error(
                400,
                f"This model's maximum context length is {self.context_window} tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            )
        return None

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        token = bearer(request.headers)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
            )
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        self.record(body=body, headers=dict(request.headers), path=request.url.path, peer=peer)
        fault = self.next_fault()
        await paced(fault)
        if token not in self.api_keys:
            fault = FaultSpec(Fault.UNAUTHORIZED)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or "model" not in body:
            return self.error(
                400, "'messages' and 'model' are required.", "invalid_request_error", None
            )
        prompt = "\n".join(_text(m.get("content")) for m in messages)
        last_user = next(
            (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        failed = self.fault_response(
            fault
            if fault and fault.fault not in (Fault.MID_STREAM_ERROR, Fault.CUT_STREAM)
            else None,
            prompt,
        )
        if failed is not None:
            return failed
        reply = self.compose(
            prompt, last_user, max_tokens=body.get("max_tokens"), stop=body.get("stop")
        )
        headers = {"x-request-id": new_id("req_")}
        completion_id = new_id("chatcmpl-")
        if body.get("stream"):
            events = self.stream(completion_id, body, reply, fault)
            return sse_response(events, headers=headers)
        answer = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": self.usage(reply),
        }
        return JSONResponse(answer, headers=headers)

    async def stream(
        self, completion_id: str, body: dict[str, Any], reply: Reply, fault: FaultSpec | None
    ) -> AsyncIterator[str]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        for n, piece in enumerate(reply.pieces):
            if fault and n == fault.after_chunks:
                if fault.fault is Fault.CUT_STREAM:
                    raise StreamCut
                if fault.fault is Fault.MID_STREAM_ERROR:
                    error = {
                        "error": {
                            "message": "The server had an error while processing your request.",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                    yield f"data: {json.dumps(error)}\n\n"
                    return
            yield chunk({"content": piece})
        yield self.finish_chunk(base, extra, reply)
        for final in self.final_usage_chunks(base, reply, body):
            yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"

    def finish_chunk(self, base: dict[str, Any], extra: dict[str, Any], reply: Reply) -> str:
        choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reply.finish_reason}
        return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"
