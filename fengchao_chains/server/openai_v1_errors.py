"""Errors of the ``/v1`` front door in OpenAI's shape.

OpenAI clients read ``{"error": {"message", "type", "param", "code"}}`` and pick their
exception class from the HTTP status (401 ``AuthenticationError``, 404 ``NotFoundError``,
429 ``RateLimitError``, ...), so every refusal here has both. The library's errors (unknown
model, knowledge base or prompt, sensitive words) and the vendors' (the
:mod:`fengchao_chains.llms.errors` tree) are mapped by :func:`openai_error`; a vendor's own
failure is the gateway's upstream failing, so it is a 5xx (502, 504 for a timeout) except
where the request itself is at fault (context too long, content filtered: 400) or the
client must slow down (429, with ``Retry-After``). A key over its own RPM, TPM or budget
(:class:`~fengchao_chains.gateway.limit_types.RateLimitExceeded`) is OpenAI's own 429 too.
Messages never carry a secret: the library's messages are written to be shown, and a
vendor's never quote credentials.

A route answers any failure with :func:`error_answer` (or, in a stream already begun,
:func:`as_openai_error`'s ``event()``): one place decides what each kind of failure is.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from fengchao_chains.catalog.loader import UnknownEmbeddingModelError
from fengchao_chains.errors import (
    ConfigurationError,
    FengchaoError,
    ModelNotAvailableError,
    UnknownModelError,
)
from fengchao_chains.gateway.auth import Caller, require_caller
from fengchao_chains.gateway.limit_types import LimitName, RateLimitExceeded
from fengchao_chains.gateway.sensitive import SensitiveContentError
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    InvalidRequestError,
    QuotaExceededError,
    RateLimitError,
    VendorError,
    VendorTimeoutError,
)
from fengchao_chains.prompts.errors import PromptError
from fengchao_chains.retrievers import UnknownKnowledgeBaseError
from fengchao_chains.server.limits_http import rate_limit_headers

if TYPE_CHECKING:
    from fengchao_chains.runtime import Runtime

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class OpenAIError(Exception):
    """One error answer: the HTTP status and OpenAI's four fields (plus headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def event(self) -> bytes:
        """The ``data:`` event a stream that already began ends with."""
        return sse_event(self.body())


def sse_event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event of a /v1 stream: compact UTF-8 JSON, as OpenAI sends it (orjson:
    a tenth of ``json.dumps``' time, for every chunk of every stream)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> OpenAIError:
    """A 400 for a request the gateway cannot serve as sent."""
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str, detail: str | None = None) -> OpenAIError:
    message = detail or f"The model `{model}` does not exist (GET /v1/models lists them)"
    return OpenAIError(404, message, param="model", code="model_not_found")


def from_http_exception(exc: HTTPException) -> OpenAIError:
    """An authentication (or admission) refusal: its status, headers and message."""
    detail: Any = exc.detail
    message = str(detail.get("msg") if isinstance(detail, dict) else detail)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 401:
        return OpenAIError(401, message, code="invalid_api_key", headers=headers)
    if exc.status_code == 429:
        return OpenAIError(
            429, message, type="requests", code="rate_limit_exceeded", headers=headers
        )
    kind = SERVER_ERROR if exc.status_code >= 500 else INVALID_REQUEST
    return OpenAIError(exc.status_code, message, type=kind, headers=headers)


def openai_error(exc: FengchaoError) -> OpenAIError:
    """The answer to a library or vendor error (see the module docstring)."""
    if isinstance(exc, RateLimitExceeded):
        return rate_limit_error(exc)
    if isinstance(exc, UnknownModelError | UnknownEmbeddingModelError | ModelNotAvailableError):
        return model_not_found(str(getattr(exc, "model_id", "")), str(exc))
    if isinstance(exc, AuthenticationError):  # the gateway's own vendor key was refused
        logger.error("a vendor refused the gateway's credentials: %s", exc)
    elif isinstance(exc, ConfigurationError):
        logger.error("/v1 cannot serve a request: %s", exc)
        return OpenAIError(500, "the server is misconfigured; see its log", type=SERVER_ERROR)
    for kind, status, error_type, code, param in _MAPPED:
        if isinstance(exc, kind):
            return OpenAIError(
                status, str(exc), type=error_type, code=code, param=param, headers=_retry(exc)
            )
    if isinstance(exc, VendorError):
        return OpenAIError(502, str(exc), type=SERVER_ERROR, code="upstream_error")
    return invalid(str(exc))


