"""Shanghai AI Lab's InternLM "puyu" API, legacy OpenXLab version (``ChatPJLM-latest``).

Public information is thin, so every wire choice here is written down with its evidence
(tags as in ``docs/vendors.md``: seed = the original request document, OBS = third-party
code, UNVERIFIED = a guess the client is lenient about):

* **Endpoint**: ``POST {base}/chat/completion`` (singular) with default base
  ``https://puyu.openxlab.org.cn/puyu/api/v1`` [OBS opencompass ``pjlm.py``]. The seed gives
  only the body, not the URL. A ``base_url`` that already ends in ``/chat/completion(s)`` is
  used as is, for a host with another path.
* **Auth**: the token (a JWT printed by ``openxlab token``) goes raw in ``Authorization``, no
  ``Bearer`` [OBS]. A key that already starts with ``Bearer `` is sent unchanged. These
  tokens expire (OpenCompass renews them every 30 minutes by running the CLI); the exchange
  behind the CLI is not public, so an expired token is an :class:`AuthenticationError`, not
  a refresh.
* **Request** [seed]: ``{"model", "messages": [{"role", "text"}], "n", "temperature",
  "top_p", "disable_report"}``. Messages carry ``text``, not ``content``. Roles ``user`` and
  ``assistant`` are in the seed; ``system`` is sent as a role too [UNVERIFIED]. ``n`` is
  sent (default 1, as in the seed) but only the first choice is read: a chat model returns
  one message. ``max_tokens`` and ``stop`` are sent under those names only when set
  [UNVERIFIED: the successor API names them so]. Vendor extras such as
  ``plugins={"Search": false, ...}`` [OBS] go in ``model_kwargs`` or per call.
* **Answer**: ``{"msg": "success", "data": {"choices": [{"text": ...}]}}`` [OBS; clients
  check ``msg`` and read ``data.choices[0].text``]. Also read, when present [UNVERIFIED]:
  ``msgCode`` (``"10000"`` is success in OpenXLab's gateway, whose document is embedded in
  the seed), ``data.usage`` (OpenAI names), ``data.id``, ``data.model``,
  ``choices[].finish_reason`` (``"stop"`` when absent) and the successor's
  ``choices[].message.content``.
* **Usage**: the evidence shows no usage in the answer. When the answer has none, usage is
  *estimated* (one token per CJK character, word or punctuation mark of the prompt and the
  reply) and flagged ``response_metadata["usage_estimated"] = True``, so billing can tell;
  ``estimate_usage=False`` leaves ``usage_metadata`` unset instead.
* **Streaming**: none is documented, so the request never asks for it. A stream is the one
  complete answer, delivered as a content chunk and the closing chunk with usage; since
  nothing reaches the caller before the whole answer is read, any failure is retried safely.
* **Errors** [seed's gateway table, OBS]: HTTP 401 (unauthorized), 429 (rate limit,
  ``Retry-After`` honoured), 5xx, or a 200 whose ``msgCode`` is not a success code (``"-1"``
  is the business error) or that has no choices. Which business error it is can only be
  told from ``msg`` [UNVERIFIED]: token, content-safety, too-long and invalid-parameter
  wording map to :class:`AuthenticationError`, :class:`ContentFilteredError`,
  :class:`ContextTooLongError` and :class:`InvalidRequestError`; the rest is an
  :class:`UpstreamError` (retried).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.llms._base import (
    AnswerFilter,
    StreamDecoder,
    VendorChatModel,
    result,
    usage,
)
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._messages import estimate_tokens, role_of, text_of
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    InvalidRequestError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.settings import Settings

logger = logging.getLogger("fengchao_chains.llms")

PUYU_BASE_URL = "https://puyu.openxlab.org.cn/puyu/api/v1"
CHAT_PATH = "/chat/completion"
SUCCESS_CODES = {"10000", "0"}

_AUTH_WORDS = ("unauthorized", "invalid token", "token expired", "未授权", "鉴权")
_FILTER_WORDS = ("sensitive", "content filter", "content safety", "内容安全", "敏感", "违规")
_CONTEXT_WORDS = (
    "too long",
    "context length",
    "maximum context",
    "exceeds the limit",
    "超长",
    "过长",
    "超出最大",
)
_INVALID_WORDS = ("invalid", "required", "参数")


def puyu_messages(messages: list[BaseMessage], vendor: str) -> list[dict[str, str]]:
    """Messages in the puyu shape: ``{"role", "text"}``."""
    return [{"role": role_of(m, vendor), "text": text_of(m, vendor)} for m in messages]


class ChatInternLM(VendorChatModel):
    """InternLM through the legacy puyu API.

    Example::

        model = ChatInternLM()  # ChatPJLM-latest, token from INTERNLM_API_KEY
        model.invoke("你好")
    """

    vendor_name = "internlm"
    default_base_url = PUYU_BASE_URL

    model: str = Field(default="ChatPJLM-latest", alias="model_name")
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("INTERNLM_API_KEY", default=None)
    )
    """The OpenXLab token, sent raw in ``Authorization``."""
    base_url: str | None = Field(default_factory=from_env("INTERNLM_BASE_URL", default=None))
    n: int = Field(default=1, ge=1)
    """Sent as the seed does; only the first choice becomes the answer."""
    disable_report: bool = False
    """The vendor's own flag, sent as the seed does."""
    estimate_usage: bool = True
    """Estimate (and flag) usage when the answer carries none; off leaves usage unset."""

    # ------------------------------------------------------------------ request

    def _endpoint(self) -> str:
        url = (self.base_url or self.default_base_url).rstrip("/")
        return url if url.endswith((CHAT_PATH, CHAT_PATH + "s")) else url + CHAT_PATH

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": puyu_messages(messages, self.vendor_name),
            "n": self.n,
            "disable_report": self.disable_report,
            **params,
        }
        # The same request either way: the API has no stream, so do not ask for one.
        headers = {"Accept": "application/json"}
        return VendorRequest("POST", self._endpoint(), json_body=body, headers=headers)

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        return {"Authorization": self._require(self.api_key, "INTERNLM_API_KEY")}

    # ------------------------------------------------------------------ answers

    def _request_id(self, headers: Mapping[str, str], body: Any = None) -> str | None:
        found = super()._request_id(headers, body)
        data = body.get("data") if isinstance(body, dict) else None
        if found is None and isinstance(data, dict) and isinstance(data.get("id"), (str, int)):
            return str(data["id"])
        return found

    def _check_body(self, body: Any, meta: ResponseMeta) -> None:
        code = body.get("msgCode") if isinstance(body, dict) else None
        failed = code is not None and str(code) not in SUCCESS_CODES
        if failed or not _choices(body):
            raise self._error_from_response(meta.status_code, body, meta)

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        data = _data(body)
        choice = _choices(body)[0]
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content")
        return result(
            str(text or ""),
            usage_metadata=_usage(data.get("usage") or body.get("usage")),
            metadata={
                "finish_reason": choice.get("finish_reason") or "stop",
                "model_name": data.get("model") or self.model,
                "request_id": meta.request_id,
            },
            message_id=str(data["id"]) if data.get("id") else None,
        )

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        raise UpstreamError(
            "the puyu API answered with an event stream, which this client never asks for",
            vendor=self.vendor_name,
            request_id=meta.request_id,
        )

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        message = httpx.codes.get_reason_phrase(status) or "error"
        code: str | None = None
        if isinstance(body, dict):
            detail = body.get("msg") or body.get("message") or body.get("detail")
            message = str(detail or body)[:300]
            code = str(body["msgCode"]) if body.get("msgCode") is not None else None
        elif body:
            message = str(body)[:300]
        return self._error(status, message, code=code, meta=meta, kind=_kind(status, message))

    def _answer_filter(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AnswerFilter:
        return _UsageEstimate(messages, self.vendor_name) if self.estimate_usage else AnswerFilter()


class _UsageEstimate(AnswerFilter):
    """Estimates (and flags) usage when the answer carries none. A stream gets it on its
    closing chunk only (the base delivers the whole answer as its text, then that chunk), so
    a summed stream counts it once."""

    def __init__(self, messages: list[BaseMessage], vendor: str) -> None:
        self.messages = messages
        self.vendor = vendor
        self.text = ""

    def whole(self, answer: ChatResult) -> ChatResult:
        message = answer.generations[0].message
        self._fill(message, str(message.content))
        return answer

    def chunk(self, chunk: ChatGenerationChunk) -> ChatGenerationChunk | None:
        self.text += chunk.text
        message = chunk.message
        if isinstance(message, AIMessageChunk) and message.chunk_position == "last":
            self._fill(message, self.text)
        return chunk

    def _fill(self, message: BaseMessage, reply: str) -> None:
        if not isinstance(message, AIMessage) or message.usage_metadata is not None:
            return
        prompt = sum(estimate_tokens(text_of(m, self.vendor)) for m in self.messages)
        message.usage_metadata = usage(prompt, estimate_tokens(reply))
        message.response_metadata["usage_estimated"] = True
        logger.debug("%s: the answer had no usage; estimated it", self.vendor)


def _data(body: Any) -> dict[str, Any]:
    """The envelope's ``data`` (or the body itself for an envelope-less answer)."""
    if not isinstance(body, dict):
        return {}
    data = body.get("data")
    return data if isinstance(data, dict) else body


def _choices(body: Any) -> list[dict[str, Any]]:
    choices = _data(body).get("choices")
    if not isinstance(choices, list):
        return []
    return [c for c in choices if isinstance(c, dict)]


def _usage(raw: Any) -> UsageMetadata | None:
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens", raw.get("input_tokens"))
    completion = raw.get("completion_tokens", raw.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    return usage(prompt, completion)


def _kind(status: int, message: str) -> type[VendorError] | None:
    """The error class the message tells (None: the base's choice by HTTP status)."""
    lowered = message.lower()
    if status in (401, 403, 429) or status >= 500:
        return None
    if any(word in lowered for word in _AUTH_WORDS):
        return AuthenticationError
    if any(word in lowered for word in _FILTER_WORDS):
        return ContentFilteredError
    if any(word in lowered for word in _CONTEXT_WORDS):
        return ContextTooLongError
    if any(word in lowered for word in _INVALID_WORDS):
        return InvalidRequestError
    return UpstreamError if status < 400 else None


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatInternLM:
    """Catalog factory for vendor ``internlm``."""
    kwargs = card_kwargs(
        card,
        base_url=settings.internlm_base_url or PUYU_BASE_URL,
        credentials={"api_key": settings.internlm_api_key},
        overrides=overrides,
    )
    return ChatInternLM(**kwargs)
