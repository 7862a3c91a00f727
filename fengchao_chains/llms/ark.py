"""Volcengine Ark: v3 chat (OpenAI's protocol) and the bots (agents) API.

Ark v3 speaks OpenAI's chat completions with a bearer API key, so :class:`ChatArk` is the
OpenAI-compatible model with Ark's URL, key variable and error codes. Its ``model`` is an
endpoint id (``ep-...``: a Skylark2 or Doubao deployment) or a model name; a new endpoint is
a catalog entry with ``vendor = "ark"`` and ``vendor_model = "ep-..."``, no code.

:class:`ChatArkBot` calls a bot built in the Ark console (a model plus plugins such as web
search or a knowledge base; ``model`` is the bot id). A bot answers with the references its
plugins found and the usage of every model and plugin call, which land in
``response_metadata`` (``references``, ``model_usage``, ``action_usage``); usage_metadata is
the sum over the bot's model calls. Two routes exist:

* ``bot_api="v3"`` (default): ``POST {base}/bots/chat/completions``, OpenAI-shaped with
  top-level ``references`` and ``bot_usage`` (what volcengine-ark-runtime's ``bot_chat`` calls).
* ``bot_api="v2"``: ``POST /api/v2/bots/{bot_id}/chat``, the older API fengchao was built on:
  parameters nested in ``parameters``, references in ``choices[].message.references``,
  ``usage.model_usage``/``usage.action_usage`` and the request id as ``req_id``.

Both may report a failure after the answer has begun, as an ordinary chunk carrying
``error``; it is raised as the mapped error, never retried.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.llms._base import StreamDecoder, openai_usage, result, usage
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._messages import openai_messages
from fengchao_chains.llms._sse import ServerSentEvent, event_json
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    RateLimitError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.settings import Settings

ARK_BASE_URL = "https://ark.cn-beijing.volces.com/api/v3"

_TOO_LONG = re.compile(r"exceeds? the maximum length|too long|context (length|window)", re.I)


def _kind_for_code(code: str, message: str) -> type[VendorError] | None:
    """The error class for one of Ark's codes (docs 82379/1299023), where the HTTP status
    alone would say less (a code inside a stream chunk has no status of its own)."""
    if "SensitiveContent" in code or "RiskDetection" in code:
        return ContentFilteredError
    if code.startswith("RateLimitExceeded") or code in ("ServerOverloaded", "QuotaExceeded"):
        return RateLimitError
    if code in ("AuthenticationError", "AccessDenied", "AccountOverdueError"):
        return AuthenticationError
    if code.startswith(("InvalidParameter", "MissingParameter")) and _TOO_LONG.search(message):
        return ContextTooLongError  # "Input length N exceeds the maximum length M"
    if code.startswith("InternalServiceError"):
        return UpstreamError
    return None


class ChatArk(ChatOpenAICompatible):
    """A model or endpoint on Volcengine Ark v3.

    Example::

        model = ChatArk(model="ep-20240601000000-abcde")  # key from ARK_API_KEY
    """

    vendor_name = "ark"
    default_base_url = ARK_BASE_URL

    api_key: SecretStr | None = Field(default_factory=secret_from_env("ARK_API_KEY", default=None))
    """The Ark API key, sent as a bearer token."""
    base_url: str | None = Field(default_factory=from_env("ARK_BASE_URL", default=None))

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._require(self.api_key, 'ARK_API_KEY')}"}

    def _refine(self, error: VendorError, body: Any, meta: ResponseMeta | None) -> VendorError:
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, dict):
            return error
        kind = _kind_for_code(str(detail.get("code") or ""), error.message)
        if kind is None:
            return super()._refine(error, body, meta)
        return self._as_kind(error, kind, meta)

    def _mid_stream_error(self, data: dict[str, Any], meta: ResponseMeta) -> VendorError:
        """An error sent as a stream chunk (on every route), mapped by Ark's code."""
        detail = data["error"] if isinstance(data["error"], dict) else {"message": data["error"]}
        message = str(detail.get("message") or "the stream reported an error")
        error = self._error(None, message, code=detail.get("code"), meta=meta)
        return self._refine(error, {"error": detail}, meta)


