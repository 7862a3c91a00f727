"""OpenAI's chat completions protocol, for OpenAI and every server that speaks it.

One implementation serves OpenAI itself, Volcengine Ark v3, and any OpenAI-compatible
endpoint (vLLM, llama.cpp's server, TGI's Messages API, a corporate proxy): a new endpoint
is a catalog entry with ``vendor = "openai_compatible"`` and a ``base_url``, no code.
Moonshot subclasses it only to add its Files API.

Tool calling is OpenAI's too: :meth:`ChatOpenAICompatible.bind_tools` sends ``tools`` and
``tool_choice``; an answer's ``tool_calls`` become ``AIMessage.tool_calls`` (arguments that
are not JSON land in ``invalid_tool_calls``), a stream's tool-call deltas become
``tool_call_chunks`` that add up to the same calls, and assistant tool calls and
``ToolMessage`` results go back to the endpoint in OpenAI's format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    InvalidToolCall,
    ToolCall,
)
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env, secret_from_env
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, SecretStr

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.errors import ConfigurationError
from fengchao_chains.llms._base import StreamDecoder, VendorChatModel, openai_usage, result
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._messages import openai_messages
from fengchao_chains.llms._sse import ServerSentEvent
from fengchao_chains.llms.errors import (
    ContentFilteredError,
    ContextTooLongError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.settings import Settings

OPENAI_BASE_URL = "https://api.openai.com/v1"

_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_FILTER_CODES = {"content_filter", "content_policy_violation", "sensitive_content"}


class ChatOpenAICompatible(VendorChatModel):
    """A chat model for any OpenAI-compatible ``/chat/completions`` endpoint.

    Example::

        model = ChatOpenAICompatible(model="gpt-3.5-turbo")  # key from OPENAI_API_KEY
        local = ChatOpenAICompatible(model="qwen", base_url="http://localhost:8000/v1")
    """

    vendor_name = "openai_compatible"
    default_base_url = OPENAI_BASE_URL
    supports_tools: ClassVar[bool] = True
    """Whether the endpoint takes OpenAI's ``tools``, ``tool_choice`` and ``response_format``
    (the /v1 front door refuses tools for a model without)."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("OPENAI_API_KEY", default=None)
    )
    """Sent as a bearer token; may be left unset for local servers that need none."""
    base_url: str | None = Field(default_factory=from_env("OPENAI_BASE_URL", default=None))
    stream_usage: bool = True
    """Ask for the final usage chunk (``stream_options.include_usage``); turn off for servers
    that reject the option."""

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(messages, self.vendor_name, tools=self.supports_tools),
            **params,
            "stream": stream,
        }
        if stream and self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return VendorRequest("POST", self._url("/chat/completions"), json_body=body)

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        key = self._secret(self.api_key)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools (LangChain tools, functions, pydantic classes or OpenAI tool dicts) sent
        with every call. ``tool_choice``: a tool's name, ``"auto"``, ``"none"``,
        ``"any"``/``"required"``/``True`` (some tool must be called) or OpenAI's dict."""
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        if tool_choice is not None and tool_choice is not False:
            names = {tool["function"]["name"] for tool in formatted if "function" in tool}
            kwargs["tool_choice"] = openai_tool_choice(tool_choice, names)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(tools=formatted, **kwargs)

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        answer = result(
            message.get("content") or "",
            usage_metadata=openai_usage(body.get("usage") or choice.get("usage")),
            metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": body.get("model") or self.model,
                "request_id": meta.request_id or body.get("id"),
                "system_fingerprint": body.get("system_fingerprint"),
            },
            message_id=body.get("id"),
        )
        if message.get("tool_calls"):
            generation = answer.generations[0]
            answer.generations[0] = ChatGeneration(
                message=with_tool_calls(generation.message, message["tool_calls"]),
                generation_info=generation.generation_info,
            )
        return answer

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        return OpenAIStreamDecoder(self, meta)

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        error = super()._error_from_response(status, body, meta)
        return self._refine(error, body, meta)

    def _mid_stream_error(self, data: dict[str, Any], meta: ResponseMeta) -> VendorError:
        """An ``{"error": ...}`` event after the stream began (no HTTP status of its own)."""
        detail = data.get("error")
        message = str(detail.get("message") or detail) if isinstance(detail, dict) else str(detail)
        code = detail.get("code") or detail.get("type") if isinstance(detail, dict) else None
        error = self._error(None, message, code=code, meta=meta, kind=UpstreamError)
        return self._refine(error, data, meta)

    def _refine(self, error: VendorError, body: Any, meta: ResponseMeta | None) -> VendorError:
        """Tell context-length and content-filter errors apart by their code or type."""
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, dict):
            return error
        codes = {str(detail.get("code")), str(detail.get("type"))}
        kind: type[VendorError] | None = None
        if codes & _CONTEXT_CODES:
            kind = ContextTooLongError
        elif codes & _FILTER_CODES:
            kind = ContentFilteredError
        return self._as_kind(error, kind, meta)


