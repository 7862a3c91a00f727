"""OpenAI's chat completions protocol, for OpenAI and every server that speaks it.

One implementation serves OpenAI itself, Volcengine Ark v3, and any OpenAI-compatible
endpoint (vLLM, llama.cpp's server, TGI's Messages API, a corporate proxy): a new endpoint
is a catalog entry with ``vendor = "openai_compatible"`` and a ``base_url``, no code.
Moonshot subclasses it only to add its Files API.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
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
            "messages": openai_messages(messages, self.vendor_name),
            **params,
            "stream": stream,
        }
        if stream and self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return VendorRequest("POST", self._url("/chat/completions"), json_body=body)

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        key = self._secret(self.api_key)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        choice = (body.get("choices") or [{}])[0]
        return result(
            (choice.get("message") or {}).get("content") or "",
            usage_metadata=openai_usage(body.get("usage") or choice.get("usage")),
            metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": body.get("model") or self.model,
                "request_id": meta.request_id or body.get("id"),
                "system_fingerprint": body.get("system_fingerprint"),
            },
            message_id=body.get("id"),
        )

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
        return self.text((choice.get("delta") or {}).get("content") or "")


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
