"""Zhipu AI (GLM-4): OpenAI-like chat completions behind a client-minted JWT.

A Zhipu API key is ``"{key_id}.{secret}"``. The secret never travels: each request carries
an HS256 JWT (header ``sign_type: SIGN``, claims ``api_key``, ``exp`` and ``timestamp``,
both times in *milliseconds*) signed with it. Tokens are cached per key until shortly before
they expire, and a 401 saying the token expired makes the shared HTTP layer drop the cached
one and retry once with a fresh token.

Zhipu reports failures as ``{"error": {"code": "1261", "message": ...}}`` with its own
numeric codes, which say more than the HTTP status (a 429 may mean "slow down" or "your
balance is empty"), so errors are mapped by code first and by status only as a fallback.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
from jwt.algorithms import HMACAlgorithm
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.llms._base import StreamDecoder, VendorChatModel, openai_usage, result
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._messages import openai_messages
from fengchao_chains.llms._sse import ServerSentEvent
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

ZHIPU_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"

TOKEN_TTL_SECONDS = 210
"""Lifetime written into each JWT (the official SDK's: 180 s of caching plus 30 s)."""
TOKEN_REFRESH_MARGIN = 30
"""A cached token is replaced this many seconds before it expires."""


_ERROR_KINDS: dict[str, type[VendorError]] = {
    **dict.fromkeys(("1000", "1001", "1002", "1004"), AuthenticationError),
    **dict.fromkeys(("1110", "1111", "1112", "1120", "1121", "1220"), AuthenticationError),
    "1003": CredentialsExpiredError,
    **dict.fromkeys(("1113", "1304"), QuotaExceededError),
    **dict.fromkeys(("1302", "1303", "1305"), RateLimitError),
    "1261": ContextTooLongError,
    **dict.fromkeys(("1300", "1301"), ContentFilteredError),
    **dict.fromkeys(("1210", "1211", "1212", "1213", "1214", "1215"), InvalidRequestError),
    **dict.fromkeys(("1221", "1222", "1231"), InvalidRequestError),
    **dict.fromkeys(("500", "1230", "1234", "1260"), UpstreamError),
}
"""Zhipu's business codes (https://docs.z.ai/api-reference/api-code) to the error tree."""


# --------------------------------------------------------------------------- JWT


class _ShortKeyHMAC(HMACAlgorithm):
    """HS256 without PyJWT's key-length warning: Zhipu's secrets are 16 bytes, below the
    32 that RFC 7518 recommends, and that is the vendor's design, not ours to fix."""

    def check_key_length(self, key: bytes) -> str | None:
        return None


_JWS = jwt.PyJWS(algorithms=[])
_JWS.register_algorithm("HS256", _ShortKeyHMAC(HMACAlgorithm.SHA256))


def _now() -> float:
    """The clock tokens are minted by (a seam for tests that need time to pass)."""
    return time.time()


def mint_token(api_key: str, *, ttl: float = TOKEN_TTL_SECONDS, now: float | None = None) -> str:
    """Zhipu's JWT for ``api_key`` (``id.secret``); both time claims in milliseconds."""
    key_id, dot, secret = api_key.partition(".")
    if not dot or not key_id or not secret or "." in secret:
        raise AuthenticationError(
            "ZHIPUAI_API_KEY must look like '<key id>.<secret>'", vendor=ChatZhipu.vendor_name
        )
    now_ms = int((_now() if now is None else now) * 1000)
    payload = {"api_key": key_id, "exp": now_ms + int(ttl * 1000), "timestamp": now_ms}
    return _JWS.encode(
        json.dumps(payload).encode(),
        secret,
        algorithm="HS256",
        headers={"alg": "HS256", "sign_type": "SIGN"},
    )


def _minted(api_key: str, now: float) -> Made:
    """A new token for ``api_key``, reused until TOKEN_REFRESH_MARGIN before it expires."""
    return mint_token(api_key, now=now), now + TOKEN_TTL_SECONDS - TOKEN_REFRESH_MARGIN


# ``_now`` is looked up on every call (not bound here), so tests can move the clock.
TOKENS = TokenCache(clock=lambda: _now())  # noqa: PLW0108
"""One live token per API key (keyed by a digest), shared by every model and thread."""


# --------------------------------------------------------------------------- the model


class ChatZhipu(VendorChatModel):
    """Zhipu AI's GLM chat models (``glm-4`` and its siblings).

    Example::

        model = ChatZhipu(model="glm-4")  # key from ZHIPUAI_API_KEY ("id.secret")
        model.invoke("你好", do_sample=False)  # Zhipu's own parameters pass through
    """

    vendor_name = "zhipu"
    default_base_url = ZHIPU_BASE_URL

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("ZHIPUAI_API_KEY", default=None), alias="zhipuai_api_key"
    )
    """The ``id.secret`` key; only JWTs signed with it are sent."""
    base_url: str | None = Field(default_factory=from_env("ZHIPUAI_BASE_URL", default=None))

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(messages, self.vendor_name),
            **params,
            "stream": stream,
        }
        _clamp_sampling(body)
        return VendorRequest("POST", self._url("/chat/completions"), json_body=body)

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        key = self._require(self.api_key, "ZHIPUAI_API_KEY")
        token = TOKENS.get(digest(key), lambda now: _minted(key, now))
        return {"Authorization": f"Bearer {token}"}

    def _forget_credentials(self) -> None:
        if self.api_key is not None:
            TOKENS.forget(digest(self.api_key.get_secret_value()))

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        choice = (body.get("choices") or [{}])[0]
        return result(
            (choice.get("message") or {}).get("content") or "",
            usage_metadata=openai_usage(body.get("usage")),
            metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": body.get("model") or self.model,
                "request_id": body.get("request_id") or meta.request_id,
            },
            message_id=body.get("id"),
        )

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        return ZhipuStreamDecoder(self, meta)

    def _check_body(self, body: Any, meta: ResponseMeta) -> None:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise self._error_from_response(meta.status_code, body, meta)

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        return self._zhipu_error(status, body, meta)

    def _zhipu_error(self, status: int | None, body: Any, meta: ResponseMeta) -> VendorError:
        """The error for Zhipu's ``{"error": {"code", "message"}}``: by code, then status."""
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, dict):
            return super()._error_from_response(status or 500, body, meta)
        code = str(detail.get("code") or "") or None
        message = str(detail.get("message") or httpx.codes.get_reason_phrase(status or 500))
        kind = _ERROR_KINDS.get(code or "")
        if kind is None and status == 401 and ("expired" in message or "过期" in message):
            kind = CredentialsExpiredError
        if kind is None and status is None:
            kind = UpstreamError
        return self._error(status, message, code=code, meta=meta, kind=kind)