@dataclass
class BotTrace:
    """What a bot reports besides its text, gathered from an answer or from every chunk."""

    references: list[dict[str, Any]] = field(default_factory=list)
    model_usage: list[dict[str, Any]] | None = None
    action_usage: list[dict[str, Any]] | None = None
    totals: dict[str, Any] | None = None

    def add(self, data: dict[str, Any]) -> None:
        """v3 puts references at the top and usage in ``bot_usage``; v2 puts references in
        the choice's message and the lists inside ``usage``."""
        found = list(data.get("references") or [])
        for choice in data.get("choices") or []:
            for key in ("message", "delta"):
                found += (choice.get(key) or {}).get("references") or []
        for reference in found:  # a stream may repeat them on several chunks
            if isinstance(reference, dict) and reference not in self.references:
                self.references.append(reference)
        plain: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        bot: dict[str, Any] = data["bot_usage"] if isinstance(data.get("bot_usage"), dict) else {}
        for source in (plain, bot):
            if source.get("model_usage") is not None:
                self.model_usage = list(source["model_usage"])
            if source.get("action_usage") is not None:
                self.action_usage = list(source["action_usage"])
        if plain.get("prompt_tokens") is not None:
            self.totals = plain

    def usage_metadata(self) -> UsageMetadata | None:
        """The sum over the bot's model calls (or the plain totals if it listed none)."""
        if self.model_usage:
            return usage(
                sum(int(m.get("prompt_tokens") or 0) for m in self.model_usage),
                sum(int(m.get("completion_tokens") or 0) for m in self.model_usage),
            )
        return openai_usage(self.totals)

    def metadata(self) -> dict[str, Any]:
        return {
            "references": self.references,
            "model_usage": self.model_usage,
            "action_usage": self.action_usage,
        }


class ChatArkBot(ChatArk):
    """A bot (agent) on Volcengine Ark; ``model`` is the bot id (``bot-2024...``).

    Example::

        bot = ChatArkBot(model="bot-20240601000000-abcde")
        answer = bot.invoke("今天北京天气如何？")
        answer.response_metadata["references"]  # what the bot's plugins found
    """

    vendor_name = "ark_bot"

    bot_api: Literal["v3", "v2"] = "v3"
    """Which bots route to call (see the module docstring). With ``v2`` a base URL ending in
    ``/api/v3`` is used with ``/api/v2`` instead, so one ARK_BASE_URL serves both."""

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        if self.bot_api == "v3":
            request = super()._chat_request(messages, params, stream=stream)
            request.url = self._url("/bots/chat/completions")
            return request
        bot_id = params.pop("model", None) or self.model
        body: dict[str, Any] = {
            "messages": openai_messages(messages, self.vendor_name),
            "stream": stream,
        }
        if params:
            body["parameters"] = params
        return VendorRequest("POST", self._v2_url(f"/bots/{bot_id}/chat"), json_body=body)

    def _v2_url(self, path: str) -> str:
        base = (self.base_url or self.default_base_url).rstrip("/")
        if base.endswith("/api/v3"):
            base = base.removesuffix("/api/v3") + "/api/v2"
        return base + path

    def _request_id(self, headers: Mapping[str, str], body: Any = None) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("req_id"), str) and body["req_id"]:
            return super()._request_id(headers) or str(body["req_id"])
        return super()._request_id(headers, body)

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        choice = (body.get("choices") or [{}])[0]
        trace = BotTrace()
        trace.add(body)
        return result(
            (choice.get("message") or {}).get("content") or "",
            usage_metadata=trace.usage_metadata(),
            metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": body.get("model") or meta.model or self.model,
                "request_id": meta.request_id or body.get("req_id") or body.get("id"),
                **trace.metadata(),
            },
            message_id=body.get("id") or body.get("req_id"),
        )

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        return ArkBotStreamDecoder(self, meta)


class ArkBotStreamDecoder(StreamDecoder):
    """Bot chunks of either route (v3 ``delta`` or v2 ``message`` increments), up to
    ``[DONE]``; references and usage gathered on the way go on the closing chunk."""

    model: ChatArkBot

    def __init__(self, model: ChatArkBot, meta: ResponseMeta) -> None:
        super().__init__(model, meta)
        self.trace = BotTrace()

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        if event.data.strip() == "[DONE]":
            self.done = True
            return []
        data = event_json(self.model, event)
        if not isinstance(data, dict):
            return []
        if data.get("error"):
            raise self.model._mid_stream_error(data, self.meta)
        self.trace.add(data)
        self.message_id = self.message_id or data.get("id") or data.get("req_id")
        self.request_id = self.request_id or data.get("req_id")
        self.model_name = data.get("model") or self.model_name
        choices = data.get("choices") or []
        choice = choices[0] if choices else {}
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        part = choice.get("delta") or choice.get("message") or {}
        return self.text(part.get("content") or "")

    def finish(self) -> list[ChatGenerationChunk]:
        self.usage = self.trace.usage_metadata()
        self.extra.update(self.trace.metadata())
        return super().finish()


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatArk:
    """Catalog factory for vendor ``ark`` (``vendor_model``: an endpoint id or model name)."""
    return ChatArk(**_card_kwargs(card, settings, overrides))


def create_bot(card: ModelCard, settings: Settings, **overrides: Any) -> ChatArkBot:
    """Catalog factory for vendor ``ark_bot`` (``vendor_model``: the bot id)."""
    return ChatArkBot(**_card_kwargs(card, settings, overrides))


def _card_kwargs(card: ModelCard, settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    """Both Ark vendors take the same settings: one key and base URL serve chat and bots."""
    return card_kwargs(
        card,
        base_url=settings.ark_base_url or ARK_BASE_URL,
        credentials={"api_key": settings.ark_api_key},
        overrides=overrides,
    )
