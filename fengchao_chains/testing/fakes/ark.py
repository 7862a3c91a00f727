"""A fake of Volcengine Ark: v3 chat, the v3 bots route and the v2 bots route.

* ``POST /api/v3/chat/completions``: OpenAI's protocol (the OpenAI fake with Ark's prefix),
  ``model`` an endpoint id or model name.
* ``POST /api/v3/bots/chat/completions``: OpenAI-shaped, ``model`` = bot id, plus top-level
  ``references`` (on the first chunk of a stream) and ``bot_usage{model_usage, action_usage}``
  (in the answer, and in the final usage chunk when ``stream_options.include_usage``), as
  volcengine-ark-runtime's ``bot_chat`` types read them.
* ``POST /api/v2/bots/{bot_id}/chat``: seed 002's API: ``parameters`` nested, answer
  ``{req_id, choices[{message{content, references}}], usage{model_usage, action_usage}}``,
  stream ``data:{...}`` chunks of message increments ending ``data:[DONE]`` [UNVERIFIED
  framing], errors ``{req_id, error{code, code_n, message}}``.

Bearer API keys. Errors use Ark's codes and types (docs 82379/1299023): ``{"error": {"code",
"message", "param", "type"}}`` with an ``x-request-id`` header; a prompt over the context
window is ``400 InvalidParameter`` "Input length N exceeds the maximum length M" (as seen in
the wild). A mid-stream failure is a data chunk carrying ``error``, on every route.

A bot has two model calls (the answering endpoint and a planner) and one web search, so its
usage is a sum over ``model_usage`` and it always returns one reference.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    Fault,
    FaultSpec,
    Reply,
    answer_fault,
    bearer,
    conversation,
    new_id,
    paced,
    retry_after,
    sse_response,
    stream_error_at,
)
from fengchao_chains.testing.fakes.openai import FakeOpenAI

_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    429: "TooManyRequests",
    500: "InternalServerError",
}
_DEFAULT_CODES = {400: "InvalidParameter", 401: "AuthenticationError", 500: "InternalServiceError"}
_CODE_N = {  # MaaS-style numeric codes of the v2 bots API [UNVERIFIED values]
    "AuthenticationError": 1709701,
    "InvalidParameter": 1709600,
    "MissingParameter": 1709601,
    "SensitiveContentDetected": 1709804,
    "RateLimitExceeded.EndpointRPMExceeded": 1709802,
    "InternalServiceError": 1709500,
}


def request_id() -> str:
    """An id shaped like Ark's (``0217...`` plus hex)."""
    return f"0217{int(time.time() * 1000)}{new_id('')[:16]}"


@dataclass
class ArkFailure:
    """One error answer, rendered by each route in its own format."""

    status: int
    code: str
    message: str
    headers: dict[str, str]


@dataclass
class BotCall:
    """A bots request that passed the checks, with its reply."""

    bot_id: str
    body: dict[str, Any]
    reply: Reply
    references: list[dict[str, Any]]
    usage: dict[str, Any]
    fault: FaultSpec | None
    request_id: str