class OpenAIStreamDecoder(StreamDecoder):
    """``data: {chunk}`` events up to ``data: [DONE]``. Usage comes in a final chunk with
    empty ``choices`` (OpenAI with ``include_usage``) or inside the last choice (Moonshot)."""

    model: ChatOpenAICompatible

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        data = self.data(event)
        if data is None:
            return []
        if data.get("error"):
            raise self.model._mid_stream_error(data, self.meta)
        self.message_id = self.message_id or data.get("id")
        self.model_name = data.get("model") or self.model_name
        choices = data.get("choices") or []
        choice = choices[0] if choices else {}
        raw_usage = data.get("usage") or choice.get("usage")
        if raw_usage:
            self.usage = openai_usage(raw_usage)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        chunks = self.text(delta.get("content") or "")
        if delta.get("tool_calls"):
            chunks.append(self.tool_calls(delta["tool_calls"]))
        return chunks

    def tool_calls(self, raw: list[dict[str, Any]]) -> ChatGenerationChunk:
        """A chunk of streamed tool calls: OpenAI sends each call's id and name once, then
        pieces of its arguments, all under the call's ``index``."""
        chunks = []
        for position, call in enumerate(raw):
            function = call.get("function") or {}
            chunks.append(
                tool_call_chunk(
                    name=function.get("name"),
                    args=function.get("arguments"),
                    id=call.get("id"),
                    index=call.get("index", position),
                )
            )
        message = AIMessageChunk(content="", id=self.message_id, tool_call_chunks=chunks)
        return ChatGenerationChunk(message=message)


def openai_tool_choice(choice: dict[str, Any] | str | bool, names: set[str]) -> Any:
    """LangChain's ``tool_choice`` in OpenAI's terms: a bound tool's name is that tool,
    ``"any"`` and ``True`` are ``"required"``; OpenAI's own values pass as they are."""
    if choice is True or choice == "any":
        return "required"
    if isinstance(choice, str) and choice in names:
        return {"type": "function", "function": {"name": choice}}
    return choice


def with_tool_calls(message: BaseMessage, raw: list[dict[str, Any]]) -> AIMessage:
    """``message`` with an answer's OpenAI ``tool_calls``: those whose arguments parse as
    JSON become ``tool_calls``, the others ``invalid_tool_calls`` (with the parse error)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for call in raw:
        try:
            parsed = parse_tool_call(call, return_id=True)
        except OutputParserException as exc:
            invalid.append(make_invalid_tool_call(call, str(exc)))
            continue
        if parsed is None:
            continue
        if not isinstance(parsed["args"], dict):
            invalid.append(make_invalid_tool_call(call, "the arguments are not a JSON object"))
            continue
        calls.append(tool_call(name=parsed["name"], args=parsed["args"], id=parsed.get("id")))
    return AIMessage(
        content=message.content,
        id=message.id,
        usage_metadata=getattr(message, "usage_metadata", None),
        response_metadata=message.response_metadata,
        tool_calls=calls,
        invalid_tool_calls=invalid,
    )


class ChatOpenAI(ChatOpenAICompatible):
    """OpenAI itself: the same protocol, reported as vendor ``openai``."""

    vendor_name = "openai"


def create_openai(card: ModelCard, settings: Settings, **overrides: Any) -> ChatOpenAICompatible:
    """Catalog factory for vendor ``openai``."""
    kwargs = card_kwargs(
        card,
        base_url=settings.openai_base_url or OPENAI_BASE_URL,
        credentials={"api_key": settings.openai_api_key},
        overrides=overrides,
    )
    return ChatOpenAI(**kwargs)


def create_compatible(
    card: ModelCard, settings: Settings, **overrides: Any
) -> ChatOpenAICompatible:
    """Catalog factory for vendor ``openai_compatible``: the card names the endpoint
    (``base_url``) and, if it needs a key, the env var holding it (``api_key_env``).
    OpenAI's own key is never sent to such an endpoint."""
    if not card.base_url and "base_url" not in overrides:
        raise ConfigurationError(
            f"catalog model {card.id!r} (vendor openai_compatible) needs a base_url"
        )
    kwargs = card_kwargs(card, base_url=None, credentials={}, overrides=overrides)
    kwargs.setdefault("api_key", None)
    return ChatOpenAICompatible(**kwargs)
