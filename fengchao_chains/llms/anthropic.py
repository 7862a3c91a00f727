"""Anthropic's Messages API (``POST /v1/messages``), for the Claude 3 models.

What differs from OpenAI's protocol, and why the code below exists:

* auth is an ``x-api-key`` header plus an ``anthropic-version`` date header;
* the system prompt is a top-level ``system`` field, and the 2024 API wants the other
  messages to alternate user/assistant, so consecutive turns of one role are merged;
* ``max_tokens`` is **required** by the API. The class sends 1024 unless told otherwise;
  the catalog factory sends the card's ``max_output_token`` (4096 for Claude 3), so catalog
  models are never cut short by a default the caller did not choose;
* the stream is named SSE events with no ``[DONE]``: it ends at ``message_stop``, and its
  usage is split (input tokens in ``message_start``, cumulative output tokens in
  ``message_delta``), combined here and emitted once at the end;
* errors are ``{"type": "error", "error": {"type": ..., "message": ...}}``, also as an
  ``event: error`` in the middle of a stream; 529 ``overloaded_error`` is retried like a 5xx.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.llms._base import StreamDecoder, VendorChatModel, result, usage
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._messages import role_of, split_system, text_of
from fengchao_chains.llms._sse import ServerSentEvent, event_json
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.settings import Settings

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

_KINDS: dict[str, type[VendorError]] = {
    "authentication_error": AuthenticationError,
    "permission_error": AuthenticationError,
    "rate_limit_error": RateLimitError,
    "invalid_request_error": InvalidRequestError,
    "not_found_error": InvalidRequestError,
    "request_too_large": InvalidRequestError,
    "api_error": UpstreamError,
    "overloaded_error": UpstreamError,
}


class ChatAnthropicMessages(VendorChatModel):
    """A chat model for Anthropic's Messages API (named so as not to clash with
    ``langchain_anthropic.ChatAnthropic``).

    Example::

        model = ChatAnthropicMessages(model="claude-3-opus-20240229")  # ANTHROPIC_API_KEY
        model.invoke("Hello", top_k=40)  # vendor extras as call kwargs or model_kwargs

    ``base_url`` is the host without ``/v1`` (as in Anthropic's SDK); ``stop`` is sent as
    ``stop_sequences``; ``top_k``, ``metadata`` and the like go through ``model_kwargs``.
    """

    vendor_name = "anthropic"
    default_base_url = ANTHROPIC_BASE_URL

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("ANTHROPIC_API_KEY", default=None),
        alias="anthropic_api_key",
    )
    base_url: str | None = Field(default_factory=from_env("ANTHROPIC_BASE_URL", default=None))
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, alias="max_completion_tokens")
    """Required by the API; ``None`` still sends the 1024 default."""
    anthropic_version: str = ANTHROPIC_VERSION
    """The ``anthropic-version`` header (the version Claude 3 was documented against)."""

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        system, turns = split_system(messages, self.vendor_name)
        params = dict(params)
        stop = params.pop("stop", None)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self._turns(turns),
            "max_tokens": params.pop("max_tokens", None) or DEFAULT_MAX_TOKENS,
        }
        if system:
            body["system"] = system
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        body.update(params)
        if stream:
            body["stream"] = True
        headers = {"anthropic-version": self.anthropic_version}
        return VendorRequest("POST", self._url("/v1/messages"), json_body=body, headers=headers)

    def _turns(self, messages: list[BaseMessage]) -> list[dict[str, Any]]:
        """user/assistant turns, consecutive turns of one role merged into text blocks (the
        2024 API rejects two user turns in a row); the vendor judges the rest."""
        turns: list[dict[str, Any]] = []
        for message in messages:
            role = role_of(message, self.vendor_name)
            text = text_of(message, self.vendor_name)
            if turns and turns[-1]["role"] == role:
                previous = turns[-1]["content"]
                if isinstance(previous, str):
                    previous = [{"type": "text", "text": previous}]
                turns[-1]["content"] = [*previous, {"type": "text", "text": text}]
            else:
                turns.append({"role": role, "content": text})
        return turns

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        return {"x-api-key": self._require(self.api_key, "ANTHROPIC_API_KEY")}

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        blocks = body.get("content") or []
        text = "".join(
            str(b.get("text", ""))
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text"
        )
        raw_usage = body.get("usage") or {}
        return result(
            text,
            usage_metadata=_usage(raw_usage) if raw_usage else None,
            metadata={
                "finish_reason": body.get("stop_reason"),
                "stop_sequence": body.get("stop_sequence"),
                "model_name": body.get("model") or self.model,
                "request_id": meta.request_id,
            },
            message_id=body.get("id"),
        )

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        return AnthropicStreamDecoder(self, meta)

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        return self._anthropic_error(status, body, meta)

    def _anthropic_error(self, status: int | None, body: Any, meta: ResponseMeta) -> VendorError:
        """Map by the error's ``type`` (``status`` is None for an ``event: error`` mid-stream;
        a body that is not Anthropic's is judged by its status). Too-long prompts and content
        filtering are both ``invalid_request_error``, told apart by their message."""
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            if status is None:
                return self._error(None, str(body)[:300], meta=meta, kind=UpstreamError)
            return super()._error_from_response(status, body, meta)
        kind_name = str(error.get("type") or "")
        message = str(error.get("message") or kind_name or "unknown error")
        kind = _KINDS.get(kind_name)
        lowered = message.lower()
        if kind is InvalidRequestError and "prompt is too long" in lowered:
            kind = ContextTooLongError
        elif kind is InvalidRequestError and "content filtering" in lowered:
            kind = ContentFilteredError
        elif kind is None and (status is None or status < 400):
            kind = UpstreamError
        return self._error(status, message, code=kind_name or None, meta=meta, kind=kind)


class AnthropicStreamDecoder(StreamDecoder):
    """Named events from ``message_start`` to ``message_stop``; ``ping`` and unknown events
    (e.g. tool-use deltas) are skipped, ``error`` is raised."""

    model: ChatAnthropicMessages
    end_event = "message_stop"

    def __init__(self, model: ChatAnthropicMessages, meta: ResponseMeta) -> None:
        super().__init__(model, meta)
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        if not event.data.strip():
            return []
        data = event_json(self.model, event)
        if not isinstance(data, dict):
            return []
        kind = event.event if event.event and event.event != "message" else data.get("type")
        if kind == "error":
            raise self.model._anthropic_error(None, data, self.meta)
        if kind == "message_start":
            message = data.get("message") or {}
            self.message_id = message.get("id") or self.message_id
            self.model_name = message.get("model") or self.model_name
            self._count(message.get("usage") or {})
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self.text(str(delta.get("text") or ""))
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            self.finish_reason = delta.get("stop_reason") or self.finish_reason
            if delta.get("stop_sequence"):
                self.extra["stop_sequence"] = delta["stop_sequence"]
            self._count(data.get("usage") or {})
        elif kind == "message_stop":
            self.done = True
        return []

    def _count(self, raw: dict[str, Any]) -> None:
        """Later figures replace earlier ones: ``message_delta``'s counts are cumulative."""
        if raw.get("input_tokens") is not None:
            self.input_tokens = int(raw["input_tokens"])
        if raw.get("output_tokens") is not None:
            self.output_tokens = int(raw["output_tokens"])

    def finish(self) -> list[ChatGenerationChunk]:
        if self.input_tokens is not None or self.output_tokens is not None:
            self.usage = usage(self.input_tokens, self.output_tokens)
        return super().finish()


def _usage(raw: dict[str, Any]) -> UsageMetadata:
    return usage(raw.get("input_tokens"), raw.get("output_tokens"))


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatAnthropicMessages:
    """Catalog factory for vendor ``anthropic``; ``max_tokens`` defaults to the card's
    ``max_output_token`` (the API requires a value)."""
    kwargs = card_kwargs(
        card,
        base_url=settings.anthropic_base_url or ANTHROPIC_BASE_URL,
        credentials={"api_key": settings.anthropic_api_key},
        overrides=overrides,
    )
    if "max_completion_tokens" not in kwargs:
        kwargs.setdefault("max_tokens", card.max_output_token)
    return ChatAnthropicMessages(**kwargs)
