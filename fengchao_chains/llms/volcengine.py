"""Volcengine MaaS v1 (the Skylark models): ``POST /api/v1/chat``, signed with AK/SK.

Every request is signed with Volcengine's SigV4-style HMAC-SHA256 scheme (service
``ml_maas``); :func:`sign_request` implements it in a few lines of hashlib/hmac, checked in
the tests against the official SDK's ``SignerV4``. The body names the model as an object
(``{"name", "version"}``) and puts the sampling parameters under ``parameters`` with MaaS
names (``max_new_tokens``). Answers carry a singular ``choice``, top-level ``usage`` and the
vendor's ``req_id``; a stream is ``data:{...}`` events of the same shape (content
increments, usage on the last) ending with ``data:[DONE]``, and an event carrying ``error``
is a failure mid-stream. Errors are ``{"error": {"code", "code_n", "message"}, "req_id"}``.

The MaaS answer does not echo the model, so ``model_name`` is the one the call asked for
(the base passes it in the response metadata; a per-call ``model=`` may override the field).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

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
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    RateLimitError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.settings import Settings

MAAS_BASE_URL = "https://maas-api.ml-platform-cn-beijing.volces.com"
MAAS_SERVICE = "ml_maas"
CHAT_PATH = "/api/v1/chat"
ALGORITHM = "HMAC-SHA256"

# MaaS v1 error codes (volcengine.com/docs/82379/1099476), by the error they mean.
_AUTH_CODES = {
    "SignatureDoesNotMatch": 1709801,
    "MissingAuthenticationHeader": 1709804,
    "AuthenticationHeaderIsInvalid": 1709805,
    "AuthenticationExpire": 1709809,
}
_FILTER_CODES = {"ReqTextExistRisk": 1709813, "RespTextExistRisk": 1709814}
_RATE_CODES = {"EndpointRateLimitExceeded": 1709815}
_UPSTREAM_CODES = {
    "RequestTimeout": 1709802,
    "ServiceConnectionTimeout": 1709803,
    "InternalServiceError": 1709806,
    "ServiceConnectionRefused": 1709816,
    "ServiceConnectionClosed": 1709817,
}


# --------------------------------------------------------------------------- signing


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed_header_names(names: Iterable[str]) -> list[str]:
    """The headers SignerV4 signs: Content-Type, Content-Md5, Host and every ``X-*``."""
    keep = {"content-type", "content-md5", "host"}
    return sorted({n.lower() for n in names if n.lower() in keep or n.lower().startswith("x-")})


def signature_v4(
    *,
    secret_key: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body_sha256: str,
    x_date: str,
    region: str,
    service: str = MAAS_SERVICE,
) -> str:
    """The hex signature of a request; ``headers`` are exactly the signed ones."""
    lowered = {k.lower(): v for k, v in headers.items()}
    host = lowered.get("host")
    if host and host.rsplit(":", 1)[-1] in ("80", "443"):
        lowered["host"] = host.rsplit(":", 1)[0]  # SignerV4 signs the host without them
    names = sorted(lowered)
    canonical = "\n".join(
        [
            method.upper(),
            quote(path or "/"),
            "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query)),
            "".join(f"{n}:{lowered[n]}\n" for n in names),
            ";".join(names),
            body_sha256,
        ]
    )
    date = x_date[:8]
    scope = f"{date}/{region}/{service}/request"
    to_sign = "\n".join([ALGORITHM, x_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _signing_key(secret_key, date, region, service)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=16)
def _signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The day's derived key (four HMACs), made once a day per key, region and service."""
    key = secret_key.encode()
    for part in (date, region, service, "request"):
        key = _hmac(key, part)
    return key


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str = MAAS_SERVICE,
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers that sign a request: ``X-Date``, ``X-Content-Sha256``, ``Authorization``.

    ``headers`` must hold every header sent that SignerV4 signs (``Host`` and
    ``Content-Type`` included), with the values sent.
    """
    x_date = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    body_sha256 = hashlib.sha256(body).hexdigest()
    signed = {**headers, "X-Date": x_date, "X-Content-Sha256": body_sha256}
    names = signed_header_names(signed)
    parsed = urlsplit(url)
    signature = signature_v4(
        secret_key=secret_key,
        method=method,
        path=unquote(parsed.path),
        query=parse_qsl(parsed.query, keep_blank_values=True),
        headers={k: v for k, v in signed.items() if k.lower() in names},
        body_sha256=body_sha256,
        x_date=x_date,
        region=region,
        service=service,
    )
    credential = f"{access_key}/{x_date[:8]}/{region}/{service}/request"
    return {
        "X-Date": x_date,
        "X-Content-Sha256": body_sha256,
        "Authorization": f"{ALGORITHM} Credential={credential}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}",
    }


# --------------------------------------------------------------------------- the model


class ChatVolcengineMaas(VendorChatModel):
    """Volcengine MaaS v1 chat (``skylark-*``, ``Skylark2-*``), signed with AK/SK.

    Example::

        # keys from VOLC_ACCESSKEY / VOLC_SECRETKEY
        model = ChatVolcengineMaas(model="skylark-pro-public", model_kwargs={"top_k": 0})
    """

    vendor_name = "volcengine"
    default_base_url = MAAS_BASE_URL

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("VOLC_ACCESSKEY", default=None)
    )
    """The access key (AK)."""
    secret_key: SecretStr | None = Field(
        default_factory=secret_from_env("VOLC_SECRETKEY", default=None)
    )
    """The secret key (SK); it only keys the signature and is never sent."""
    base_url: str | None = Field(default_factory=from_env("VOLC_MAAS_BASE_URL", default=None))
    region: str = "cn-beijing"
    """The region in the signature's scope."""
    model_version: str | None = None
    """Sent as ``model.version`` when set."""

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        params = dict(params)
        model = {"name": params.pop("model", None) or self.model}
        version = params.pop("model_version", None) or self.model_version
        if version:
            model["version"] = version
        if "max_tokens" in params:
            params["max_new_tokens"] = params.pop("max_tokens")
        req_id = params.pop("req_id", None)
        body: dict[str, Any] = {
            "model": model,
            "messages": openai_messages(messages, self.vendor_name),
            "parameters": params,
            "stream": stream,
        }
        if req_id:
            body["req_id"] = req_id
        return VendorRequest(
            "POST",
            self._url(CHAT_PATH),
            json_body=body,
            headers={"Content-Type": "application/json"},
        )

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        access_key = self._require(self.api_key, "VOLC_ACCESSKEY")
        secret_key = self._require(self.secret_key, "VOLC_SECRETKEY")
        host = urlsplit(request.url).netloc
        headers = {**request.headers, "Host": host}
        query = urlencode(request.params) if request.params else ""
        signature = sign_request(
            request.method,
            f"{request.url}?{query}" if query else request.url,
            headers,
            request.body,
            access_key=access_key,
            secret_key=secret_key,
            region=self.region,
        )
        return {"Host": host, **signature}

    def _request_id(self, headers: Mapping[str, str], body: Any = None) -> str | None:
        if isinstance(body, dict) and body.get("req_id"):
            return str(body["req_id"])
        return super()._request_id(headers, body)

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        choice = body.get("choice") or {}
        return result(
            (choice.get("message") or {}).get("content") or "",
            usage_metadata=openai_usage(body.get("usage")),
            metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": meta.model or self.model,
                "request_id": body.get("req_id") or meta.request_id,
            },
        )

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        return MaasStreamDecoder(self, meta)

    def _check_body(self, body: Any, meta: ResponseMeta) -> None:
        if _carries_error(body):
            raise self._error_from_response(meta.status_code, body, meta)

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return super()._error_from_response(status, body, meta)
        return self._maas_error(status, error, meta)

    def _maas_error(
        self, status: int | None, error: dict[str, Any], meta: ResponseMeta | None
    ) -> VendorError:
        """The tree's error for a MaaS error object, by its code (else by HTTP status)."""
        code = str(error.get("code") or "")
        code_n = error.get("code_n")
        message = str(error.get("message") or code or "MaaS error")
        return self._error(
            status, message, code=code or code_n, meta=meta, kind=_kind_for_code(code, code_n)
        )


