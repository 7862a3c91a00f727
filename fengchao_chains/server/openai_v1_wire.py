"""The ``/v1`` wire format: OpenAI's request bodies in, its answers and stream chunks out.

Requests are parsed by pydantic models that ignore unknown fields (newer clients keep
working) and refuse wrong values with the field's path as ``param``. Messages become
LangChain messages through ``convert_to_messages`` (OpenAI's dicts, tool calls included).
Answers are plain dicts in OpenAI's exact shape; a stream is ``data: {chunk}`` events and
``data: [DONE]``. Besides OpenAI's fields an answer may carry ``knowledge`` (the retrieved
hits, as /aigc gives them) when the request asked for a knowledge base.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import ToolCallChunk
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fengchao_chains.server.aigc_answer import knowledge_hit
from fengchao_chains.server.openai_v1_errors import invalid, sse_event

DONE = b"data: [DONE]\n\n"
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
_FINISH_ALIASES = {"sensitive": "content_filter", "max_tokens": "length", "max_length": "length"}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


_Body = TypeVar("_Body", bound=BaseModel)


class StreamOptions(_Lenient):
    include_usage: bool = False


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str = Field(min_length=1)


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Lenient):
    name: str = Field(min_length=1)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_Lenient):
    """``POST /v1/chat/completions``: OpenAI's fields, then the gateway's extras."""

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    seed: int | None = None  # accepted, not used: no model here promises reproducibility
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    user: str | None = None
    # the gateway's extras (the OpenAI SDK's extra_body)
    knowledge: str | None = Field(default=None, description="Knowledge base id.")
    top_k: int | None = Field(default=None, ge=1, le=50)
    threshold: float | None = Field(default=None, ge=0, le=2000)
    prompt: str | None = Field(default=None, description="Instruction id or custom template.")
    prompt_fill: dict[str, Any] | None = None
    is_sensitive: bool | None = True

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def tool_kwargs(self) -> dict[str, Any]:
        """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as the vendor takes them."""
        kwargs: dict[str, Any] = {}
        if self.tools:
            kwargs["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
        if self.tool_choice is not None:
            choice = self.tool_choice
            kwargs["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
        if self.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = self.parallel_tool_calls
        return kwargs


EncodingFormat = Literal["float", "base64"]


class EmbeddingsRequest(_Lenient):
    """``POST /v1/embeddings``; ``input_type`` (extra) embeds queries or documents."""

    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)
    encoding_format: EncodingFormat | None = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None
    input_type: Literal["query", "document"] | None = "document"

    @field_validator("input", mode="before")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            raise ValueError(
                "token arrays are not accepted, send strings (LangChain's OpenAIEmbeddings:"
                " check_embedding_ctx_length=False)"
            )
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse(kind: type[_Body], raw: bytes) -> _Body:
    """The body as ``kind``, or a 400 naming the first field that is wrong."""
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        location = ".".join(str(part) for part in first["loc"] if part != "function-after")
        if first["type"] == "json_invalid":
            raise invalid("the body is not valid JSON") from None
        raise invalid(f"{location or 'body'}: {first['msg']}", param=location or None) from None


def to_messages(raw: list[dict[str, Any]]) -> list[BaseMessage]:
    """OpenAI's messages as LangChain messages; a 400 naming the message that is wrong."""
    raw = [_with_content(item) for item in raw]
    try:
        return convert_to_messages(raw)
    except (ValueError, TypeError, KeyError) as exc:
        for index, item in enumerate(raw):
            try:
                convert_to_messages([item])
            except (ValueError, TypeError, KeyError):
                reason = str(exc).splitlines()[0]
                raise invalid(f"messages[{index}]: {reason}", param=f"messages[{index}]") from None
        raise invalid(f"messages: {exc}", param="messages") from None


def _with_content(item: dict[str, Any]) -> dict[str, Any]:
    """OpenAI lets an assistant message with tool calls leave ``content`` out."""
    if "content" not in item and item.get("role") == "assistant":
        return {**item, "content": None}
    return item


def completion_id(run_id: uuid.UUID) -> str:
    """A completion's id: its model run's (which its usage record has too)."""
    return f"chatcmpl-{run_id.hex}"


def finish_reason(raw: object) -> str:
    """A vendor's finish reason as one of OpenAI's."""
    if isinstance(raw, str) and raw in FINISH_REASONS:
        return raw
    return _FINISH_ALIASES.get(str(raw), "stop")


def usage_dict(usage: UsageMetadata | None) -> dict[str, int]:
    prompt = usage["input_tokens"] if usage else 0
    completion = usage["output_tokens"] if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def openai_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    """An answer's tool calls (and the ones whose arguments did not parse) as OpenAI's."""
    calls = [
        _call(call["id"], call["name"], json.dumps(call["args"], ensure_ascii=False))
        for call in message.tool_calls
    ]
    calls += [_call(c["id"], c["name"], c["args"]) for c in message.invalid_tool_calls]
    return calls


def _call(call_id: str | None, name: str | None, arguments: str | None) -> dict[str, Any]:
    function = {"name": name or "", "arguments": arguments or ""}
    return {
        "id": call_id or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": function,
    }


def completion(
    completion_id: str,
    model: str,
    message: AIMessage,
    *,
    content: str,
    finish: str,
    usage: UsageMetadata | None,
    documents: Sequence[Document] | None,
) -> dict[str, Any]:
    """A whole ``chat.completion`` answer."""
    answer: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    calls = openai_tool_calls(message)
    if calls:
        answer["content"] = content or None
        answer["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": answer, "logprobs": None, "finish_reason": finish}],
        "usage": usage_dict(usage),
        "system_fingerprint": None,
    }
    if documents is not None:
        body["knowledge"] = [knowledge_hit(document) for document in documents]
    return body


class ChunkWriter:
    """The ``chat.completion.chunk`` events of one stream, as OpenAI frames them: the role
    first, then deltas, a last chunk with the finish reason, with ``include_usage`` a
    chunk with empty ``choices`` and the usage (and ``"usage": null`` on every other)."""

    def __init__(self, completion_id: str, model: str, *, include_usage: bool) -> None:
        self.head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage

    def event(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk = {**self.head, "choices": [choice], **extra}
        if self.include_usage:
            chunk["usage"] = None
        return sse_event(chunk)

    def first(self, documents: Sequence[Document] | None) -> bytes:
        extra: dict[str, Any] = {}
        if documents is not None:
            extra["knowledge"] = [knowledge_hit(document) for document in documents]
        return self.event({"role": "assistant", "content": "", "refusal": None}, **extra)

    def text(self, text: str) -> bytes:
        return self.event({"content": text})

    def tool_calls(self, chunks: Sequence[ToolCallChunk]) -> bytes:
        calls = []
        for position, chunk in enumerate(chunks):
            call: dict[str, Any] = {"index": chunk.get("index", position)}
            if chunk.get("id"):
                call |= {"id": chunk["id"], "type": "function"}
            function = {"arguments": chunk.get("args") or ""}
            if chunk.get("name"):
                function["name"] = str(chunk["name"])
            calls.append(call | {"function": function})
        return self.event({"tool_calls": calls})

    def finish(self, reason: str) -> bytes:
        return self.event({}, reason)

    def usage(self, usage: UsageMetadata | None) -> bytes:
        return sse_event({**self.head, "choices": [], "usage": usage_dict(usage)})
