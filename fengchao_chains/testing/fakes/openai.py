"""A fake of OpenAI's chat completions API (``POST /v1/chat/completions``).

Bearer auth; the JSON answer and ``data: {chunk}`` ... ``data: [DONE]`` stream of the
OpenAI SDK, with the extra usage chunk (empty ``choices``) when the request sets
``stream_options.include_usage``; OpenAI's error bodies and status codes.
Subclasses reuse it for OpenAI-compatible vendors (Ark v3, Moonshot) by changing the prefix
and the hooks below: the request id, the answer's OpenAI-only fields, usage in streams and
the error bodies (also the one a stream sends mid-way).

Tools and JSON answers are deterministic too. A request with ``tools`` (and ``tool_choice``
not ``"none"``) whose last message is not a tool result calls one tool: the one
``tool_choice`` names, else the first, with arguments made from its JSON schema (every
string is the last user message, every integer or number the first number in it (else its
token count), booleans true,
arrays and objects empty, enums their first value); answered as OpenAI frames it, with
``content: null`` and finish reason ``tool_calls``, or streamed as a first delta with the
call's id and name and then pieces of its arguments. After a tool result the reply answers
the result's text. ``response_format`` ``json_object`` answers ``{"answer": <reply>}``,
``json_schema`` an object made from the schema as above. Usage counts those texts.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    FakeVendor,
    Fault,
    FaultSpec,
    Reply,
    Served,
    answer_fault,
    bearer,
    content_text,
    conversation,
    count_tokens,
    new_id,
    paced,
    retry_after,
    spaced,
    split_tokens,
    sse_response,
    stream_error_at,
)

_NUMBER = re.compile(r"-?\d+")


@dataclass
class ToolCallPlan:
    """The one tool call an answer makes: its id, the tool's name and the arguments."""

    id: str
    name: str
    arguments: str


def sample_value(schema: Any, text: str) -> Any:
    """A value that fits a JSON schema, made from ``text`` (see the module docstring)."""
    if not isinstance(schema, dict):
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        chosen = next((b for b in branches if b.get("type") != "null"), branches[0])
        return sample_value(chosen, text)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: sample_value(prop, text) for name, prop in properties.items()}
    number = _NUMBER.search(text)
    count = int(number.group()) if number else count_tokens(text)
    samples: dict[str, Any] = {"integer": count, "number": float(count), "boolean": True}
    samples |= {"array": [], "null": None}
    return samples.get(str(kind), text)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_pieces(text: str) -> list[str]:
    """``text`` cut into stream pieces that join back into exactly ``text``."""
    pieces = split_tokens(text)
    return pieces if "".join(pieces) == text else [text]


