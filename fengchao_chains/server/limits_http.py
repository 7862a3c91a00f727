"""How a key over its limits is answered over HTTP: the 429 headers and the /aigc body.

Three front doors refuse with :class:`~fengchao_chains.gateway.limit_types.RateLimitExceeded`
(/aigc, /v1 and the LangServe routes), and each must send the same ``Retry-After`` and the
same don't-retry hint, so the headers are made in one place here.  It lives with the server,
not with the :class:`~fengchao_chains.gateway.limits.Limiter`, so that the limiter does not
import the web framework.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from fengchao_chains.gateway.limit_types import RateLimitExceeded


def rate_limit_headers(exc: RateLimitExceeded) -> dict[str, str]:
    """``Retry-After``, plus ``x-should-retry: false`` (which the openai SDKs obey) when
    waiting cannot help."""
    headers = {"Retry-After": str(exc.retry_after)}
    if not exc.retry_helps:
        headers["x-should-retry"] = "false"
    return headers


def aigc_rate_limit_response(exc: RateLimitExceeded) -> JSONResponse:
    """The /aigc answer: HTTP 429, ``{"status": 429, "msg": ...}``.  The fengchao SDK turns
    it into ``FinalResponse(status=429, msg=<this body as text>)`` and does not retry.  (The
    /v1 answer is OpenAI's error shape, made with /v1's other errors by
    :func:`fengchao_chains.server.openai_v1_errors.openai_error`.)"""
    return JSONResponse(
        {"status": 429, "msg": exc.message}, status_code=429, headers=rate_limit_headers(exc)
    )
