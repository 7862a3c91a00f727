"""The errors of Hugging Face's inference servers, TGI and TEI, as the project's.

Both are called through huggingface_hub's ``InferenceClient``, which raises its own errors
(``HfHubHTTPError`` for an error answer, ``TextGenerationError`` subclasses for the errors
it parsed, httpx's for the transport) over the servers' ``{"error", "error_type"}`` bodies.
One mapping serves both: TEI's error types are renamed to TGI's first (``rename``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
from huggingface_hub.errors import (
    GenerationError,
    HfHubHTTPError,
    IncompleteGenerationError,
    InferenceTimeoutError,
    OverloadedError,
    TextGenerationError,
    ValidationError,
)

from fengchao_chains.llms._base import vendor_error
from fengchao_chains.llms._http import ResponseMeta
from fengchao_chains.llms.errors import (
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
    VendorError,
    VendorTimeoutError,
)

_ERROR_TYPES: dict[str, type[VendorError]] = {
    "validation": InvalidRequestError,
    "overloaded": RateLimitError,
    "generation": UpstreamError,
    "incomplete_generation": UpstreamError,
}
_STATUS_CODES = {422: "validation", 424: "generation", 429: "overloaded"}
"""TGI's error type for a status, when an error event names only the status."""
_EXCEPTION_CODES: dict[type[TextGenerationError], str] = {
    ValidationError: "validation",
    GenerationError: "generation",
    OverloadedError: "overloaded",
    IncompleteGenerationError: "incomplete_generation",
}
_PROMPT_TOO_LONG = re.compile(
    r"`inputs` tokens \+ `max_new_tokens` must be|`inputs` must have less"
)


@dataclass(frozen=True)
class HuggingFaceErrors:
    """Maps the errors of one server's calls: ``vendor`` names it in every error, ``timeout``
    is what a timeout says was waited, ``rename`` maps the server's error types (lower case)
    to TGI's."""

    vendor: str
    timeout: float | None
    rename: Mapping[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def mapped(self) -> Iterator[None]:
        """Raise huggingface_hub's and the transport's errors as the project's."""
        try:
            yield
        except VendorError:
            raise
        except (InferenceTimeoutError, httpx2.TimeoutException) as exc:
            raise VendorTimeoutError(
                f"no answer within {self.timeout} s", vendor=self.vendor
            ) from exc
        except TextGenerationError as exc:
            raise self.generation_error(exc) from None
        except HfHubHTTPError as exc:
            raise self.http_error(exc) from None
        except httpx2.HTTPError as exc:
            raise VendorConnectionError(
                f"connection failed: {type(exc).__name__}", vendor=self.vendor
            ) from None

    def http_error(self, exc: HfHubHTTPError) -> VendorError:
        """An error answer: the server's ``{"error", "error_type"}``, or an OpenAI-style
        body from another server or a proxy."""
        response = exc.response
        try:
            body = response.json()
        except (ValueError, httpx2.ResponseNotRead):
            body = None
        meta = ResponseMeta(response.status_code, httpx.Headers(dict(response.headers)), None)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            error, code = error.get("message") or error, error.get("code") or error.get("type")
        else:
            code = body.get("error_type") if isinstance(body, dict) else None
        message = str(error or httpx.codes.get_reason_phrase(response.status_code) or "error")
        return self.typed_error(response.status_code, message, code, meta)

    def generation_error(self, exc: TextGenerationError) -> VendorError:
        """An error huggingface_hub parsed: from an error answer (its cause), or an error
        event in a stream (the Messages API's carries ``http_status_code``)."""
        if isinstance(exc.__cause__, HfHubHTTPError):
            return self.http_error(exc.__cause__)
        detail = exc.args[0] if exc.args else str(exc)
        if isinstance(detail, dict):
            status = detail.get("http_status_code")
            return self.typed_error(status, str(detail.get("message") or detail), None)
        return self.typed_error(None, str(detail), _EXCEPTION_CODES.get(type(exc)))

    def typed_error(
        self, status: int | None, message: str, code: Any, meta: ResponseMeta | None = None
    ) -> VendorError:
        """The project error for an error type (or, without one, the HTTP status)."""
        if code and self.rename:
            name = str(code).lower()
            code = self.rename.get(name, name)
        code = code or _STATUS_CODES.get(status or 0)
        kind = _ERROR_TYPES.get(str(code))
        if code == "validation" and _PROMPT_TOO_LONG.search(message):
            kind = ContextTooLongError
        return vendor_error(self.vendor, status, message, code=code, meta=meta, kind=kind)
