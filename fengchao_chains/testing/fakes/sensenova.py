"""A fake of SenseNova's chat API (``POST /v1/llm/chat-completions``).

It checks what the real service checks: a ``Bearer`` HS256 JWT whose ``iss`` is a known
access key, signed with that key's secret, inside its ``nbf``/``exp`` window (or a platform
API key sent as the bearer); the body's ranges from the API document (``temperature``
(0, 2], ``top_p`` (0, 1), ``max_new_tokens`` >= 1, ``n`` [1, 4], roles, the last message
from the user) and that input tokens + ``max_new_tokens`` fit the context window.

Answers are wrapped in ``data``, with a string ``message`` (``delta`` in a stream), usage
``prompt_tokens``/``knowledge_tokens``/``completion_tokens``/``total_tokens`` (total counts
all three), an ``X-Request-Id`` header. Streams are ``data:{...}`` lines with cumulative
usage on every chunk, ending with exactly ``data:[DONE]`` (the SDK compares those bytes).
With ``know_ids`` the fake "retrieves" one deterministic passage per knowledge base; the
passages count as ``knowledge_tokens`` and are returned in ``knowledge_base_results`` when
``knowledge_config.knowledge_base_result`` is true, as the document describes. Errors are
``{"error": {"code", "message", "details": []}}`` with gRPC-style codes; a content-filter
hit is the documented ``finish_reason: "sensitive"``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
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
    count_tokens,
    new_id,
    paced,
    retry_after,
    sse_response,
    stream_error_at,
)

INVALID_ARGUMENT, RESOURCE_EXHAUSTED, INTERNAL, UNAUTHENTICATED = 3, 8, 13, 16
DEFAULT_MAX_NEW_TOKENS = 1024
TEST_ACCESS_KEY = "ak-test"
TEST_SECRET_KEY = "sk-test-0123456789abcdef0123456789abcdef"
"""The key pair the fake knows by default (32+ bytes, as HS256 keys should be)."""
ROLES = {"user", "assistant", "system"}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def error_body(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": []}}


@dataclass
class FakeSenseNova(FakeVendor):
    """SenseNova's protocol; ``access_keys`` maps the access key ids it knows to their
    secrets, ``api_keys`` are platform API keys it accepts as bearer tokens."""

    access_keys: dict[str, str] = field(default_factory=lambda: {TEST_ACCESS_KEY: TEST_SECRET_KEY})
    api_keys: set[str] = field(default_factory=set)
    prefix: str = "/v1"

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[Route(f"{self.prefix}/llm/chat-completions", self.chat, methods=["POST"])]
        )

    # ----------------------------------------------------------------- checks

    def error(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        headers = {"X-Request-Id": new_id(""), **(headers or {})}
        return JSONResponse(error_body(code, message), status_code=status, headers=headers)

    def check_token(self, token: str) -> tuple[str | None, dict[str, Any]]:
        """Why the real service would refuse ``token`` (None if it accepts it), and the
        token's claims."""
        if token and token in self.api_keys:
            return None, {}
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return "invalid token", {}
        secret = self.access_keys.get(str(claims.get("iss")))
        reason: str | None = None
        if secret is None or header.get("alg") != "HS256":
            reason = "unknown access key"
        else:
            try:
                jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
            except jwt.ExpiredSignatureError:
                reason = "token expired"
            except jwt.ImmatureSignatureError:
                reason = "token not yet valid"
            except jwt.PyJWTError:
                reason = "invalid signature"
        return reason, claims

    def invalid(self, body: Any) -> str | None:
        """Why the API document says no to this body (None if it is fine)."""
        if not isinstance(body, dict):
            return "the request body must be a JSON object"
        if not isinstance(body.get("model"), str):
            return "model is required"
        problem = _invalid_messages(body.get("messages"))
        for name, ok in _RANGES.items():
            value = body.get(name)
            if problem is not None or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                problem = f"{name} is out of range: {value!r}"
        return problem

    def refusal(self, body: Any, reason: str | None, fault: FaultSpec | None) -> Response | None:
        """The error answer for a refused token, a scripted fault or an invalid body."""
        if reason is not None:
            return self.error(401, UNAUTHENTICATED, f"unauthenticated: {reason}")
        failed = self.fault_response(fault)
        problem = self.invalid(body) if failed is None else None
        return self.error(400, INVALID_ARGUMENT, problem) if problem else failed

    def fault_response(self, fault: FaultSpec | None) -> Response | None:
        kind = fault.fault if fault else None
        if kind is Fault.UNAUTHORIZED:
            return self.error(401, UNAUTHENTICATED, "unauthenticated: invalid signature")
        if kind is Fault.TOKEN_EXPIRED:
            return self.error(401, UNAUTHENTICATED, "unauthenticated: token expired")
        if kind is Fault.RATE_LIMITED:
            return self.error(429, RESOURCE_EXHAUSTED, "rate limit exceeded", retry_after(fault))
        if kind is Fault.SERVER_ERROR:
            return self.error(500, INTERNAL, "internal error")
        if kind is Fault.CONTEXT_TOO_LONG:
            return self.context_error()
        return None

    def context_error(self) -> Response:
        return self.error(
            400,
            INVALID_ARGUMENT,
            "input tokens + max_new_tokens exceed the model's context length"
            f" ({self.context_window})",
        )

    # ----------------------------------------------------------------- knowledge and plugins

    def knowledge(self, body: dict[str, Any], question: str) -> list[dict[str, Any]]:
        """One deterministic passage per knowledge base named in ``know_ids``."""
        return [
            {
                "know_id": str(know_id),
                "results": [{"score": 0.9, "result": f"Passage from {know_id} about {question}"}],
            }
            for know_id in body.get("know_ids") or []
        ]

    def plugins(self, body: dict[str, Any], question: str) -> dict[str, Any]:
        search = ((body.get("plugins") or {}).get("web_search")) or {}
        if not search.get("search_enable"):
            return {}
        used: dict[str, Any] = {"online_search_count": 1}
        if search.get("result_enable"):
            used["results"] = [
                {
                    "index": 1,
                    "url": "https://search.example.invalid/1",
                    "url_source": "fake",
                    "title": f"About {question}",
                    "icon": "https://search.example.invalid/icon.png",
                }
            ]
        return {"web_search": used}

    # ----------------------------------------------------------------- the route

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        reason, claims = self.check_token(bearer(request.headers))
        self.record(body=body, headers=dict(request.headers), path=request.url.path, claims=claims)
        fault = self.next_fault()
        await paced(fault)
        refused = self.refusal(body, reason, fault)
        if refused is not None:
            return refused
        messages = body["messages"]
        question = messages[-1]["content"]
        injected = ((body.get("plugins") or {}).get("associated_knowledge") or {}).get("content")
        prompt = "\n".join([m["content"] for m in messages] + [str(injected or "")])
        max_new_tokens = body.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
        if count_tokens(prompt) + max_new_tokens > self.context_window:
            return self.context_error()
        reply = self.compose(prompt, question, max_tokens=max_new_tokens)
        knowledge = self.knowledge(body, question)
        passages = " ".join(r["result"] for kb in knowledge for r in kb["results"])
        returned = bool((body.get("knowledge_config") or {}).get("knowledge_base_result"))
        answer = _Answer(
            id=new_id(""),
            reply=reply,
            knowledge_tokens=count_tokens(passages),
            knowledge=knowledge if returned else [],
            plugins=self.plugins(body, question),
            filtered=fault is not None and fault.fault is Fault.CONTENT_FILTERED,
        )
        headers = {"X-Request-Id": answer.id}
        if body.get("stream"):
            return sse_response(self.stream(answer, fault), headers=headers)
        choice = {
            "index": 0,
            "role": "assistant",
            "message": "" if answer.filtered else reply.text,
            "finish_reason": "sensitive" if answer.filtered else reply.finish_reason,
        }
        data = {
            "id": answer.id,
            "choices": [{**choice, "index": i} for i in range(int(body.get("n") or 1))],
            "knowledge_base_results": answer.knowledge,
            "usage": answer.usage(reply.completion_tokens),
            "plugins": answer.plugins,
        }
        return JSONResponse({"data": data}, headers=headers)

    async def stream(self, answer: _Answer, fault: FaultSpec | None) -> AsyncIterator[str]:
        pieces = [] if answer.filtered else answer.reply.pieces
        for n, piece in enumerate(pieces):
            if stream_error_at(fault, n):
                yield f"data:{_dumps(error_body(INTERNAL, 'internal error'))}\n\n"
                return
            yield answer.chunk(piece, "", n + 1, final=False)
        finish = "sensitive" if answer.filtered else answer.reply.finish_reason
        yield answer.chunk("", finish, len(pieces), final=True)
        yield "data:[DONE]\n\n"