def _kind_for_code(code: str, code_n: Any) -> type[VendorError] | None:
    def known(table: dict[str, int]) -> bool:
        return code in table or code_n in table.values()

    if known(_AUTH_CODES):
        return AuthenticationError
    if known(_RATE_CODES) or "RateLimit" in code or "Quota" in code:
        return RateLimitError
    if known(_FILTER_CODES) or "Risk" in code or "Sensitive" in code:
        return ContentFilteredError
    if "TooLong" in code or "ContextLength" in code:
        return ContextTooLongError
    if known(_UPSTREAM_CODES):
        return UpstreamError
    return None


def _carries_error(data: Any) -> bool:
    """The SDK's rule: an ``error`` object whose ``code_n`` is not 0 is a failure."""
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and error.get("code_n") != 0


class MaasStreamDecoder(StreamDecoder):
    """``data:{ChatResp}`` events with content increments, up to ``data:[DONE]``."""

    model: ChatVolcengineMaas

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        data = self.data(event)
        if data is None:
            return []
        self.request_id = data.get("req_id") or self.request_id
        if _carries_error(data):
            meta = ResponseMeta(self.meta.status_code, self.meta.headers, self.request_id)
            raise self.model._maas_error(None, data["error"], meta)
        choice = data.get("choice") or {}
        if data.get("usage"):
            self.usage = openai_usage(data["usage"])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return self.text((choice.get("message") or {}).get("content") or "")


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatVolcengineMaas:
    """Catalog factory for vendor ``volcengine`` (MaaS v1)."""
    kwargs = card_kwargs(
        card,
        base_url=settings.volc_maas_base_url or MAAS_BASE_URL,
        credentials={"api_key": settings.volc_accesskey, "secret_key": settings.volc_secretkey},
        overrides=overrides,
    )
    return ChatVolcengineMaas(**kwargs)
