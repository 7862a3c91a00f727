"""A fake of the legacy InternLM puyu API (``POST /puyu/api/v1/chat/completion``).

What it speaks, and how sure we are (see ``fengchao_chains/llms/internlm.py`` and
``docs/vendors.md`` section 8a):

* The route, with the singular ``completion`` [OBS]; the token raw in ``Authorization``
  [OBS], or after ``Bearer `` (the successor API's form), checked against ``api_keys``.
* The seed's request: ``model`` and ``messages`` of ``{"role", "text"}`` are required (a
  message with ``content`` instead of ``text`` is refused); ``n``, ``temperature``,
  ``top_p``, ``disable_report``, ``plugins`` are accepted; ``max_tokens`` and ``stop`` are
  honoured [UNVERIFIED].
* The answer ``{"msgCode": "10000", "msg": "success", "data": {"id", "model", "created",
  "choices": [{"index", "text", "finish_reason"}], "usage"}}``: ``msg`` and
  ``data.choices[].text`` are evidenced [OBS], the rest is [UNVERIFIED]; ``send_usage=False``
  drops ``data.usage`` to play a vendor that reports none.
* No streaming (none is documented): a stream request gets the same JSON answer.
* Errors in the OpenXLab gateway's convention (the table embedded in the seed): HTTP 401
  and 429 (with ``Retry-After``) and 5xx carry ``{"msg", "data": null}``; business errors
  are HTTP 200 with ``msgCode "-1"`` and a ``msg`` saying what went wrong. A malformed
  request is an HTTP 400. Every answer has an ``x-request-id`` header [UNVERIFIED].

Faults: UNAUTHORIZED and TOKEN_EXPIRED are 401s, RATE_LIMITED a 429, SERVER_ERROR a 500,
CONTEXT_TOO_LONG and CONTENT_FILTERED are 200 business errors, MID_STREAM_ERROR (there is no
stream) is the generic 200 business error, CUT_STREAM drops the connection halfway through
the JSON answer, SLOW waits before answering.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    FakeVendor,
    Fault,
    FaultSpec,
    StreamCut,
    bearer,
    new_id,
    paced,
    retry_after,
)

ROLES = {"system", "user", "assistant"}

_HTTP_FAULTS: dict[Fault | None, tuple[int, str]] = {
    Fault.UNAUTHORIZED: (401, "Unauthorized: invalid token"),
    Fault.TOKEN_EXPIRED: (401, "Unauthorized: token expired"),
    Fault.SERVER_ERROR: (500, "Internal Server Error"),
}
_BUSINESS_FAULTS: dict[Fault | None, str] = {
    Fault.CONTENT_FILTERED: "sensitive content detected (内容安全审核未通过)",
    Fault.CONTEXT_TOO_LONG: "input too long: exceeds the maximum context length of the model",
    Fault.MID_STREAM_ERROR: "model inference failed, please retry",
}


@dataclass
class FakeInternLM(FakeVendor):
    """The puyu protocol; ``api_keys`` are the tokens it accepts."""

    api_keys: set[str] = field(default_factory=lambda: {"puyu-test-token"})
    prefix: str = "/puyu/api/v1"
    send_usage: bool = True

    @property
    def app(self) -> Starlette:
        routes = [Route(f"{self.prefix}/chat/completion", self.chat, methods=["POST"])]
        return Starlette(routes=routes)

    # ----------------------------------------------------------------- answers

    @staticmethod
    def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"x-request-id": new_id("puyu-req-"), **(extra or {})}

    def error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body: dict[str, Any] = {"msg": message, "data": None}
        if code is not None:
            body = {"msgCode": code, **body}
        return JSONResponse(body, status_code=status, headers=self._headers(headers))

    def business_error(self, message: str) -> Response:
        """An HTTP 200 whose envelope says the call failed."""
        return self.error(200, message, "-1")

    def fault_response(self, fault: FaultSpec | None, prompt: str) -> Response | None:
        """The error answer for a scripted fault or a prompt over the context window."""
        kind = fault.fault if fault else None
        if kind is Fault.RATE_LIMITED:
            return self.error(
                429, "Too Many Requests: rate limit exceeded", headers=retry_after(fault)
            )
        if kind in _HTTP_FAULTS:
            status, message = _HTTP_FAULTS[kind]
            return self.error(status, message)
        if kind in _BUSINESS_FAULTS:
            return self.business_error(_BUSINESS_FAULTS[kind])
        if self.too_long(prompt):
            return self.business_error(_BUSINESS_FAULTS[Fault.CONTEXT_TOO_LONG])
        return None

    @staticmethod
    def _invalid(body: Any) -> str | None:
        """Why a request body is malformed (None if it is fine)."""
        if not isinstance(body, dict) or not body.get("model"):
            return "model is required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages is required"
        for n, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return f"messages[{n}].role must be one of {sorted(ROLES)}"
            if not isinstance(message.get("text"), str):
                return f"messages[{n}].text is required"
        return None

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        token = bearer(request.headers)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.error(400, "invalid JSON body", "-1")
        self.record(body=body, headers=dict(request.headers), path=request.url.path)
        fault = self.next_fault()
        await paced(fault)
        if token not in self.api_keys:
            return self.error(401, "Unauthorized: invalid token")
        problem = self._invalid(body)
        if problem is not None:
            return self.error(400, problem, "-1")
        messages = body["messages"]
        prompt = "\n".join(m["text"] for m in messages)
        last_user = next((m["text"] for m in reversed(messages) if m["role"] == "user"), "")
        failed = self.fault_response(
            fault if fault and fault.fault is not Fault.CUT_STREAM else None, prompt
        )
        if failed is not None:
            return failed
        reply = self.compose(
            prompt, last_user, max_tokens=body.get("max_tokens"), stop=body.get("stop")
        )
        data: dict[str, Any] = {
            "id": new_id("puyu-"),
            "model": body["model"],
            "created": int(time.time()),
            "choices": [
                {"index": n, "text": reply.text, "finish_reason": reply.finish_reason}
                for n in range(max(1, int(body.get("n") or 1)))
            ],
        }
        if self.send_usage:
            data["usage"] = reply.usage()
        answer = {"msgCode": "10000", "msg": "success", "data": data}
        if fault is not None and fault.fault is Fault.CUT_STREAM:
            return StreamingResponse(
                _cut(json.dumps(answer, ensure_ascii=False)),
                media_type="application/json",
                headers=self._headers(),
            )
        return JSONResponse(answer, headers=self._headers())


async def _cut(text: str) -> AsyncIterator[str]:
    """Half of the answer, then a dropped connection."""
    yield text[: len(text) // 2]
    raise StreamCut