def _clamp_sampling(body: dict[str, Any]) -> None:
    """Zhipu takes ``temperature`` and ``top_p`` in the open interval (0, 1); like the
    official SDK, 0 becomes 0.01 with ``do_sample=false`` (greedy) and 1 becomes 0.99."""
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)):
        if temperature <= 0:
            body["temperature"] = 0.01
            body.setdefault("do_sample", False)
        elif temperature >= 1:
            body["temperature"] = 0.99
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)):
        body["top_p"] = min(max(top_p, 0.01), 0.99)


class ZhipuStreamDecoder(StreamDecoder):
    """``data: {chunk}`` events; the chunk with ``finish_reason`` carries the usage; the
    stream ends with ``data: [DONE]``. An error arrives as ``data: {"error": {...}}``."""

    model: ChatZhipu

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        data = self.data(event)
        if data is None:
            return []
        if data.get("error"):
            meta = ResponseMeta(200, httpx.Headers(), self.request_id)
            raise self.model._zhipu_error(None, data, meta)
        self.message_id = self.message_id or data.get("id")
        self.request_id = self.request_id or data.get("request_id") or data.get("id")
        self.model_name = data.get("model") or self.model_name
        choices = data.get("choices") or []
        choice = choices[0] if choices else {}
        if data.get("usage"):
            self.usage = openai_usage(data["usage"])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return self.text((choice.get("delta") or {}).get("content") or "")


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatZhipu:
    """Catalog factory for vendor ``zhipu``."""
    kwargs = card_kwargs(
        card,
        base_url=settings.zhipuai_base_url or ZHIPU_BASE_URL,
        credentials={"api_key": settings.zhipuai_api_key},
        overrides=overrides,
    )
    return ChatZhipu(**kwargs)
