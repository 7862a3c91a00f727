"""A fake of Baidu Qianfan's v1 API: OAuth access tokens and the wenxinworkshop chat route.

* ``POST /oauth/2.0/token?grant_type=client_credentials&client_id=AK&client_secret=SK``
  issues 30-day access tokens; a wrong AK or SK gets Baidu's
  ``{"error": "invalid_client", "error_description": ...}`` (HTTP 401).
* ``POST /rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}?access_token=...`` accepts any
  endpoint name (the preset models and user-deployed endpoints alike). Like the real
  service it answers every error with HTTP 200 and ``{"error_code", "error_msg"}``: an
  unknown token is 110, an expired one 111 (:meth:`FakeQianfan.expire_tokens` expires them
  all), and the message rules are enforced (odd count, user/assistant alternating from a
  user turn, no empty content) along with the documented parameter ranges.
* Streams are ``data: {...}`` events (one space), the last with ``is_end: true`` and no
  ``[DONE]``; every event carries usage, the intermediate ones with ``completion_tokens: 0``
  as observed on the real service, so only the last is the total. An error on a stream
  request is one plain JSON document, as on the real service.
* The answer's ``id`` ("as-...") is the request id; a ``Request_id`` header from the client
  (the qianfan SDK sends one) is echoed as ``X-Baidu-Request-Id``, as Baidu's gateway does.

Faults render as Qianfan does: RATE_LIMITED is error 18 (with ``Retry-After`` when the test
gives one), SERVER_ERROR 336000, CONTEXT_TOO_LONG 336103, UNAUTHORIZED 6 (no permission),
TOKEN_EXPIRED 111, CONTENT_FILTERED an answer flagged ``need_clear_history`` with
``ban_round: -1``, MID_STREAM_ERROR an ``error_code`` event after some chunks.
"""

from __future__ import annotations

import json
import time
import uuid
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
    paced,
    retry_after,
    sse_response,
    stream_error_at,
)

CHAT_ROUTE = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}"
TOKEN_LIFETIME = 2592000  # 30 days, as Baidu issues them


def _answer_id() -> str:
    return "as-" + uuid.uuid4().hex[:10]


