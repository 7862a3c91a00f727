"""Baidu Qianfan's v1 "wenxinworkshop" chat API (ERNIE-Bot, Llama-2, BLOOMZ, custom endpoints).

What differs from OpenAI's protocol, and why the code below exists:

* auth is an OAuth client-credentials exchange: the app's AK/SK buy an ``access_token``
  (``POST /oauth/2.0/token``, valid 30 days) that goes in the **query string** of every call.
  Tokens are cached per process (per base URL and AK), fetched natively sync or async, and
  dropped when the vendor reports them invalid or expired (``error_code`` 110/111), after
  which the shared HTTP layer fetches a new one and retries once. The token and the secret
  key are kept out of errors and out of the HTTP clients' request logs (the shared HTTP
  layer redacts query strings there);
* the model is not named in the body: it is the last part of the path,
  ``/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}``, so a user-deployed endpoint is
  just a catalog entry whose ``vendor_model`` is that endpoint (no code);
* ``messages`` must be user/assistant turns alternating from a user turn to a user turn
  (so odd in number); consecutive turns of one role are merged, anything else is refused
  with a clear message. The system prompt is the top-level ``system`` field on ERNIE
  endpoints; the open-source and custom endpoints take none, so there it is put in front
  of the first user turn (``accepts_system`` overrides the guess);
* errors (and rate limits) come inside HTTP 200 bodies as ``{"error_code", "error_msg"}``,
  also as the whole answer to a stream request; an unsafe prompt is flagged with
  ``need_clear_history`` (a :class:`ContentFilteredError` here);
* the stream is ``data: {...}`` events with no ``[DONE]``: the last has ``is_end: true``.
  Every event carries usage; the last one's is authoritative and is emitted once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.llms import _http
from fengchao_chains.llms._base import StreamDecoder, VendorChatModel, openai_usage, result
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._messages import role_of, split_system, text_of
from fengchao_chains.llms._sse import ServerSentEvent, event_json
from fengchao_chains.llms._tokens import Made, TokenCache, digest
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    CredentialsExpiredError,
    InvalidRequestError,
    QuotaExceededError,
    RateLimitError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.settings import Settings

QIANFAN_BASE_URL = "https://aip.baidubce.com"
OAUTH_PATH = "/oauth/2.0/token"
CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/"

# Qianfan's error codes (qianfan SDK ``APIErrorCode``, Baidu's error-code page).
_EXPIRED_CODES = {110, 111}  # access token invalid / expired: refresh and retry once
_AUTH_CODES = {6, 13, 14, 15, 336004}  # no permission, IAM failure, app missing
_RATE_CODES = {4, 18, 336501, 336502}  # request limit, QPS, RPM, TPM
_QUOTA_CODES = {17, 19}  # daily / total quota used up: retrying now cannot help
_CONTEXT_CODES = {336007, 336103}  # current question / prompt tokens too long
_UPSTREAM_CODES = {1, 2, 336000, 336100}  # unknown, unavailable, internal, high load
_FILTER_WORDS = ("sensitive", "敏感", "不安全", "unsafe", "content filter")

"""The endpoint of the call being made: answers do not name their model, and a call may
override ``model``, so the request builder leaves it here for the parsers (the base class
builds the request and parses its answer in the same context)."""

_FINISH_REASONS = {"normal": "stop"}
"""Qianfan's finish reasons in LangChain's words (``length``, ``content_filter``... agree)."""

_SYSTEM_ENDPOINTS = frozenset({"eb-instant", "ai_apaas", "ernie_bot_8k"})
_SYSTEM_PREFIXES = ("completions", "ernie")
"""ERNIE endpoints take a ``system`` field; the open-source ones (Llama-2, BLOOMZ, Mixtral,
Qianfan-Chinese-Llama-2) and user-deployed endpoints take none (qianfan ``QfLLMInfo``)."""


def takes_system_prompt(endpoint: str) -> bool:
    """Whether ``endpoint`` (the path after ``/chat/``) takes a top-level system prompt."""
    return endpoint in _SYSTEM_ENDPOINTS or endpoint.startswith(_SYSTEM_PREFIXES)


# --------------------------------------------------------------------------- access tokens


_Key = tuple[str, str, str]  # base URL, AK, digest of SK

TOKENS = TokenCache()
"""The process-wide access-token cache (``TOKENS.clear()`` forgets every token)."""


# --------------------------------------------------------------------------- the model


class ChatQianfan(VendorChatModel):
    """A chat model for Qianfan's v1 chat endpoints (AK/SK of a Qianfan application).

    Example::

        model = ChatQianfan(model="completions_pro")  # ERNIE-Bot-4; QIANFAN_AK / QIANFAN_SK
        model.invoke("你好", penalty_score=1.2, user_id="u1")  # vendor extras as kwargs
        mine = ChatQianfan(model="ngxxxol8_test1")  # a user-deployed endpoint

    ``model`` is the endpoint (the path after ``/chat/``). ``max_tokens`` is sent as
    ``max_output_tokens``; ``temperature`` is kept inside Qianfan's range (0, 1] (0 means
    0.01, the most deterministic it allows). ``penalty_score``, ``top_k``, ``user_id`` and
    the like go through ``model_kwargs`` or call kwargs, as does ``accepts_system`` (so a
    catalog card can say that its custom endpoint takes a system prompt).
    """

    vendor_name = "qianfan"
    default_base_url = QIANFAN_BASE_URL

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("QIANFAN_AK", default=None), alias="qianfan_ak"
    )
    """The application's API Key (AK)."""
    secret_key: SecretStr | None = Field(
        default_factory=secret_from_env("QIANFAN_SK", default=None), alias="qianfan_sk"
    )
    """The application's Secret Key (SK)."""
    base_url: str | None = Field(default_factory=from_env("QIANFAN_BASE_URL", default=None))
    accepts_system: bool | None = None
    """Whether the endpoint takes a ``system`` field; ``None`` guesses from its name."""

    # ----------------------------------------------------------------- request

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        endpoint = str(params.pop("model", None) or self.model)
        takes_system = params.pop("accepts_system", self.accepts_system)
        if takes_system is None:
            takes_system = takes_system_prompt(endpoint)
        system, turns = qianfan_messages(messages, self.vendor_name)
        body: dict[str, Any] = {"messages": turns}
        if system and takes_system:
            body["system"] = system
        elif system:
            turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
        if "max_tokens" in params:
            params.setdefault("max_output_tokens", params.pop("max_tokens"))
        if isinstance(params.get("temperature"), (int, float)):
            params["temperature"] = min(1.0, max(0.01, float(params["temperature"])))
        if isinstance(params.get("stop"), str):
            params["stop"] = [params["stop"]]
        body.update({k: v for k, v in params.items() if v is not None})
        body["stream"] = stream
        return VendorRequest("POST", self._url(CHAT_PATH + endpoint), json_body=body)

    # ----------------------------------------------------------------- auth

    def _token_key(self) -> _Key:
        ak = self._require(self.api_key, "QIANFAN_AK")
        sk = self._require(self.secret_key, "QIANFAN_SK")
        return (self._url(""), ak, digest(sk))

    def _token_request(self) -> VendorRequest:
        params = {
            "grant_type": "client_credentials",
            "client_id": self._secret(self.api_key),
            "client_secret": self._secret(self.secret_key),
        }
        return VendorRequest("POST", self._url(OAUTH_PATH), params=params)

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        request.params["access_token"] = TOKENS.get(self._token_key(), self._fetch_token)
        return {}

    async def _asign(self, request: VendorRequest) -> dict[str, str]:
        request.params["access_token"] = await TOKENS.aget(self._token_key(), self._afetch_token)
        return {}

    def _fetch_token(self, now: float) -> Made:
        response = _http.fetch(
            self, self._token_request(), self.http_client, during="access token request failed"
        )
        return self._read_token(response.status, response.headers, response.data, now)

    async def _afetch_token(self, now: float) -> Made:
        """The sync fetch in a worker thread: a token is fetched about once a day, and the
        OAuth exchange then stays in one place."""
        return await asyncio.to_thread(self._fetch_token, now)

    def _read_token(self, status: int, headers: Mapping[str, str], raw: bytes, now: float) -> Made:
        """The token of an OAuth answer (reused until a little before it expires, so it never
        expires between check and use), or the error saying why there is none."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        meta = ResponseMeta(status, headers, None)
        if isinstance(body, dict) and body.get("access_token"):
            lifetime = float(body.get("expires_in") or 2592000)
            return str(body["access_token"]), now + lifetime - min(300.0, lifetime / 10)
        if isinstance(body, dict) and body.get("error"):
            # invalid_client: "unknown client id" (AK) or "Client authentication failed" (SK)
            message = f"access token refused: {body.get('error_description') or body['error']}"
            kind = UpstreamError if status >= 500 else AuthenticationError
            raise self._error(status, message, code=body["error"], kind=kind)
        raise self._error(
            status,
            "the access token answer is unreadable",
            meta=meta,
            kind=UpstreamError if status >= 500 or 200 <= status < 300 else None,
        )

    def _forget_credentials(self) -> None:
        TOKENS.forget(self._token_key())

    # ----------------------------------------------------------------- answers

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        return result(
            str(body.get("result") or ""),
            usage_metadata=openai_usage(body.get("usage")),
            metadata={
                "finish_reason": _finish_reason(body),
                "model_name": meta.model or self.model,
                "request_id": meta.request_id or body.get("id"),
            },
            message_id=body.get("id"),
        )

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        return QianfanStreamDecoder(self, meta)

    def _request_id(self, headers: Mapping[str, str], body: Any = None) -> str | None:
        """Baidu's gateway id (``X-Baidu-Request-Id``) if sent, else the answer's ``id``."""
        if headers.get("x-baidu-request-id"):
            return str(headers["x-baidu-request-id"])
        return super()._request_id(headers, body)

    # ----------------------------------------------------------------- errors

    def _check_body(self, body: Any, meta: ResponseMeta) -> None:
        """Qianfan answers errors with HTTP 200; so is an unsafe prompt flagged."""
        if not isinstance(body, dict):
            return
        if body.get("error_code"):
            raise self._code_error(meta.status_code, body, meta)
        if body.get("need_clear_history"):
            ban_round = body.get("ban_round")
            where = "this message" if ban_round in (None, -1) else f"round {ban_round}"
            raise self._error(
                meta.status_code,
                f"the content filter flagged {where}; start a new conversation",
                code="need_clear_history",
                meta=_with_id(meta, body),
                kind=ContentFilteredError,
            )

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        if isinstance(body, dict) and body.get("error_code"):
            return self._code_error(status, body, meta)
        return super()._error_from_response(status, body, meta)

    def _code_error(self, status: int, body: dict[str, Any], meta: ResponseMeta) -> VendorError:
        """The project error for Qianfan's ``{"error_code", "error_msg"}``."""
        code = body.get("error_code")
        message = str(body.get("error_msg") or f"error code {code}")
        meta = _with_id(meta, body)
        kind: type[VendorError]
        if code in _EXPIRED_CODES:
            kind = CredentialsExpiredError
        elif code in _AUTH_CODES:
            kind = AuthenticationError
        elif code in _RATE_CODES or code in _QUOTA_CODES:
            kind = RateLimitError
        elif code in _CONTEXT_CODES:
            kind = ContextTooLongError
        elif any(word in message.lower() for word in _FILTER_WORDS):
            kind = ContentFilteredError
        elif code in _UPSTREAM_CODES or status >= 500:
            kind = UpstreamError
        elif any(word in message.lower() for word in ("too long", "prompt tokens")):
            kind = ContextTooLongError
        else:
            kind = InvalidRequestError
        if code in _QUOTA_CODES:
            kind = QuotaExceededError
        return self._error(status, message, code=code, meta=meta, kind=kind)


