"""A fake of Zhipu AI's chat completions API (``POST /api/paas/v4/chat/completions``).

Authentication is checked the way Zhipu does: ``Authorization`` carries either the plain
``id.secret`` key (what the official SDK sends by default) or a JWT signed with the key's
secret (``Bearer <jwt>`` from the SDK with token caching, a bare ``<jwt>`` from LangChain's
``ChatZhipuAI``). The JWT is verified here by hand, independently of PyJWT: header
``alg=HS256`` and ``sign_type=SIGN``, HMAC-SHA256 signature with the secret of the key id in
the ``api_key`` claim, and ``exp`` in milliseconds still in the future. Anything else gets
Zhipu's 401 with a 100x code.

Answers, stream chunks (``data: {...}``, the finish chunk with the usage, ``data: [DONE]``)
and errors (``{"error": {"code": "<numeric string>", "message": ...}}``) follow vendors.md
section 1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
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
    conversation,
    paced,
    retry_after,
    sse_response,
    stream_error_at,
)

PREFIX = "/api/paas/v4"

MESSAGES = {
    "500": "内部错误。",
    "1000": "身份验证失败。",
    "1001": "Header中未收到Authentication参数，无法进行身份验证。",
    "1002": "Authorization Token非法，请确认Authorization Token正确传递。",
    "1003": "Authorization Token已过期，请重新生成/获取。",
    "1004": "提供的Authorization Token认证失败。",
    "1214": "参数非法。请检查文档。",
    "1261": "Prompt 超长",
    "1301": "系统检测到输入或生成内容可能包含不安全或敏感内容，请您避免输入易产生敏感内容的提"
    "示语，感谢您的配合。",
    "1113": "您的账户已欠费，请充值后重试。",
    "1211": "模型不存在，请检查模型代码。",
    "1302": "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。",
    "1305": "当前API请求过多，请稍后重试。",
}
"""Zhipu's messages for the codes the fake uses (exact wording UNVERIFIED)."""


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _task_id() -> str:
    """Zhipu's ids are 19-digit numbers as strings."""
    return str(10**18 + secrets.randbelow(9 * 10**18))


