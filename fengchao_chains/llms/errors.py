"""The exception tree every vendor chat model raises.

One small tree for all vendors, so callers (and the /aigc front door) handle "the key is
wrong" or "slow down" the same way whichever vendor answered. Each class also subclasses
langchain-core's matching ``ModelError`` so code written against LangChain's exceptions
keeps working. Every error keeps the HTTP status, the vendor's own error code and the
vendor's request id (quote it to the vendor's support), and never a credential.
"""

from __future__ import annotations

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelRateLimitError,
    ModelTimeoutError,
)

from fengchao_chains.errors import FengchaoError

__all__ = [
    "AuthenticationError",
    "ContentFilteredError",
    "ContextTooLongError",
    "CredentialsExpiredError",
    "InvalidRequestError",
    "QuotaExceededError",
    "RateLimitError",
    "UpstreamError",
    "VendorConnectionError",
    "VendorError",
    "VendorTimeoutError",
]


class VendorError(FengchaoError, ModelError):
    """A vendor refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        vendor: str,
        status_code: int | None = None,
        code: str | int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.vendor = vendor
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        details = [f"HTTP {self.status_code}" if self.status_code else None]
        details.append(f"code {self.code}" if self.code not in (None, "") else None)
        details.append(f"request id {self.request_id}" if self.request_id else None)
        shown = ", ".join(d for d in details if d)
        return f"{self.vendor}: {self.message}" + (f" ({shown})" if shown else "")


class AuthenticationError(VendorError, ModelAuthenticationError):
    """The credentials are missing, wrong, expired or lack permission (HTTP 401/403)."""


class CredentialsExpiredError(AuthenticationError):
    """A short-lived token the client derived from the credentials has expired.

    Raised by vendors whose tokens are minted client-side or fetched (Qianfan access tokens,
    Zhipu and SenseNova JWTs); the shared HTTP layer drops the cached token and retries once.
    """


class RateLimitError(VendorError, ModelRateLimitError):
    """Too many requests or not enough quota (HTTP 429); ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class QuotaExceededError(RateLimitError):
    """The account's balance or allowance is used up: reported like a rate limit (often
    HTTP 429) but not retried, since waiting a few seconds cannot help."""

    is_retryable = False


class InvalidRequestError(VendorError, ModelInvalidRequestError):
    """The vendor rejected the request as malformed (HTTP 400/404/422)."""


class ContextTooLongError(InvalidRequestError, ContextOverflowError):
    """The prompt (plus ``max_tokens``) does not fit the model's context window."""


class ContentFilteredError(VendorError):
    """The vendor's content filter blocked the prompt or the answer."""


class UpstreamError(VendorError, ModelAPIError):
    """The vendor failed (HTTP 5xx), answered something unreadable or broke off a stream."""


class VendorConnectionError(UpstreamError, ModelConnectionError):
    """The vendor could not be reached, or the connection dropped."""


class VendorTimeoutError(VendorConnectionError, ModelTimeoutError):
    """The vendor did not answer within ``timeout`` seconds."""