def _qianfan_error(code: int, message: str, *, answer_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error_code": code, "error_msg": message}
    if answer_id:
        body["id"] = answer_id
    return body


@dataclass
class _Issued:
    ak: str
    expires_at: float


@dataclass
class FakeQianfan(FakeVendor):
    """Qianfan's v1 protocol; ``credentials`` maps each accepted AK to its SK."""

    credentials: dict[str, str] = field(default_factory=lambda: {"qf-ak": "qf-sk"})
    token_lifetime: int = TOKEN_LIFETIME
    tokens: dict[str, _Issued] = field(default_factory=dict)
    token_requests: int = 0

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (the chat route answers 111)."""
        with self._lock:
            for issued in self.tokens.values():
                issued.expires_at = 0.0

    def clear_tokens(self) -> None:
        """Forget every issued token (the chat route answers 110, "invalid")."""
        with self._lock:
            self.tokens.clear()

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth/2.0/token", self.token, methods=["POST"]),
                Route(CHAT_ROUTE, self.chat, methods=["POST"]),
            ]
        )

    # ----------------------------------------------------------------- OAuth

    async def token(self, request: Request) -> Response:
        params = dict(request.query_params)
        if not params.get("client_id"):  # lenient: a form body works too
            form = await request.form()
            params.update({k: str(v) for k, v in form.items()})
        with self._lock:
            self.token_requests += 1
        if params.get("grant_type") != "client_credentials":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "The authorization grant type is not supported",
                },
                status_code=400,
            )
        ak, sk = params.get("client_id", ""), params.get("client_secret", "")
        if ak not in self.credentials:
            return JSONResponse(
                {"error": "invalid_client", "error_description": "unknown client id"},
                status_code=401,
            )
        if self.credentials[ak] != sk:
            return JSONResponse(
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                status_code=401,
            )
        now = int(time.time())
        token = f"24.{uuid.uuid4().hex}.{self.token_lifetime}.{now}.282335-{abs(hash(ak)) % 10**8}"
        with self._lock:
            self.tokens[token] = _Issued(ak, time.time() + self.token_lifetime)
        return JSONResponse(
            {
                "refresh_token": "25." + uuid.uuid4().hex,
                "expires_in": self.token_lifetime,
                "session_key": uuid.uuid4().hex,
                "access_token": token,
                "scope": "public brain_all_scope ai_custom_yiyan_com wise_adapt",
                "session_secret": uuid.uuid4().hex,
            }
        )

    def token_error(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            issued = self.tokens.get(token)
        if issued is None:
            return _qianfan_error(110, "Access token invalid or no longer valid")
        if issued.expires_at <= time.time():
            return _qianfan_error(111, "Access token expired")
        return None

    # ----------------------------------------------------------------- chat

    async def chat(self, request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        token = request.query_params.get("access_token", "")
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.record(
            body=body,
            headers=dict(request.headers),
            path=request.url.path,
            endpoint=endpoint,
            access_token=token,
        )
        fault = self.next_fault()
        await paced(fault)
        refused = self.token_error(token)
        if refused is not None:
            return JSONResponse(refused)
        if not isinstance(body, dict):
            return JSONResponse(_qianfan_error(336002, "Invalid JSON"))
        answer_id = _answer_id()
        invalid = _invalid(body)
        if invalid is not None:
            return JSONResponse(_qianfan_error(invalid[0], invalid[1], answer_id=answer_id))
        messages = body["messages"]
        prompt = "\n".join([str(body.get("system") or "")] + [m["content"] for m in messages])
        failed = self.fault_response(fault, prompt, answer_id)
        if failed is not None:
            return failed
        reply = self.compose(
            prompt,
            messages[-1]["content"],
            max_tokens=body.get("max_output_tokens"),
            stop=body.get("stop"),
        )
        filtered = fault is not None and fault.fault is Fault.CONTENT_FILTERED
        # Baidu's gateway echoes the client's Request_id header (the qianfan SDK sends one).
        echoed = request.headers.get("request_id")
        headers = {"X-Baidu-Request-Id": echoed} if echoed else None
        if body.get("stream"):
            return sse_response(self.stream(answer_id, reply, fault), headers=headers)
        answer = {
            "id": answer_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "result": "" if filtered else reply.text,
            "is_truncated": reply.finish_reason == "length",
            "need_clear_history": filtered,
            "finish_reason": _finish(reply),
            "usage": _usage(reply, final=True),
        }
        if filtered:
            answer["ban_round"] = -1
        return JSONResponse(answer, headers=headers)

    def fault_response(
        self, fault: FaultSpec | None, prompt: str, answer_id: str
    ) -> Response | None:
        """The error answer (HTTP 200, Qianfan's body) for a fault or an over-long prompt."""
        kind = fault.fault if fault else None
        if kind is Fault.TOKEN_EXPIRED:
            return JSONResponse(_qianfan_error(111, "Access token expired"))
        if kind is Fault.UNAUTHORIZED:
            return JSONResponse(
                _qianfan_error(6, "No permission to access data", answer_id=answer_id)
            )
        if kind is Fault.RATE_LIMITED:
            return JSONResponse(
                _qianfan_error(18, "Open api qps request limit reached", answer_id=answer_id),
                headers=retry_after(fault),
            )
        if kind is Fault.SERVER_ERROR:
            return JSONResponse(_qianfan_error(336000, "Internal error", answer_id=answer_id))
        if kind is Fault.CONTEXT_TOO_LONG or self.too_long(prompt):
            return JSONResponse(
                _qianfan_error(336103, "Prompt tokens too long", answer_id=answer_id)
            )
        return None

    async def stream(
        self, answer_id: str, reply: Reply, fault: FaultSpec | None
    ) -> AsyncIterator[str]:
        created = int(time.time())
        filtered = fault is not None and fault.fault is Fault.CONTENT_FILTERED

        def event(n: int, text: str, *, end: bool) -> str:
            chunk: dict[str, Any] = {
                "id": answer_id,
                "object": "chat.completion",
                "created": created,
                "sentence_id": n,
                "is_end": end,
                "is_truncated": end and reply.finish_reason == "length",
                "result": text,
                "need_clear_history": filtered,
                "finish_reason": _finish(reply) if end else "normal",
                "usage": _usage(reply, final=end),
            }
            if filtered:
                chunk["ban_round"] = -1
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        if filtered:
            yield event(0, "", end=True)
            return
        for n, piece in enumerate(reply.pieces):
            if stream_error_at(fault, n):
                error = _qianfan_error(336000, "Internal error", answer_id=answer_id)
                yield f"data: {json.dumps(error)}\n\n"
                return
            yield event(n, piece, end=False)
        yield event(len(reply.pieces), "", end=True)


def _finish(reply: Reply) -> str:
    return "length" if reply.finish_reason == "length" else "normal"


def _usage(reply: Reply, *, final: bool) -> dict[str, int]:
    completion = reply.completion_tokens if final else 0
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + completion,
    }


def _invalid(body: dict[str, Any]) -> tuple[int, str] | None:
    """The real service's complaint about a request, if any (unknown keys and nulls are
    ignored, as the SDKs send some)."""
    return _invalid_messages(body.get("messages")) or _invalid_params(body)


def _invalid_messages(messages: Any) -> tuple[int, str] | None:
    if not isinstance(messages, list) or not messages:
        return 336003, "messages is empty"
    if len(messages) % 2 == 0:
        return 336006, "the length of messages must be an odd number"
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if index % 2 == 0 and role not in ("user", "function"):
            return (
                336006,
                "the role of message with even index in the messages must be user or function",
            )
        if index % 2 == 1 and role != "assistant":
            return 336006, "the role of message with odd index in the messages must be assistant"
        if not isinstance(message.get("content"), str) or not message["content"]:
            return 336003, "the content of message can not be empty"
    return None


_RANGES = [  # name, low, high, low included (temperature is (0, 1.0])
    ("temperature", 0.0, 1.0, False),
    ("top_p", 0.0, 1.0, True),
    ("penalty_score", 1.0, 2.0, True),
]


def _invalid_params(body: dict[str, Any]) -> tuple[int, str] | None:
    for name, low, high, low_included in _RANGES:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return 336003, f"{name} must be a number"
        if value < low or (value == low and not low_included) or value > high:
            bracket = "[" if low_included else "("
            return 336003, f"{name} range is {bracket}{low}, {high}]"
    stop = body.get("stop")
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > 4 or any(len(str(s)) > 20 for s in stop)
    ):
        return 336003, "stop must be a list of at most 4 strings of at most 20 characters"
    return None