class Refusal(Exception):
    """A Zhipu error answer: HTTP status, business code, message (default: Zhipu's)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.status, self.code, self.message, self.headers = status, code, message, headers


_FAULT_CODES: dict[Fault | None, tuple[int, str]] = {
    Fault.UNAUTHORIZED: (401, "1000"),
    Fault.TOKEN_EXPIRED: (401, "1003"),
    Fault.RATE_LIMITED: (429, "1302"),
    Fault.SERVER_ERROR: (500, "500"),
    Fault.CONTENT_FILTERED: (400, "1301"),
    Fault.CONTEXT_TOO_LONG: (400, "1261"),
}


@dataclass
class FakeZhipu(FakeVendor):
    """Zhipu's protocol; ``api_keys`` are the ``id.secret`` keys it accepts."""

    api_keys: set[str] = field(default_factory=lambda: {"zhipu-test-id.zhipu-test-secret"})
    _coded: deque[tuple[int, str]] = field(default_factory=deque)

    def inject_error(self, status: int, code: str, *, times: int = 1) -> None:
        """Make the next ``times`` requests fail with Zhipu's business ``code`` (for codes
        the shared :class:`Fault` list has no name for, such as 1113 "in arrears")."""
        with self._lock:
            self._coded.extend([(status, code)] * times)

    def clear_faults(self) -> None:
        super().clear_faults()
        with self._lock:
            self._coded.clear()

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route(f"{PREFIX}/chat/completions", self.chat, methods=["POST"])])

    # ----------------------------------------------------------------- auth

    def check_auth(self, authorization: str) -> None:
        """Refuse an ``Authorization`` value the way Zhipu does (401 with a 100x code)."""
        value = authorization.strip()
        if value.lower().startswith("bearer "):
            value = value[7:].strip()
        if not value:
            raise Refusal(401, "1001")
        parts = value.split(".")
        if len(parts) == 2:
            if value not in self.api_keys:
                raise Refusal(401, "1000")
            return
        if len(parts) != 3:
            raise Refusal(401, "1002")
        self.check_jwt(*parts)

    def check_jwt(self, header_b64: str, claims_b64: str, signature_b64: str) -> None:
        try:
            header = json.loads(_unb64(header_b64))
            claims = json.loads(_unb64(claims_b64))
            signature = _unb64(signature_b64)
        except (ValueError, binascii.Error):
            raise Refusal(401, "1002") from None
        if not (isinstance(header, dict) and isinstance(claims, dict)):
            raise Refusal(401, "1002")
        if header.get("alg") != "HS256" or header.get("sign_type") != "SIGN":
            raise Refusal(401, "1002")
        known = {kid: sec for kid, _, sec in (key.partition(".") for key in self.api_keys)}
        secret = known.get(str(claims.get("api_key")))
        if secret is None:
            raise Refusal(401, "1000")
        signed = f"{header_b64}.{claims_b64}".encode()
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise Refusal(401, "1004")
        exp, timestamp = claims.get("exp"), claims.get("timestamp")
        if not isinstance(exp, int) or not isinstance(timestamp, int):
            raise Refusal(401, "1002")
        # Milliseconds: an exp written in seconds is long past by this measure.
        if exp <= int(time.time() * 1000):
            raise Refusal(401, "1003")

    # ----------------------------------------------------------------- errors

    @staticmethod
    def error(refusal: Refusal) -> Response:
        message = refusal.message or MESSAGES.get(refusal.code, "")
        body = {"error": {"code": refusal.code, "message": message}}
        return JSONResponse(body, status_code=refusal.status, headers=refusal.headers)

    def check_faults(self, fault: FaultSpec | None, prompt: str) -> None:
        """Raise the refusal for a scripted fault or a prompt over the context window."""
        with self._lock:
            coded = self._coded.popleft() if self._coded else None
        if coded is not None:
            raise Refusal(*coded)
        kind = fault.fault if fault else None
        if kind is Fault.RATE_LIMITED:
            raise Refusal(429, "1302", headers=retry_after(fault))
        if kind in _FAULT_CODES:
            raise Refusal(*_FAULT_CODES[kind])
        if self.too_long(prompt):
            raise Refusal(400, "1261")

    @staticmethod
    def check_body(body: Any) -> list[dict[str, Any]]:
        """The request's messages, after the checks Zhipu makes on the body."""
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            raise Refusal(400, "1213", "未正常接收到prompt参数。")
        if not body.get("model"):
            raise Refusal(400, "1213", "未正常接收到model参数。")
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise Refusal(400, "1214", f"{name}参数非法。请检查文档。")
        return [m for m in messages if isinstance(m, dict)]

    # ----------------------------------------------------------------- the route

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return self.error(Refusal(400, "1214", "请求体不是合法的JSON。"))
        self.record(body=body, headers=dict(request.headers), path=request.url.path)
        fault = self.next_fault()
        await paced(fault)
        try:
            self.check_auth(request.headers.get("authorization", ""))
            messages = self.check_body(body)
            prompt, last_user = conversation(messages)
            self.check_faults(fault, prompt)
        except Refusal as refusal:
            return self.error(refusal)
        reply = self.compose(
            prompt, last_user, max_tokens=body.get("max_tokens"), stop=body.get("stop")
        )
        task_id = _task_id()
        if body.get("stream"):
            return sse_response(self.stream(task_id, body, reply, fault))
        return JSONResponse(
            {
                "created": int(time.time()),
                "id": task_id,
                "request_id": str(body.get("request_id") or task_id),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": reply.finish_reason,
                        "message": {"role": "assistant", "content": reply.text},
                    }
                ],
                "usage": reply.usage(),
            }
        )

    async def stream(
        self, task_id: str, body: dict[str, Any], reply: Reply, fault: FaultSpec | None
    ) -> AsyncIterator[str]:
        base = {"id": task_id, "created": int(time.time()), "model": body["model"]}

        def event(data: dict[str, Any]) -> str:
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def delta(content: str) -> dict[str, Any]:
            return {"role": "assistant", "content": content}

        for n, piece in enumerate(reply.pieces):
            if stream_error_at(fault, n):
                yield event({"error": {"code": "500", "message": MESSAGES["500"]}})
                return
            yield event({**base, "choices": [{"index": 0, "delta": delta(piece)}]})
        finish = {"index": 0, "finish_reason": reply.finish_reason, "delta": delta("")}
        yield event({**base, "choices": [finish], "usage": reply.usage()})
        yield "data: [DONE]\n\n"
