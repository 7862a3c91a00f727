"""The one HTTP layer every vendor chat model uses.

Pooled httpx clients (one sync client per process, one async client per event loop, since
an async connection belongs to the loop that opened it), per-request timeouts, and retries
with exponential backoff and jitter on rate limits, 5xx answers and connection failures,
honouring ``Retry-After``. A stream is retried only while opening it: once the first byte
has reached the caller, a failure is raised, never replayed, so no answer is duplicated.

Vendors plug in through :class:`Exchange`: how to sign a request, how to turn an error
answer into the project's exception tree, and how to spot an error hidden in a 200 body.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from fengchao_chains.llms.errors import (
    CredentialsExpiredError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
    VendorError,
    VendorTimeoutError,
)

logger = logging.getLogger("fengchao_chains.llms")


class _RedactQueryStrings(logging.Filter):
    """httpx logs every request's URL at INFO. Some vendors put credentials in the query
    string (Qianfan's ``access_token``, and its token request's ``client_secret``), so query
    values are masked before any handler sees the line."""

    _QUERY_VALUE = re.compile(r"([?&][^=&\s\"']+)=[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = self._QUERY_VALUE.sub(r"\1=***", message), None
        return True


_httpx_logger = logging.getLogger("httpx")
if not any(isinstance(f, _RedactQueryStrings) for f in _httpx_logger.filters):
    _httpx_logger.addFilter(_RedactQueryStrings())

MAX_RETRY_AFTER = 60.0
"""Longest ``Retry-After`` honoured; a vendor asking for more gets the error instead."""

_T = TypeVar("_T")


@dataclass
class VendorRequest:
    """One HTTP call to a vendor, before signing."""

    method: str
    url: str
    json_body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    stream: bool = False

    @functools.cached_property
    def body(self) -> bytes:
        """The exact bytes sent, which request-signing schemes hash (serialised once)."""
        if self.json_body is None:
            return b""
        return json.dumps(self.json_body, ensure_ascii=False).encode()


@dataclass
class ResponseMeta:
    """What the parsers may need from an answer besides its body."""

    status_code: int
    headers: httpx.Headers
    request_id: str | None
    model: str | None = None
    """The model the call asked for (a per-call ``model=`` wins over the instance's), for
    vendors whose answers do not name it."""


class Retriable(Protocol):
    """What the retry loop needs of a model: its retry budget, and how to drop a token."""

    @property
    def max_retries(self) -> int: ...

    def _forget_credentials(self) -> None: ...


class Exchange(Retriable, Protocol):
    """The vendor-specific half of a call (implemented by each chat model)."""

    @property
    def vendor_name(self) -> str: ...

    def _sign(self, request: VendorRequest) -> dict[str, str]: ...

    async def _asign(self, request: VendorRequest) -> dict[str, str]: ...

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError: ...

    def _check_body(self, body: Any, meta: ResponseMeta) -> None: ...

    def _request_id(self, headers: httpx.Headers, body: Any = None) -> str | None: ...

    def _timeout(self) -> httpx.Timeout: ...


# --------------------------------------------------------------------------- clients

# Streams hold a connection for their whole answer: a gateway serving hundreds of concurrent
# streams needs as many; idle ones are kept (up to 200) so bursts do not reconnect each time.
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
_sync_client: httpx.Client | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def sync_client() -> httpx.Client:
    """The process-wide pooled client (httpx clients are thread-safe)."""
    global _sync_client  # noqa: PLW0603 - one lazily built pool per process
    if _sync_client is None:
        _sync_client = httpx.Client(limits=_LIMITS, follow_redirects=False)
    return _sync_client


def async_client() -> httpx.AsyncClient:
    """The pooled async client of the running event loop."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(limits=_LIMITS, follow_redirects=False)
        _async_clients[loop] = client
    return client


# --------------------------------------------------------------------------- retries


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, RateLimitError) and (exc.retry_after or 0) > MAX_RETRY_AFTER:
        return False
    return isinstance(exc, VendorError) and bool(getattr(exc, "is_retryable", False))


_backoff = wait_exponential_jitter(multiplier=0.5, max=20, jitter=0.5)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        return exc.retry_after
    return float(_backoff(state))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning("retrying in %.1f s after: %s", wait, exc)


def _retrying_kwargs(max_retries: int) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(max(0, max_retries) + 1),
        "wait": _wait,
        "retry": retry_if_exception(_retryable),
        "before_sleep": _log_retry,
        "reraise": True,
    }


def _with_retries(model: Retriable, attempt: Callable[[], _T]) -> _T:
    refreshed = False
    for try_ in Retrying(**_retrying_kwargs(model.max_retries)):
        with try_:
            try:
                return attempt()
            except CredentialsExpiredError:
                if refreshed:
                    raise
                refreshed = True
                model._forget_credentials()
                return attempt()
    raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises


async def _awith_retries(model: Retriable, attempt: Callable[[], Awaitable[_T]]) -> _T:
    refreshed = False
    async for try_ in AsyncRetrying(**_retrying_kwargs(model.max_retries)):
        with try_:
            try:
                return await attempt()
            except CredentialsExpiredError:
                if refreshed:
                    raise
                refreshed = True
                model._forget_credentials()
                return await attempt()
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- errors


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return raw.decode(errors="replace")[:500]


