"""Errors of the ``/v1`` front door in OpenAI's shape.

OpenAI clients read ``{"error": {"message", "type", "param", "code"}}`` and pick their
exception class from the HTTP status (401 ``AuthenticationError``, 404 ``NotFoundError``,
429 ``RateLimitError``, ...), so every refusal here has both. The library's errors (unknown
model, knowledge base or prompt, sensitive words) and the vendors' (the
:mod:`fengchao_chains.llms.errors` tree) are mapped by :func:`openai_error`; a vendor's own
failure is the gateway's upstream failing, so it is a 5xx (502, 504 for a timeout) except
where the request itself is at fault (context too long, content filtered: 400) or the
client must slow down (429, with ``Retry-After``). Messages never carry a secret: the
library's messages are written to be shown, and a vendor's never quote credentials.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

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

    def event(self) -> str:
        """The ``data:`` event a stream that already began ends with."""
        return f"data: {json.dumps(self.body(), ensure_ascii=False)}\n\n"


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


def _retry(exc: FengchaoError) -> dict[str, str] | None:
    """``Retry-After`` (whole seconds) for a rate limit that says how long to wait."""
    wait = exc.retry_after if isinstance(exc, RateLimitError) else None
    return None if wait is None else {"Retry-After": str(max(1, math.ceil(wait)))}


def internal_error(exc: BaseException) -> OpenAIError:
    """An unexpected failure: logged with its traceback, answered without it."""
    logger.error("/v1 request failed", exc_info=exc)
    return OpenAIError(500, "internal server error", type=SERVER_ERROR)


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