def _invalid_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages is required"
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return "messages.role must be one of user, assistant, system"
        if not isinstance(message.get("content"), str):
            return "messages.content must be a string"
    if messages[-1]["role"] != "user":
        return "the last message must be from the user"
    return None


_RANGES: dict[str, Callable[[float], bool]] = {
    "temperature": lambda v: 0 < v <= 2,
    "top_p": lambda v: 0 < v < 1,
    "repetition_penalty": lambda v: 0 < v <= 2,
    "max_new_tokens": lambda v: v >= 1 and v == int(v),
    "n": lambda v: 1 <= v <= 4 and v == int(v),
}
"""The parameter ranges of the API document."""


@dataclass
class _Answer:
    """One answer's figures, shared by the JSON and the stream renderings."""

    id: str
    reply: Reply
    knowledge_tokens: int
    knowledge: list[dict[str, Any]]
    plugins: dict[str, Any]
    filtered: bool

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = self.reply.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "knowledge_tokens": self.knowledge_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + self.knowledge_tokens + completion_tokens,
        }

    def chunk(self, delta: str, finish: str, completion_tokens: int, *, final: bool) -> str:
        choice = {"delta": delta, "finish_reason": finish, "index": 0, "role": "assistant"}
        data = {
            "id": self.id,
            "choices": [choice],
            "knowledge_base_results": self.knowledge if final else [],
            "plugins": self.plugins if final else {},
            "usage": self.usage(completion_tokens),
        }
        return f"data:{_dumps({'data': data, 'status': {'code': 0, 'message': 'ok'}})}\n\n"
