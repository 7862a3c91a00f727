"""SenseNova (SenseTime 日日新): ``POST {base}/llm/chat-completions``.

Auth: the access key id (``api_key``) and secret key sign a short-lived HS256 JWT on the
client (``iss`` = access key, ``exp`` and ``nbf`` in seconds, as the official SDK does). The
token is cached per key pair and shared by every model instance and thread until shortly
before it expires; a 401 that says the token expired drops it and the call is retried once
with a fresh one. With only ``api_key`` set (a platform API key), it is sent as the bearer.

Wire format: everything sits under ``data``; a choice's ``message`` (and a stream's
``delta``) is a plain string. The stream is ``data:{...}`` lines ending with ``data:[DONE]``
and carries *cumulative* usage on every chunk, so the last one counts.

Usage: SenseNova reports ``prompt_tokens``, ``knowledge_tokens`` (knowledge-base text fed to
the model) and ``completion_tokens``, and its ``total_tokens`` includes all three. Knowledge
tokens are model input that the vendor bills, so ``usage_metadata.input_tokens`` is
prompt + knowledge tokens; ``total_tokens`` is then input + output, equal to SenseNova's
total. ``response_metadata["knowledge_tokens"]`` keeps the knowledge share on its own, next
to ``knowledge_base_results`` and ``plugins`` (web search) when the vendor returns them.

What the API lacks is done client-side: stop sequences (there is no ``stop`` field; the
text is cut, a stream holds back only what could begin a stop word) and the model name in
the metadata (answers do not name the model). Its open ranges ``temperature`` (0, 2] and
``top_p`` (0, 1) would reject LangChain's usual 0 and 1, so those are sent as the nearest
values the API accepts at its six-decimal precision. A ``finish_reason`` of ``sensitive``
(the vendor's content filter stopped the answer) raises :class:`ContentFilteredError`.

Error codes: bodies are ``{"error": {"code", "message", "details"}}``; the numeric codes are
gRPC-style (3 invalid argument, 16 unauthenticated, 8 resource exhausted, 13 internal) but
undocumented, so errors are mapped by HTTP status and refined by their message.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
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
from fengchao_chains.llms._messages import role_of, text_of
from fengchao_chains.llms._sse import ServerSentEvent, event_json
from fengchao_chains.llms._tokens import Made, TokenCache, digest
from fengchao_chains.llms.errors import (
    ContentFilteredError,
    ContextTooLongError,
    CredentialsExpiredError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.settings import Settings

SENSENOVA_BASE_URL = "https://api.sensenova.cn/v1"
ACCESS_KEY_ENV = "SENSENOVA_ACCESS_KEY_ID"
SECRET_KEY_ENV = "SENSENOVA_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name

REFRESH_MARGIN = 60.0
"""Seconds before expiry at which a cached token is replaced (at most half its lifetime)."""
_NEAR_ZERO = 0.000001  # the API's precision is six decimals

_tokens = TokenCache(clock=time.time)
"""Minted JWTs, one per key pair and lifetime, shared by every model instance and thread."""


class ChatSenseNova(VendorChatModel):
    """SenseNova's chat models (``SenseChat-5``, ``SenseChat``, ``SenseChat-32K``, ...).

    Example::

        model = ChatSenseNova(model="SenseChat-5")  # keys from SENSENOVA_ACCESS_KEY_ID/_SECRET_...
        rag = model.bind(know_ids=["kb-1"], knowledge_config={"knowledge_base_result": True})

    Vendor parameters (``repetition_penalty``, ``n``, ``user``, ``know_ids``,
    ``knowledge_config``, ``plugins``) go in ``model_kwargs`` or per call.
    """

    vendor_name = "sensenova"
    default_base_url = SENSENOVA_BASE_URL

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env(ACCESS_KEY_ENV, default=None), alias="access_key_id"
    )
    """The access key id (or a platform API key, if ``secret_key`` is unset)."""
    secret_key: SecretStr | None = Field(
        default_factory=secret_from_env(SECRET_KEY_ENV, default=None),
        alias="secret_access_key",
    )
    """The secret access key that signs the JWT; it never leaves this process."""
    base_url: str | None = Field(default_factory=from_env("SENSENOVA_API_BASE", default=None))
    repetition_penalty: float | None = None
    """(0, 2]; 1 means no penalty."""
    token_ttl: int = Field(default=1800, ge=3)
    """Lifetime of a minted JWT, in seconds (the SDK's 30 minutes)."""

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": ACCESS_KEY_ENV, "secret_key": SECRET_KEY_ENV}

    # ------------------------------------------------------------------ request

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        params = dict(params)
        params.pop("stop", None)  # no such field: applied client-side (see _Finisher)
        if "max_tokens" in params:
            params["max_new_tokens"] = params.pop("max_tokens")
        if params.get("temperature") is not None and params["temperature"] <= 0:
            params["temperature"] = _NEAR_ZERO
        if params.get("top_p") is not None and params["top_p"] >= 1:
            params["top_p"] = 1 - _NEAR_ZERO
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": role_of(m, self.vendor_name), "content": text_of(m, self.vendor_name)}
                for m in messages
            ],
        }
        if self.repetition_penalty is not None:
            body["repetition_penalty"] = self.repetition_penalty
        body.update(params)
        body["stream"] = stream
        return VendorRequest("POST", self._url("/llm/chat-completions"), json_body=body)

    # ------------------------------------------------------------------ auth

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        if self.secret_key is None or not self.secret_key.get_secret_value():
            return {"Authorization": f"Bearer {self._require(self.api_key, ACCESS_KEY_ENV)}"}
        return {"Authorization": f"Bearer {_tokens.get(self._token_key(), self._mint)}"}

    def _token_key(self) -> tuple[str, str, int]:
        access_key = self._require(self.api_key, ACCESS_KEY_ENV)
        secret = self._require(self.secret_key, SECRET_KEY_ENV)
        return access_key, digest(secret), self.token_ttl

    def _mint(self, now: float) -> Made:
        """A JWT as the SDK mints it, reused until REFRESH_MARGIN (at most half its lifetime)
        before it expires. Minting is pure computation, so it is fine in async code too."""
        issued = int(now)
        claims = {
            "iss": self._secret(self.api_key),
            "exp": issued + self.token_ttl,
            "nbf": issued - 5,
        }
        token = jwt.encode(
            claims,
            self._secret(self.secret_key),
            algorithm="HS256",
            headers={"alg": "HS256", "typ": "JWT"},
        )
        return token, issued + self.token_ttl - min(REFRESH_MARGIN, self.token_ttl / 2)

    def _forget_credentials(self) -> None:
        if not (self._secret(self.api_key) and self._secret(self.secret_key)):
            return  # a platform API key: nothing minted, nothing to forget
        _tokens.forget(self._token_key())

    # ------------------------------------------------------------------ answers

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            message = f"answer without data: {str(body)[:200]!r}"
            raise self._error(meta.status_code, message, meta=meta, kind=UpstreamError)
        choice = (data.get("choices") or [{}])[0]
        finish_reason = choice.get("finish_reason") or None
        if finish_reason == "sensitive":
            raise self._filtered(meta)
        raw_usage = data.get("usage")
        return result(
            _message_text(choice.get("message")),
            usage_metadata=_usage(raw_usage) if raw_usage else None,
            metadata={
                "finish_reason": finish_reason,
                "model_name": self.model,
                "request_id": meta.request_id or data.get("id"),
                **_extras(data),
            },
            message_id=data.get("id"),
        )

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        return SenseNovaStreamDecoder(self, meta)

    def _check_body(self, body: Any, meta: ResponseMeta) -> None:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise self._error_from_response(meta.status_code, body, meta)
        status = body.get("status") if isinstance(body, dict) else None
        if (
            isinstance(status, dict)
            and status.get("code") not in (0, None)
            and not body.get("data")
        ):
            message, code = str(status.get("message")), status.get("code")
            raise self._error(meta.status_code, message, code=code, meta=meta, kind=UpstreamError)

    # ------------------------------------------------------------------ errors

    def _error_from_response(
        self, status: int | None, body: Any, meta: ResponseMeta | None
    ) -> VendorError:
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            message, code = str(detail.get("message") or "unknown error"), detail.get("code")
        else:
            message = str(body)[:300] if body else httpx.codes.get_reason_phrase(status or 500)
            code = None
        return self._error(status, message, code=code, meta=meta, kind=_kind(status, message))

    def _filtered(self, meta: ResponseMeta | None) -> VendorError:
        return self._error(
            meta.status_code if meta else None,
            "the answer was stopped by SenseNova's content filter (finish_reason sensitive)",
            code="sensitive",
            meta=meta,
            kind=ContentFilteredError,
        )

    def _answer_filter(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AnswerFilter:
        stops = stop if stop is not None else self.stop
        return _Finisher(stops or [], str(kwargs.get("model") or self.model))


class SenseNovaStreamDecoder(StreamDecoder):
    """``data:{"data": {...}}`` chunks up to ``data:[DONE]``; a chunk with an ``error``
    key is the vendor failing mid-stream."""

    model: ChatSenseNova

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        if event.data.strip() == "[DONE]":
            self.done = True
            return []
        payload = event_json(self.model, event)
        if isinstance(payload, dict) and payload.get("error"):
            raise self.model._error_from_response(None, payload, self.meta)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            return []
        self.message_id = self.message_id or data.get("id")
        self.request_id = self.request_id or data.get("id")
        if data.get("usage"):
            self.usage = _usage(data["usage"])  # cumulative: the last one wins
        self.extra.update(_extras(data))
        choice = (data.get("choices") or [{}])[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            if self.finish_reason == "sensitive":
                raise self.model._filtered(self.meta)
        return self.text(_message_text(choice.get("delta")))


class _Finisher(AnswerFilter):
    """Applies what the API does not do itself to an answer or a stream of chunks: stop
    sequences (text is held back only while it could still begin one) and the model name."""

    def __init__(self, stops: list[str], model_name: str) -> None:
        self.stops = [s for s in stops if s]
        self.model_name = model_name
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if self.hit or not self.stops:
            return "" if self.hit else text
        self.pending += text
        found = [self.pending.index(s) for s in self.stops if s in self.pending]
        if found:
            self.hit = True
            out, self.pending = self.pending[: min(found)], ""
            return out
        hold = max(
            (k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])),
            default=0,
        )
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def _metadata(self, metadata: dict[str, Any], info: dict[str, Any]) -> None:
        metadata["model_name"] = self.model_name
        if self.hit:
            metadata["finish_reason"] = info["finish_reason"] = "stop"

    def chunk(self, chunk: ChatGenerationChunk) -> ChatGenerationChunk | None:
        message = chunk.message
        last = getattr(message, "chunk_position", None) == "last"
        text = self.feed(chunk.text)
        if not last:
            if text == chunk.text:
                return chunk
            if not text:
                return None
            return ChatGenerationChunk(message=message.model_copy(update={"content": text}))
        text += self.pending
        self.pending = ""
        metadata, info = dict(message.response_metadata), dict(chunk.generation_info or {})
        self._metadata(metadata, info)
        update = {"content": text, "response_metadata": metadata}
        return ChatGenerationChunk(message=message.model_copy(update=update), generation_info=info)

    def whole(self, answer: ChatResult) -> ChatResult:
        generation = answer.generations[0]
        message = generation.message
        text = self.feed(message.text) + self.pending
        metadata, info = dict(message.response_metadata), dict(generation.generation_info or {})
        self._metadata(metadata, info)
        update = {"content": text, "response_metadata": metadata}
        final = ChatGeneration(message=message.model_copy(update=update), generation_info=info)
        return ChatResult(generations=[final], llm_output=answer.llm_output)