_MAPPED: list[tuple[type[FengchaoError], int, str, str, str | None]] = [
    # first match wins: subclasses before their bases
    (UnknownKnowledgeBaseError, 404, INVALID_REQUEST, "knowledge_base_not_found", "knowledge"),
    (PromptError, 400, INVALID_REQUEST, "invalid_prompt", "prompt"),
    (SensitiveContentError, 400, INVALID_REQUEST, "sensitive_content", "messages"),
    (QuotaExceededError, 429, "insufficient_quota", "insufficient_quota", None),
    (RateLimitError, 429, "requests", "rate_limit_exceeded", None),
    (ContextTooLongError, 400, INVALID_REQUEST, "context_length_exceeded", "messages"),
    (ContentFilteredError, 400, INVALID_REQUEST, "content_filter", None),
    (VendorTimeoutError, 504, SERVER_ERROR, "upstream_timeout", None),
    (AuthenticationError, 502, SERVER_ERROR, "upstream_authentication", None),
    (InvalidRequestError, 400, INVALID_REQUEST, "upstream_invalid_request", None),
]


_LIMIT_ERRORS: dict[LimitName, tuple[str, str]] = {
    "rpm": ("requests", "rate_limit_exceeded"),
    "tpm": ("tokens", "rate_limit_exceeded"),
    "budget": ("insufficient_quota", "insufficient_quota"),
}


def rate_limit_error(exc: RateLimitExceeded) -> OpenAIError:
    """A key over its own limit, in OpenAI's 429 shape (``type`` requests / tokens /
    insufficient_quota, ``code`` rate_limit_exceeded / insufficient_quota), with
    ``Retry-After`` and, when waiting cannot help, ``x-should-retry: false``."""
    error_type, code = _LIMIT_ERRORS[exc.limit]
    return OpenAIError(
        429, exc.message, type=error_type, code=code, headers=rate_limit_headers(exc)
    )


def _retry(exc: FengchaoError) -> dict[str, str] | None:
    """``Retry-After`` (whole seconds) for a rate limit that says how long to wait."""
    wait = exc.retry_after if isinstance(exc, RateLimitError) else None
    return None if wait is None else {"Retry-After": str(max(1, math.ceil(wait)))}


def internal_error(exc: BaseException) -> OpenAIError:
    """An unexpected failure: logged with its traceback, answered without it."""
    logger.error("/v1 request failed", exc_info=exc)
    return OpenAIError(500, "internal server error", type=SERVER_ERROR)


def as_openai_error(exc: Exception) -> OpenAIError:
    """Any failure of a ``/v1`` request as its answer: a refusal already in OpenAI's shape
    as it is, a library or vendor error mapped by :func:`openai_error`, anything else a 500
    (:func:`internal_error`)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, FengchaoError):
        return openai_error(exc)
    return internal_error(exc)


def error_answer(exc: Exception) -> JSONResponse:
    """The HTTP answer to a failure before the first byte (:func:`as_openai_error`)."""
    return as_openai_error(exc).response()


def runtime_of(request: Request) -> Runtime:
    """The app's runtime, read directly: the routes here take no sync dependency (FastAPI
    runs those in a worker thread, a thread hop on every request)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authenticate(request: Request) -> Caller:
    """The verified caller (:func:`~fengchao_chains.gateway.auth.require_caller`), its
    refusal in OpenAI's shape."""
    try:
        return await require_caller(request)
    except HTTPException as exc:
        raise from_http_exception(exc) from None
