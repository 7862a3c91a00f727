"""A fake of Volcengine MaaS v1 (``POST /api/v1/chat``), the Skylark models' API.

It verifies every request's HMAC-SHA256 signature the way the service does: it recomputes
the signature from the request as received (method, path, query, the headers listed in
``SignedHeaders``, the body's actual hash) with the secret key of the access key named in
the ``Credential`` scope, and rejects a mismatch, an unknown access key, a missing header or
a stale ``X-Date``. The region is not checked (LangChain's default region is a placeholder).

Answers: a JSON ``ChatResp`` (singular ``choice``, top-level ``usage``, ``req_id``); streams
of ``data:{ChatResp}`` content increments with usage on the last, then ``data:[DONE]`` (no
space, which the official SDK compares byte for byte). Errors and every scripted
:class:`Fault` use MaaS's ``{"req_id", "error": {"code", "code_n", "message"}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fengchao_chains.llms.volcengine import CHAT_PATH, MAAS_SERVICE, signature_v4
from fengchao_chains.testing.fakes._common import (
    FakeVendor,
    Fault,
    FaultSpec,
    Reply,
    answer_fault,
    paced,
    retry_after,
    sse_response,
    stream_error_at,
)

FAKE_ACCESS_KEY = "AKLTfakeaccesskey"
FAKE_SECRET_KEY = "ZmFrZS1zZWNyZXQta2V5"

_AUTHORIZATION = re.compile(
    r"^HMAC-SHA256 Credential=(?P<ak>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
    r"/request, SignedHeaders=(?P<names>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)

Error = tuple[int, str, int, str]
"""HTTP status, code, code_n, message."""

SIGNATURE_MISMATCH: Error = (
    401,
    "SignatureDoesNotMatch",
    1709801,
    "The request signature we calculated does not match the signature you provided.",
)
MISSING_AUTH: Error = (
    401,
    "MissingAuthenticationHeader",
    1709804,
    "The request is missing the Authorization header.",
)
INVALID_AUTH: Error = (
    401,
    "AuthenticationHeaderIsInvalid",
    1709805,
    "The Authorization header is invalid.",
)
AUTH_EXPIRED: Error = (401, "AuthenticationExpire", 1709809, "The access key has expired.")
RATE_LIMITED: Error = (
    429,
    "EndpointRateLimitExceeded",
    1709815,
    "The endpoint's rate limit is exceeded, please retry later.",
)
INTERNAL: Error = (500, "InternalServiceError", 1709806, "Internal service error.")
RISKY_REQUEST: Error = (
    400,
    "ReqTextExistRisk",
    1709813,
    "The request text may contain sensitive information.",
)
MISSING_PARAMETER: Error = (
    400,
    "MissingParameter",
    1709807,
    "model.name and messages are required.",
)

FAULT_ERRORS: dict[Fault | None, Error] = {
    Fault.UNAUTHORIZED: SIGNATURE_MISMATCH,
    Fault.TOKEN_EXPIRED: AUTH_EXPIRED,
    Fault.RATE_LIMITED: RATE_LIMITED,
    Fault.SERVER_ERROR: INTERNAL,
    Fault.CONTENT_FILTERED: RISKY_REQUEST,
}


def _parse_x_date(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def new_req_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:12].upper()


@dataclass
class FakeVolcengineMaas(FakeVendor):
    """MaaS v1; ``credentials`` maps the access keys it knows to their secret keys."""

    credentials: dict[str, str] = field(default_factory=lambda: {FAKE_ACCESS_KEY: FAKE_SECRET_KEY})
    max_clock_skew: float = 900.0
    """Seconds an ``X-Date`` may differ from the fake's clock."""

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route(CHAT_PATH, self.chat, methods=["POST"])])

    # ----------------------------------------------------------------- auth

    def check_signature(self, request: Request, raw: bytes) -> Error | None:
        """``None`` if the request is signed by a known key, else the error to answer."""
        header = request.headers.get("authorization")
        if not header:
            return MISSING_AUTH
        match = _AUTHORIZATION.match(header)
        x_date = request.headers.get("x-date", "")
        secret = self.credentials.get(match["ak"]) if match else None
        signed_at = _parse_x_date(x_date)
        if (
            match is None
            or secret is None
            or signed_at is None
            or match["service"] != MAAS_SERVICE
            or not x_date.startswith(match["date"])
        ):
            return INVALID_AUTH
        if abs((datetime.now(UTC) - signed_at).total_seconds()) > self.max_clock_skew:
            return (*SIGNATURE_MISMATCH[:3], "The request has expired (X-Date too old).")
        body_sha256 = hashlib.sha256(raw).hexdigest()
        names = match["names"].split(";")
        expected = signature_v4(
            secret_key=secret,
            method=request.method,
            path=request.url.path,
            query=request.query_params.multi_items(),
            headers={n: request.headers.get(n, "") for n in names},
            body_sha256=body_sha256,
            x_date=x_date,
            region=match["region"],
            service=match["service"],
        )
        sent_sha256 = request.headers.get("x-content-sha256", body_sha256)
        if sent_sha256 != body_sha256 or not hmac.compare_digest(expected, match["signature"]):
            return SIGNATURE_MISMATCH
        return None

    # ----------------------------------------------------------------- answers

    def error(
        self, error: Error, *, req_id: str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        status, code, code_n, message = error
        body = {
            "req_id": req_id or new_req_id(),
            "error": {"code": code, "code_n": code_n, "message": message},
        }
        return JSONResponse(body, status_code=status, headers=headers)

    def fault_response(self, fault: FaultSpec | None, prompt: str, req_id: str) -> Response | None:
        kind = fault.fault if fault else None
        if kind is Fault.RATE_LIMITED:
            return self.error(RATE_LIMITED, req_id=req_id, headers=retry_after(fault))
        if kind in FAULT_ERRORS:
            return self.error(FAULT_ERRORS[kind], req_id=req_id)
        if kind is Fault.CONTEXT_TOO_LONG or self.too_long(prompt):
            message = (
                f"The prompt is too long: it exceeds the model's context length of"
                f" {self.context_window} tokens."
            )
            return self.error((400, "InvalidParameter", 1709808, message), req_id=req_id)
        return None

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        auth_error = self.check_signature(request, raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.record(body=body, headers=dict(request.headers), path=request.url.path)
        fault = self.next_fault()
        await paced(fault)
        if auth_error is not None:
            return self.error(auth_error)
        if not isinstance(body, dict):
            return self.error((400, "InvalidParameter", 1709808, "The body is not valid JSON."))
        req_id = str(body.get("req_id") or new_req_id())
        messages = body.get("messages")
        model = body.get("model")
        if not (isinstance(model, dict) and model.get("name")) or not (
            isinstance(messages, list) and messages
        ):
            return self.error(MISSING_PARAMETER, req_id=req_id)
        prompt = "\n".join(str(m.get("content") or "") for m in messages)
        last_user = next(
            (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"),
            "",
        )
        failed = self.fault_response(answer_fault(fault), prompt, req_id)
        if failed is not None:
            return failed
        parameters: dict[str, Any] = body.get("parameters") or {}
        reply = self.compose(
            prompt,
            last_user,
            max_tokens=parameters.get("max_new_tokens") or parameters.get("max_tokens"),
            stop=parameters.get("stop"),
        )
        if body.get("stream"):
            return sse_response(self.stream(req_id, reply, fault))
        answer = {
            "req_id": req_id,
            "choice": {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
            },
            "usage": reply.usage(),
        }
        return JSONResponse(answer)

    async def stream(
        self, req_id: str, reply: Reply, fault: FaultSpec | None
    ) -> AsyncIterator[str]:
        pieces = reply.pieces or [""]
        for n, piece in enumerate(pieces):
            if stream_error_at(fault, n):
                _, code, code_n, message = INTERNAL
                error = {"code": code, "code_n": code_n, "message": message}
                yield f"data:{json.dumps({'req_id': req_id, 'error': error})}\n\n"
                return
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": piece},
            }
            chunk: dict[str, Any] = {"req_id": req_id, "choice": choice}
            if n == len(pieces) - 1:
                choice["finish_reason"] = reply.finish_reason
                chunk["usage"] = reply.usage()
            yield f"data:{json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data:[DONE]\n\n"