def _kind(status: int | None, message: str) -> type[VendorError] | None:
    """Refinements of the status mapping, by the message (the codes are undocumented)."""
    lowered = message.lower()
    if status == 401 and ("expire" in lowered or "过期" in message):
        return CredentialsExpiredError
    if "sensitive" in lowered or "敏感" in message:
        return ContentFilteredError
    client_side = status is None or 400 <= status < 500
    if client_side and ("context length" in lowered or "上下文" in message):
        return ContextTooLongError
    if status == 409:  # the SDK's TryAgain
        return UpstreamError
    return None


def _message_text(value: Any) -> str:
    """A choice's ``message``/``delta``: a string, leniently also ``{"content": ...}``."""
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


def _usage(raw: dict[str, Any]) -> UsageMetadata:
    knowledge = int(raw.get("knowledge_tokens") or 0)
    return usage(int(raw.get("prompt_tokens") or 0) + knowledge, raw.get("completion_tokens"))


def _extras(data: dict[str, Any]) -> dict[str, Any]:
    """Knowledge-base and plugin results for response_metadata (only what was returned)."""
    extras: dict[str, Any] = {}
    raw_usage = data.get("usage")
    if isinstance(raw_usage, dict):
        extras["knowledge_tokens"] = int(raw_usage.get("knowledge_tokens") or 0)
    plugins = data.get("plugins") or data.get("plugin")
    results = data.get("knowledge_base_results")
    if not results and isinstance(plugins, dict):
        results = plugins.get("knowledge_base_results")
    if results:
        extras["knowledge_base_results"] = results
    if plugins:
        extras["plugins"] = plugins
    return extras


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatSenseNova:
    """Catalog factory for vendor ``sensenova``."""
    kwargs = card_kwargs(
        card,
        base_url=settings.sensenova_api_base or SENSENOVA_BASE_URL,
        credentials={
            "api_key": settings.sensenova_access_key_id,
            "secret_key": settings.sensenova_secret_access_key,
        },
        overrides=overrides,
    )
    return ChatSenseNova(**kwargs)