class QianfanStreamDecoder(StreamDecoder):
    """``data: {...}`` events up to the one with ``is_end: true``; each carries its text
    increment in ``result`` and usage so far (the last event's usage is the total)."""

    model: ChatQianfan
    end_event = "its last event (is_end)"

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        data = event_json(self.model, event)
        if not isinstance(data, dict):
            raise UpstreamError(f"unexpected stream event: {event.data[:200]!r}", vendor="qianfan")
        self.model._check_body(data, self.meta)
        self.message_id = self.message_id or data.get("id")
        self.request_id = self.request_id or data.get("id")
        if data.get("usage"):
            self.usage = openai_usage(data["usage"])
        if data.get("is_end"):
            self.done = True
            self.finish_reason = _finish_reason(data)
        return self.text(str(data.get("result") or ""))


def qianfan_messages(
    messages: list[BaseMessage], vendor: str
) -> tuple[str | None, list[dict[str, Any]]]:
    """The system prompt and the user/assistant turns Qianfan accepts: consecutive messages
    of one role are merged; a conversation must start and end with a user turn."""
    system, rest = split_system(messages, vendor)
    turns: list[dict[str, Any]] = []
    for message in rest:
        role = role_of(message, vendor)
        if role not in ("user", "assistant"):
            raise InvalidRequestError(
                f"Qianfan takes user and assistant messages (and a system prompt), not {role!r}",
                vendor=vendor,
            )
        text = text_of(message, vendor)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = "\n\n".join(t for t in (turns[-1]["content"], text) if t)
        else:
            turns.append({"role": role, "content": text})
    if not turns or turns[0]["role"] != "user":
        raise InvalidRequestError(
            "a Qianfan conversation must start with a user message (after the system prompt)",
            vendor=vendor,
        )
    if turns[-1]["role"] != "user":
        raise InvalidRequestError(
            "a Qianfan conversation must end with a user message; the assistant cannot go on"
            " from a partial answer",
            vendor=vendor,
        )
    return system, turns


def _finish_reason(body: dict[str, Any]) -> str:
    reason = body.get("finish_reason")
    if reason:
        return _FINISH_REASONS.get(str(reason), str(reason))
    return "length" if body.get("is_truncated") else "stop"


def _with_id(meta: ResponseMeta, body: dict[str, Any]) -> ResponseMeta:
    """``meta`` with the body's ``id`` as request id when no header gave one."""
    if meta.request_id or not body.get("id"):
        return meta
    return ResponseMeta(meta.status_code, meta.headers, str(body["id"]))


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatQianfan:
    """Catalog factory for vendor ``qianfan``: ``vendor_model`` is the endpoint."""
    kwargs = card_kwargs(
        card,
        base_url=settings.qianfan_base_url or QIANFAN_BASE_URL,
        credentials={"api_key": settings.qianfan_ak, "secret_key": settings.qianfan_sk},
        overrides=overrides,
    )
    return ChatQianfan(**kwargs)