@dataclass
class FakeOpenAI(FakeVendor):
    """OpenAI's protocol; ``api_keys`` are the keys it accepts."""

    api_keys: set[str] = field(default_factory=lambda: {"sk-test"})
    prefix: str = "/v1"
    event_interval: float = 0.0
    """Seconds between a stream's events, as a vendor paces tokens; 0 sends each stream in
    one go, so the client reads it in one burst."""

    id_prefix: ClassVar[str] = "chatcmpl-"
    request_id_header: ClassVar[str] = "x-request-id"
    openai_fields: ClassVar[bool] = True
    """Whether answers carry OpenAI's ``system_fingerprint`` and ``logprobs``."""
    ensure_ascii: ClassVar[bool] = True
    """How stream chunks encode non-ASCII text (OpenAI escapes it)."""
    bad_json_message: ClassVar[str] = "We could not parse the JSON body of your request."
    missing_message: ClassVar[str] = "'messages' and 'model' are required."

    # ----------------------------------------------------------------- hooks for subclasses

    def routes(self) -> list[Route]:
        return [Route(f"{self.prefix}/chat/completions", self.chat, methods=["POST"])]

    def request_id(self) -> str:
        return new_id("req_")

    def id_headers(self) -> dict[str, str]:
        return {self.request_id_header: self.request_id()}

    def error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return JSONResponse(
            body, status_code=status, headers={**self.id_headers(), **(headers or {})}
        )

    def account_refusal(self, fault: FaultSpec | None) -> Response | None:
        """A refusal of the account, before any fault but a wrong key (none here)."""
        return None

    def usage(self, reply: Reply) -> dict[str, int]:
        return reply.usage()

    def includes_usage(self, body: dict[str, Any]) -> bool:
        """Whether a stream ends with the usage chunk: OpenAI sends it only when asked."""
        return bool((body.get("stream_options") or {}).get("include_usage"))

    def final_usage_chunks(
        self, base: dict[str, Any], reply: Reply, body: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if not self.includes_usage(body):
            return []
        return [{**base, "choices": [], "usage": self.usage(reply)}]

    def finish_chunk(self, base: dict[str, Any], extra: dict[str, Any], reply: Reply) -> str:
        choice = self.choice("delta", {}, reply.finish_reason)
        return self.event({**base, "choices": [choice], **extra})

    def mid_stream_error_chunk(self) -> str:
        """The event a stream sends when it fails after it began (MID_STREAM_ERROR)."""
        message = "The server had an error while processing your request."
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        return f"data: {json.dumps({'error': error})}\n\n"

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
            return self.error(
                429,
                "Rate limit reached for requests.",
                "requests",
                "rate_limit_exceeded",
                retry_after(fault),
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
            return self.error(400, self.bad_json_message, "invalid_request_error", None)
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        self.record(
            body=body,
            headers=dict(request.headers),
            path=request.url.path,
            method="POST",
            peer=peer,
        )
        fault = self.next_fault()
        await paced(fault)
        if token not in self.api_keys:
            fault = FaultSpec(Fault.UNAUTHORIZED)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or "model" not in body:
            return self.error(400, self.missing_message, "invalid_request_error", None)
        prompt, last_user = conversation(messages)
        failed = self.account_refusal(fault) or self.fault_response(answer_fault(fault), prompt)
        if failed is not None:
            return failed
        call = self.plan_tool_call(body, last_user)
        reply = self.answer(body, prompt, last_user, call)
        headers = self.id_headers()
        completion_id = new_id(self.id_prefix)
        if body.get("stream"):
            events = self.stream(completion_id, body, reply, fault, call)
            return sse_response(spaced(events, self.event_interval), headers=headers)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if call is not None:
            function = {"name": call.name, "arguments": call.arguments}
            message["content"] = None
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": function}]
        answer = {
            **self.head(completion_id, body, "chat.completion"),
            "choices": [self.choice("message", message, reply.finish_reason)],
            "usage": self.usage(reply),
        }
        self.account(Served(messages, reply.prompt_tokens, list(reply.pieces), finished=True))
        return JSONResponse(answer, headers=headers)

    def plan_tool_call(self, body: dict[str, Any], last_user: str) -> ToolCallPlan | None:
        """The tool call this request gets (see the module docstring), or None."""
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "function" in t]
        choice = body.get("tool_choice") or "auto"
        messages = body["messages"]
        answered = isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        if not tools or choice == "none" or (answered and choice == "auto"):
            return None
        wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        tool = next((t for t in tools if t["function"].get("name") == wanted), tools[0])
        function = tool["function"]
        arguments = sample_value(function.get("parameters") or {"type": "object"}, last_user)
        return ToolCallPlan(new_id("call_"), str(function.get("name")), compact_json(arguments))

    def answer(
        self, body: dict[str, Any], prompt: str, last_user: str, call: ToolCallPlan | None
    ) -> Reply:
        """The reply: a tool call's arguments, a JSON answer, or text (after a tool result,
        an answer to the result)."""
        if call is not None:
            return Reply(json_pieces(call.arguments), count_tokens(prompt), "tool_calls")
        last = body["messages"][-1]
        if isinstance(last, dict) and last.get("role") == "tool":
            last_user = content_text(last.get("content"))
        response_format = body.get("response_format") or {}
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            text = compact_json({"answer": self.reply(last_user)})
            return Reply(json_pieces(text), count_tokens(prompt), "stop")
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            text = compact_json(sample_value(schema, last_user))
            return Reply(json_pieces(text), count_tokens(prompt), "stop")
        return self.compose(
            prompt, last_user, max_tokens=body.get("max_tokens"), stop=body.get("stop")
        )

    async def stream(
        self,
        completion_id: str,
        body: dict[str, Any],
        reply: Reply,
        fault: FaultSpec | None,
        call: ToolCallPlan | None = None,
    ) -> AsyncIterator[str]:
        base = self.head(completion_id, body, "chat.completion.chunk")
        extra = {"usage": None} if self.includes_usage(body) else {}

        def chunk(delta: dict[str, Any]) -> str:
            return self.event({**base, "choices": [self.choice("delta", delta, None)], **extra})

        if call is None:
            yield chunk({"role": "assistant", "content": ""})
        else:
            head = {"index": 0, "id": call.id, "type": "function"}
            function = {"name": call.name, "arguments": ""}
            yield chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [head | {"function": function}],
                }
            )
        served = Served(body["messages"], reply.prompt_tokens)
        self.account(served)  # kept up to date as pieces go out
        try:
            for n, piece in enumerate(reply.pieces):
                if stream_error_at(fault, n):
                    yield self.mid_stream_error_chunk()
                    return
                if fault is not None and fault.fault is Fault.STALL and n == fault.after_chunks:
                    await asyncio.sleep(3600)  # until the client leaves (cancelled)
                if call is None:
                    yield chunk({"content": piece})
                else:
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                served.sent.append(piece)
            yield self.finish_chunk(base, extra, reply)
            for final in self.final_usage_chunks(base, reply, body):
                yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"
            served.finished = True
        finally:
            served.writing = False

    # ----------------------------------------------------------------- rendering

    def head(self, completion_id: str, body: dict[str, Any], kind: str) -> dict[str, Any]:
        """The fields an answer or a stream chunk starts with."""
        head = {
            "id": completion_id,
            "object": kind,
            "created": int(time.time()),
            "model": body["model"],
        }
        if self.openai_fields:
            head["system_fingerprint"] = "fp_fake"
        return head

    def choice(
        self, part: str, content: dict[str, Any], finish: str | None, **extra: Any
    ) -> dict[str, Any]:
        """A choice carrying ``content`` as its ``message`` or ``delta`` (``part``)."""
        choice: dict[str, Any] = {"index": 0, part: content}
        if self.openai_fields:
            choice["logprobs"] = None
        return {**choice, "finish_reason": finish, **extra}

    def event(self, data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=self.ensure_ascii)}\n\n"