def _meta(model: Exchange, response: httpx.Response, body: Any = None) -> ResponseMeta:
    return ResponseMeta(
        response.status_code, response.headers, model._request_id(response.headers, body)
    )


def _raise_for_answer(
    model: Exchange, response: httpx.Response, raw: bytes
) -> tuple[Any, ResponseMeta]:
    """The parsed body of a complete answer and its metadata, or the vendor's error raised."""
    body = _parse_json(raw)
    meta = _meta(model, response, body)
    if response.status_code >= 400:
        raise model._error_from_response(response.status_code, body, meta)
    if isinstance(body, str):
        raise UpstreamError(
            f"unreadable answer: {body[:200]!r}",
            vendor=model.vendor_name,
            status_code=response.status_code,
            request_id=meta.request_id,
        )
    model._check_body(body, meta)
    return body, meta


def transport_error(model: Exchange, exc: httpx.HTTPError, *, during: str) -> VendorError:
    """A transport failure as the project's error (the URL is kept out: it may carry a
    token in its query string)."""
    kind: type[VendorConnectionError] = (
        VendorTimeoutError if isinstance(exc, httpx.TimeoutException) else VendorConnectionError
    )
    detail = type(exc).__name__
    return kind(f"{during}: {detail}", vendor=model.vendor_name)


def _build(
    client: httpx.Client | httpx.AsyncClient,
    model: Exchange,
    request: VendorRequest,
    signature: dict[str, str],
) -> httpx.Request:
    headers = {**request.headers, **signature}
    if request.stream:
        headers.setdefault("Accept", "text/event-stream")
    kwargs: dict[str, Any] = {"params": request.params or None, "headers": headers}
    if request.files is not None or request.data is not None:
        kwargs["files"] = request.files
        kwargs["data"] = request.data
    elif request.json_body is not None:
        kwargs["content"] = request.body
        headers.setdefault("Content-Type", "application/json")
    return client.build_request(request.method, request.url, timeout=model._timeout(), **kwargs)


# --------------------------------------------------------------------------- calls


def send(
    model: Exchange, request: VendorRequest, client: httpx.Client | None = None
) -> tuple[Any, ResponseMeta]:
    """Send a non-streaming request with retries; the parsed JSON body and its metadata."""
    http = client or sync_client()

    def attempt() -> tuple[Any, ResponseMeta]:
        built = _build(http, model, request, model._sign(request))
        try:
            response = http.send(built)
        except httpx.HTTPError as exc:
            raise transport_error(model, exc, during="request failed") from None
        return _raise_for_answer(model, response, response.content)

    return _with_retries(model, attempt)


async def asend(
    model: Exchange, request: VendorRequest, client: httpx.AsyncClient | None = None
) -> tuple[Any, ResponseMeta]:
    """The async twin of :func:`send`."""
    http = client or async_client()

    async def attempt() -> tuple[Any, ResponseMeta]:
        built = _build(http, model, request, await model._asign(request))
        try:
            response = await http.send(built)
        except httpx.HTTPError as exc:
            raise transport_error(model, exc, during="request failed") from None
        return _raise_for_answer(model, response, response.content)

    return await _awith_retries(model, attempt)


@dataclass
class OpenedStream:
    """A stream whose headers arrived fine: either a live SSE response, or (for a vendor
    that answered a stream request with one JSON document) that document."""

    response: httpx.Response
    meta: ResponseMeta
    whole_body: Any = None

    @property
    def is_sse(self) -> bool:
        return self.whole_body is None


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


@contextlib.contextmanager
def open_stream(
    model: Exchange, request: VendorRequest, client: httpx.Client | None = None
) -> Iterator[OpenedStream]:
    """Open a streaming request, retrying until the answer's headers say it is good."""
    http = client or sync_client()
    request.stream = True

    def attempt() -> OpenedStream:
        built = _build(http, model, request, model._sign(request))
        try:
            response = http.send(built, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(model, exc, during="request failed") from None
        if response.status_code < 400 and _is_event_stream(response):
            return OpenedStream(response, _meta(model, response))
        try:
            raw = response.read()
        except httpx.HTTPError as exc:
            raise transport_error(model, exc, during="reading the answer failed") from None
        finally:
            response.close()
        body, meta = _raise_for_answer(model, response, raw)
        return OpenedStream(response, meta, whole_body=body)

    opened = _with_retries(model, attempt)
    try:
        yield opened
    finally:
        opened.response.close()


@contextlib.asynccontextmanager
async def aopen_stream(
    model: Exchange, request: VendorRequest, client: httpx.AsyncClient | None = None
) -> AsyncIterator[OpenedStream]:
    """The async twin of :func:`open_stream`."""
    http = client or async_client()
    request.stream = True

    async def attempt() -> OpenedStream:
        built = _build(http, model, request, await model._asign(request))
        try:
            response = await http.send(built, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(model, exc, during="request failed") from None
        if response.status_code < 400 and _is_event_stream(response):
            return OpenedStream(response, _meta(model, response))
        try:
            raw = await response.aread()
        except httpx.HTTPError as exc:
            raise transport_error(model, exc, during="reading the answer failed") from None
        finally:
            await response.aclose()
        body, meta = _raise_for_answer(model, response, raw)
        return OpenedStream(response, meta, whole_body=body)

    opened = await _awith_retries(model, attempt)
    try:
        yield opened
    finally:
        await opened.response.aclose()