@dataclass
class FakeArk(FakeOpenAI):
    """Ark's protocols; ``api_keys`` are the keys it accepts."""

    prefix: str = "/api/v3"
    planner_tokens: tuple[int, int] = (12, 3)
    """Prompt and completion tokens of a bot's second (planning) model call."""
    mid_stream_code: str = "InternalServiceError"
    """The Ark code a ``MID_STREAM_ERROR`` chunk carries (e.g. an output content check:
    ``OutputTextSensitiveContentDetected``)."""

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            Route(f"{self.prefix}/bots/chat/completions", self.bot_v3, methods=["POST"]),
            Route("/api/v2/bots/{bot_id}/chat", self.bot_v2, methods=["POST"]),
        ]

    # ----------------------------------------------------------------- errors

    def error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Ark's error body; ``kind`` (OpenAI's type) is replaced by Ark's type."""
        rid = request_id()
        code = code or _DEFAULT_CODES.get(status, "InvalidParameter")
        body = {
            "error": {
                "code": code,
                "message": f"{message} Request id: {rid}",
                "param": "",
                "type": _TYPES.get(status, "BadRequest"),
            }
        }
        return JSONResponse(
            body, status_code=status, headers={"x-request-id": rid, **(headers or {})}
        )

    def failure(self, fault: FaultSpec | None, prompt: str) -> ArkFailure | None:
        """The error for a scripted fault or a prompt over the context window."""
        kind = fault.fault if fault else None
        if kind in (Fault.UNAUTHORIZED, Fault.TOKEN_EXPIRED):
            return ArkFailure(
                401,
                "AuthenticationError",
                "The API key or AK/SK in the request is missing or invalid.",
                {},
            )
        if kind is Fault.RATE_LIMITED:
            return ArkFailure(
                429,
                "RateLimitExceeded.EndpointRPMExceeded",
                "The Requests Per Minute (RPM) limit of the associated endpoint for your"
                " account has been exceeded.",
                retry_after(fault),
            )
        if kind is Fault.SERVER_ERROR:
            return ArkFailure(
                500,
                "InternalServiceError",
                "The service encountered an unexpected internal error.",
                {},
            )
        if kind is Fault.CONTENT_FILTERED:
            return ArkFailure(
                400,
                "SensitiveContentDetected",
                "The request failed because the input text may contain sensitive information.",
                {},
            )
        if kind is Fault.CONTEXT_TOO_LONG or self.too_long(prompt):
            length = max(self.context_window + 1, len(prompt.split()))
            return ArkFailure(
                400,
                "InvalidParameter",
                f"Input length {length} exceeds the maximum length {self.context_window}.",
                {},
            )
        return None

    def fault_response(self, fault: FaultSpec | None, prompt: str) -> Response | None:
        failed = self.failure(fault, prompt)
        return None if failed is None else self.v3_error(failed)

    def v3_error(self, failed: ArkFailure) -> Response:
        return self.error(failed.status, failed.message, "", failed.code, failed.headers)

    def mid_stream_error_chunk(self) -> str:
        """The v3 chat stream's error chunk, in Ark's words (``mid_stream_code``)."""
        return self.v3_error_chunk(self.mid_stream_failure())

    def v2_error(self, failed: ArkFailure) -> Response:
        rid = request_id()
        body = {
            "req_id": rid,
            "error": {
                "code": failed.code,
                "code_n": _CODE_N.get(failed.code, 1709600),
                "message": failed.message,
            },
        }
        headers = {"x-request-id": rid, **failed.headers}
        return JSONResponse(body, status_code=failed.status, headers=headers)

    # ----------------------------------------------------------------- bots

    def bot_references(self, query: str) -> list[dict[str, Any]]:
        """What the bot's web search 'found' for the last user message."""
        return [
            {
                "url": f"https://search.example.com/?q={quote(query)}",
                "logo_url": "https://search.example.com/logo.png",
                "site_name": "Example Search",
                "title": f"About {query}",
                "summary": f"A page about {query}.",
                "publish_time": "2024-05-21 10:00:00",
            }
        ]

    def bot_usage(self, bot_id: str, reply: Reply) -> dict[str, Any]:
        planner_in, planner_out = self.planner_tokens
        return {
            "model_usage": [
                {"name": f"ep-{bot_id}-answer", **reply.usage()},
                {
                    "name": f"ep-{bot_id}-planner",
                    "prompt_tokens": planner_in,
                    "completion_tokens": planner_out,
                    "total_tokens": planner_in + planner_out,
                },
            ],
            "action_usage": [{"name": "web_search", "search_count": 1}],
        }

    def totals(self, bot_usage: dict[str, Any]) -> dict[str, int]:
        models = bot_usage["model_usage"]
        prompt = sum(m["prompt_tokens"] for m in models)
        completion = sum(m["completion_tokens"] for m in models)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def bot_v3(self, request: Request) -> Response:
        call = await self.bot_call(request, None)
        if isinstance(call, ArkFailure):
            return self.v3_error(call)
        headers = {"x-request-id": call.request_id}
        base = {"id": call.request_id, "created": int(time.time()), "model": call.bot_id}
        if call.body.get("stream"):
            wants_usage = (call.body.get("stream_options") or {}).get("include_usage")
            events = self.v3_stream(base, call, call.usage if wants_usage else None)
            return sse_response(events, headers=headers)
        answer = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": call.reply.text},
                    "logprobs": None,
                    "finish_reason": call.reply.finish_reason,
                }
            ],
            "usage": self.totals(call.usage),
            "references": call.references,
            "bot_usage": call.usage,
            "metadata": {},
        }
        return JSONResponse(answer, headers=headers)

    async def bot_v2(self, request: Request) -> Response:
        call = await self.bot_call(request, request.path_params["bot_id"])
        if isinstance(call, ArkFailure):
            return self.v2_error(call)
        headers = {"x-request-id": call.request_id}
        if call.body.get("stream"):
            return sse_response(self.v2_stream(call), headers=headers)
        message = {"role": "assistant", "content": call.reply.text, "references": call.references}
        choice = {"index": 0, "message": message, "finish_reason": call.reply.finish_reason}
        answer = {"req_id": call.request_id, "choices": [choice], "usage": call.usage}
        return JSONResponse(answer, headers=headers)

    async def bot_call(self, request: Request, path_bot_id: str | None) -> BotCall | ArkFailure:
        """What both bots routes share: parsing, auth, faults and the reply."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            return ArkFailure(400, "InvalidParameter", "The request body is not valid JSON.", {})
        self.record(body=body, headers=dict(request.headers), path=request.url.path)
        fault = self.next_fault()
        await paced(fault)
        if bearer(request.headers) not in self.api_keys:
            fault = FaultSpec(Fault.UNAUTHORIZED)
        bot_id = path_bot_id or body.get("model")
        messages = body.get("messages")
        if not bot_id or not isinstance(messages, list) or not messages:
            return ArkFailure(
                400,
                "MissingParameter",
                "The request failed because it is missing one or multiple required parameters.",
                {},
            )
        prompt, last_user = conversation(messages)
        failed = self.failure(answer_fault(fault), prompt)
        if failed is not None:
            return failed
        params = (body.get("parameters") or {}) if path_bot_id else body
        reply = self.compose(
            prompt,
            last_user,
            max_tokens=params.get("max_tokens", params.get("max_new_tokens")),
            stop=params.get("stop"),
        )
        return BotCall(
            bot_id=str(bot_id),
            body=body,
            reply=reply,
            references=self.bot_references(last_user),
            usage=self.bot_usage(str(bot_id), reply),
            fault=fault,
            request_id=request_id(),
        )

    def stream_failure(self, fault: FaultSpec | None, n: int) -> ArkFailure | None:
        """Raise a cut, or return the error a stream sends as a chunk, at piece ``n``."""
        return self.mid_stream_failure() if stream_error_at(fault, n) else None

    def mid_stream_failure(self) -> ArkFailure:
        code = self.mid_stream_code
        if "Sensitive" in code:
            return ArkFailure(400, code, "The output text may contain sensitive information.", {})
        if code.startswith("RateLimitExceeded"):
            return ArkFailure(429, code, "The rate limit was exceeded mid-stream.", {})
        return ArkFailure(500, code, "The service encountered an unexpected internal error.", {})

    def v3_error_chunk(self, failed: ArkFailure) -> str:
        error = {
            "code": failed.code,
            "message": failed.message,
            "param": "",
            "type": _TYPES.get(failed.status, "BadRequest"),
        }
        return f"data: {json.dumps({'error': error})}\n\n"

    async def v3_stream(
        self, base: dict[str, Any], call: BotCall, usage: dict[str, Any] | None
    ) -> AsyncIterator[str]:
        base = {**base, "object": "chat.completion.chunk"}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

        # the references come first: the search runs before the answer
        yield chunk({"role": "assistant", "content": ""}, references=call.references)
        for n, piece in enumerate(call.reply.pieces):
            failed = self.stream_failure(call.fault, n)
            if failed is not None:
                yield self.v3_error_chunk(failed)
                return
            yield chunk({"role": "assistant", "content": piece})
        yield chunk({"role": "assistant", "content": ""}, call.reply.finish_reason)
        if usage is not None:
            final = {**base, "choices": [], "usage": self.totals(usage), "bot_usage": usage}
            yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"

    async def v2_stream(self, call: BotCall) -> AsyncIterator[str]:
        rid = call.request_id

        def chunk(message: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            full = {"role": "assistant", **message}
            choice = {"index": 0, "message": full, "finish_reason": finish}
            return f"data:{json.dumps({'req_id': rid, 'choices': [choice], **extra})}\n\n"

        yield chunk({"content": "", "references": call.references})
        for n, piece in enumerate(call.reply.pieces):
            failed = self.stream_failure(call.fault, n)
            if failed is not None:
                code_n = _CODE_N.get(failed.code, 1709500)
                error = {"code": failed.code, "code_n": code_n, "message": failed.message}
                yield f"data:{json.dumps({'req_id': rid, 'error': error})}\n\n"
                return
            yield chunk({"content": piece})
        yield chunk({"content": ""}, call.reply.finish_reason, usage=call.usage)
        yield "data:[DONE]\n\n"
