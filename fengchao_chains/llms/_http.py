"""The one HTTP layer every vendor chat model uses.

Pooled clients: one urllib3 pool manager per process for sync calls, and one aiohttp
session per event loop for async calls (an async connection belongs to the loop that opened
it). Neither is httpx, for cost: httpx's async pool cost about a third of the gateway's CPU
per request under load (it walks every pooled connection on each request and response), and
its sync client about 0.2 ms more per call than urllib3 on loopback, which decided whether a
thin vendor SDK was cheaper per call than our models (docs/benchmarks.md). httpx's
``Timeout`` stays the one description of a call's time limits. Both shared pools go through
the proxy the environment names, as requests and httpx do. Per-request timeouts, and retries
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
import threading
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
import httpx
import orjson
import urllib3
import yarl
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


for _logger_name in ("httpx", "urllib3.connectionpool"):  # both log request lines
    _request_logger = logging.getLogger(_logger_name)
    if not any(isinstance(f, _RedactQueryStrings) for f in _request_logger.filters):
        _request_logger.addFilter(_RedactQueryStrings())

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
    headers: Mapping[str, str]
    """Case-insensitive (urllib3's, aiohttp's or httpx's headers)."""
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

    def _request_id(self, headers: Mapping[str, str], body: Any = None) -> str | None: ...

    def _timeout(self) -> httpx.Timeout: ...


# --------------------------------------------------------------------------- clients

# Streams hold a connection for their whole answer: a gateway serving hundreds of concurrent
# streams needs as many. aiohttp keeps idle ones for 30 s, so bursts do not reconnect each
# time; urllib3 keeps them until the vendor closes them (it checks before reuse).
MAX_CONNECTIONS = 1000
KEEPALIVE_SECONDS = 30.0


def set_max_connections(limit: int) -> None:
    """How many vendor connections this process may hold (``vendor_max_connections``; on
    the sync side, per vendor host); pools made from now on use it (the server sets it
    before its first call)."""
    global MAX_CONNECTIONS  # noqa: PLW0603 - process-wide pool configuration
    MAX_CONNECTIONS = limit


_sync_client: urllib3.PoolManager | None = None
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()


_DEFAULT_HEADERS = urllib3.make_headers(accept_encoding=True)
"""Sent by the shared pool on every sync call: compressed answers are accepted (and
decoded), as the async side does."""


def _sync_pool_settings() -> dict[str, Any]:
    """Of both shared sync pools (direct and through a proxy): a caller past the connection
    limit waits for a free connection, up to the call's pool timeout; retries are ours."""
    return {
        "maxsize": MAX_CONNECTIONS,
        "block": True,
        "retries": False,
        "headers": _DEFAULT_HEADERS,
    }


def sync_client() -> urllib3.PoolManager:
    """The process-wide pool manager (urllib3's pools are thread-safe)."""
    global _sync_client  # noqa: PLW0603 - one lazily built pool per process
    if _sync_client is None:
        _sync_client = urllib3.PoolManager(**_sync_pool_settings())
    return _sync_client


_proxy_pools: dict[str, urllib3.ProxyManager] = {}
_proxy_pools_lock = threading.Lock()


@functools.lru_cache(maxsize=256)
def env_proxy(scheme: str, host: str) -> str | None:
    """The proxy the environment names for a vendor host, as requests and httpx read it
    (``https_proxy`` / ``http_proxy`` / ``all_proxy``, ``no_proxy`` honoured), looked up
    once per host. Only HTTP proxies are used (urllib3 and aiohttp speak no SOCKS)."""
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not proxy.startswith(("http://", "https://")):
        logger.warning("ignoring the environment's proxy for %s: only HTTP proxies work", host)
        return None
    return proxy or None


def _proxy_of(url: str) -> str | None:
    parts = urlsplit(url)
    return env_proxy(parts.scheme, parts.hostname or "")


def _shared_pool(url: str) -> urllib3.PoolManager:
    """The shared sync pool for a vendor URL: through the environment's proxy if it names
    one for that host."""
    proxy = _proxy_of(url)
    if proxy is None:
        return sync_client()
    with _proxy_pools_lock:
        if proxy not in _proxy_pools:
            auth = urllib3.util.parse_url(proxy).auth  # user:password in the URL, as curl takes
            login = urllib3.make_headers(proxy_basic_auth=unquote(auth)) if auth else None
            _proxy_pools[proxy] = urllib3.ProxyManager(
                proxy, proxy_headers=login, **_sync_pool_settings()
            )
        return _proxy_pools[proxy]


def async_client() -> aiohttp.ClientSession:
    """The pooled async session of the running event loop, closed with the loop."""
    loop = asyncio.get_running_loop()
    known = _async_clients.get(loop)
    if known is not None and not known[0].closed:
        return known[0]
    connector = aiohttp.TCPConnector(
        limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
    )
    session = aiohttp.ClientSession(connector=connector, trust_env=False, timeout=_NO_TIMEOUT)
    _async_clients[loop] = (session, _closed_with_loop(session))
    return session


def _closed_with_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """An async generator, started here, whose ``finally`` closes ``session``. The loop
    tracks started async generators and closes them when it shuts down
    (``loop.shutdown_asyncgens()``, which ``asyncio.run``, uvicorn and pytest's loops call),
    so a session never outlives its loop with open connections."""

    async def until_loop_shuts_down() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await session.close()

    keeper = until_loop_shuts_down()
    with contextlib.suppress(StopIteration):  # runs to its ``yield`` without awaiting
        keeper.__anext__().send(None)
    return keeper


async def aclose_async_client() -> None:
    """Close the running loop's session now (it is made again on next use)."""
    known = _async_clients.pop(asyncio.get_running_loop(), None)
    if known is not None:
        await known[1].aclose()


_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


@functools.lru_cache(maxsize=64)
def _urllib3_timeout(connect: float | None, read: float | None) -> urllib3.Timeout:
    return urllib3.Timeout(connect=connect, read=read)


def _aiohttp_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """A model's timeout (httpx's phases) in aiohttp's terms: getting a connection (waiting
    for the pool plus connecting), connecting, and the longest silence while reading."""
    return _client_timeout(timeout.pool, timeout.connect, timeout.read)


@functools.lru_cache(maxsize=64)
def _client_timeout(
    pool: float | None, connect: float | None, read: float | None
) -> aiohttp.ClientTimeout:
    acquire = None if pool is None or connect is None else pool + connect
    return aiohttp.ClientTimeout(total=None, connect=acquire, sock_connect=connect, sock_read=read)


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
    """``attempt()`` with the model's retry budget. The first try runs outside tenacity
    (which costs a little on every call, and most calls succeed at once); a retryable
    failure is handed to tenacity as its first attempt's outcome, so its waits, logging
    and budget are exactly those of a loop that began with it."""
    try:
        return _refreshing(model, attempt)
    except VendorError as exc:
        if model.max_retries < 1 or not _retryable(exc):
            raise
        failures = [exc]

    def replay_then_attempt() -> _T:
        if failures:
            raise failures.pop()
        return _refreshing(model, attempt)

    for try_ in Retrying(**_retrying_kwargs(model.max_retries)):
        with try_:
            return replay_then_attempt()
    raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises


async def _awith_retries(model: Retriable, attempt: Callable[[], Awaitable[_T]]) -> _T:
    """The async twin of :func:`_with_retries`."""
    try:
        return await _arefreshing(model, attempt)
    except VendorError as exc:
        if model.max_retries < 1 or not _retryable(exc):
            raise
        failures = [exc]

    async def replay_then_attempt() -> _T:
        if failures:
            raise failures.pop()
        return await _arefreshing(model, attempt)

    async for try_ in AsyncRetrying(**_retrying_kwargs(model.max_retries)):
        with try_:
            return await replay_then_attempt()
    raise AssertionError("unreachable")  # pragma: no cover


def _refreshing(model: Retriable, attempt: Callable[[], _T]) -> _T:
    """One attempt; an expired credential is dropped and the attempt made once more."""
    try:
        return attempt()
    except CredentialsExpiredError:
        model._forget_credentials()
        return attempt()


async def _arefreshing(model: Retriable, attempt: Callable[[], Awaitable[_T]]) -> _T:
    try:
        return await attempt()
    except CredentialsExpiredError:
        model._forget_credentials()
        return await attempt()


# --------------------------------------------------------------------------- errors


def loads_json(raw: str | bytes) -> Any:
    """JSON text as Python: orjson, three times as fast (every stream event is parsed here),
    else the standard library, which also reads what orjson refuses (``NaN``, UTF-16, lone
    surrogates). Integers beyond 64 bits come back as floats. Raises ``ValueError`` for
    what neither reads."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _parse_json(raw: bytes) -> Any:
    try:
        return loads_json(raw) if raw.strip() else None
    except ValueError:
        return raw.decode(errors="replace")[:500]


def _meta(
    model: Exchange, status: int, headers: Mapping[str, str], body: Any = None
) -> ResponseMeta:
    return ResponseMeta(status, headers, model._request_id(headers, body))


def _raise_for_answer(
    model: Exchange, status: int, headers: Mapping[str, str], raw: bytes
) -> tuple[Any, ResponseMeta]:
    """The parsed body of a complete answer and its metadata, or the vendor's error raised."""
    body = _parse_json(raw)
    meta = _meta(model, status, headers, body)
    if status >= 400:
        raise model._error_from_response(status, body, meta)
    if isinstance(body, str):
        raise UpstreamError(
            f"unreadable answer: {body[:200]!r}",
            vendor=model.vendor_name,
            status_code=status,
            request_id=meta.request_id,
        )
    model._check_body(body, meta)
    return body, meta


TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, aiohttp.ClientError, asyncio.TimeoutError)
"""What the clients raise when a connection fails or times out (aiohttp raises the builtin
``TimeoutError`` for some of its timeouts)."""

_TIMEOUTS = (
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.EmptyPoolError,
    asyncio.TimeoutError,
)
"""Timeouts, including waiting longer than the pool timeout for a free connection."""


def transport_error(model: Exchange, exc: BaseException, *, during: str) -> VendorError:
    """A transport failure as the project's error (the URL is kept out: it may carry a
    token in its query string)."""
    timed_out = isinstance(exc, _TIMEOUTS)
    kind: type[VendorConnectionError] = VendorTimeoutError if timed_out else VendorConnectionError
    return kind(f"{during}: {type(exc).__name__}", vendor=model.vendor_name)


def _headers(request: VendorRequest, signature: dict[str, str]) -> dict[str, str]:
    headers = {**request.headers, **signature}
    if request.stream:
        headers.setdefault("Accept", "text/event-stream")
    if request.files is None and request.data is None and request.json_body is not None:
        headers.setdefault("Content-Type", "application/json")
    return headers


def encoded_url(request: VendorRequest) -> str:
    """The request's URL with its query string, encoded the one way both sides send it
    (some vendors sign the query)."""
    if not request.params:
        return request.url
    return str(httpx.URL(request.url, params=request.params))


def _urlopen(
    pool: urllib3.PoolManager,
    model: Exchange,
    request: VendorRequest,
    signature: dict[str, str],
    *,
    during: str = "request failed",
) -> urllib3.BaseHTTPResponse:
    """Send ``request`` once; a stream's answer is left unread for the caller. The pool's
    own headers are sent too (urllib3 drops them when a call names any). A transport
    failure is raised as the project's error, saying it happened ``during`` this."""
    headers = {**pool.headers, **_headers(request, signature)}
    body: bytes | None = None
    if request.files is not None or request.data is not None:
        body, headers["Content-Type"] = urllib3.encode_multipart_formdata(
            {**(request.data or {}), **(request.files or {})}
        )
    elif request.json_body is not None:
        body = request.body
    timeout = model._timeout()
    try:
        return pool.urlopen(
            request.method,
            encoded_url(request),
            body=body,
            headers=headers,
            timeout=_urllib3_timeout(timeout.connect, timeout.read),
            pool_timeout=timeout.pool,
            preload_content=not request.stream,
            redirect=False,
            retries=False,
        )
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during=during) from None


def _let_go_sync(response: urllib3.BaseHTTPResponse) -> None:
    """Back to the pool if the answer was read to its end (urllib3 releases it then); else
    the connection is closed (the only way to tell a vendor mid-answer to stop)."""
    if response.connection is not None:
        response.close()
        response.release_conn()


def _asend_request(
    session: aiohttp.ClientSession,
    model: Exchange,
    request: VendorRequest,
    signature: dict[str, str],
    proxy: str | None,
) -> Any:
    """The aiohttp request (an awaitable context manager). The query string is encoded by
    httpx exactly as the sync side sends it, since some vendors sign it."""
    url: str | yarl.URL = request.url
    if request.params:
        url = yarl.URL(encoded_url(request), encoded=True)
    body: Any = None
    if request.files is not None or request.data is not None:
        body = aiohttp.FormData()
        for name, value in (request.data or {}).items():
            body.add_field(name, value)
        for name, (filename, content, content_type) in (request.files or {}).items():
            body.add_field(name, content, filename=filename, content_type=content_type)
    elif request.json_body is not None:
        body = request.body
    return session.request(
        request.method,
        url,
        data=body,
        headers=_headers(request, signature),
        timeout=_aiohttp_timeout(model._timeout()),
        allow_redirects=False,
        proxy=proxy,
    )


# --------------------------------------------------------------------------- calls


def send(
    model: Exchange, request: VendorRequest, client: urllib3.PoolManager | None = None
) -> tuple[Any, ResponseMeta]:
    """Send a non-streaming request with retries; the parsed JSON body and its metadata."""
    pool = client or _shared_pool(request.url)

    def attempt() -> tuple[Any, ResponseMeta]:
        response = _urlopen(pool, model, request, model._sign(request))
        return _raise_for_answer(model, response.status, response.headers, response.data)

    return _with_retries(model, attempt)


def fetch(
    model: Exchange,
    request: VendorRequest,
    client: urllib3.PoolManager | None = None,
    *,
    during: str = "request failed",
) -> urllib3.BaseHTTPResponse:
    """One unsigned request, no retries, the answer read whatever its status (for a
    vendor's own exchanges, such as fetching an access token)."""
    return _urlopen(client or _shared_pool(request.url), model, request, {}, during=during)


async def asend(
    model: Exchange, request: VendorRequest, client: aiohttp.ClientSession | None = None
) -> tuple[Any, ResponseMeta]:
    """The async twin of :func:`send`."""
    session = client or async_client()
    proxy = None if client else _proxy_of(request.url)

    async def attempt() -> tuple[Any, ResponseMeta]:
        signature = await model._asign(request)
        try:
            async with _asend_request(session, model, request, signature, proxy) as response:
                raw = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="request failed") from None
        return _raise_for_answer(model, response.status, response.headers, raw)

    return await _awith_retries(model, attempt)


@dataclass
class OpenedStream:
    """A stream whose headers arrived fine: either a live SSE response, or (for a vendor
    that answered a stream request with one JSON document) that document."""

    response: Any
    """``urllib3.BaseHTTPResponse`` (sync) or ``aiohttp.ClientResponse`` (async)."""
    meta: ResponseMeta
    whole_body: Any = None

    @property
    def is_sse(self) -> bool:
        return self.whole_body is None


def _is_event_stream(headers: Mapping[str, str]) -> bool:
    return "text/event-stream" in headers.get("content-type", "")


@contextlib.contextmanager
def open_stream(
    model: Exchange, request: VendorRequest, client: urllib3.PoolManager | None = None
) -> Iterator[OpenedStream]:
    """Open a streaming request, retrying until the answer's headers say it is good.
    Leaving it releases the connection as :func:`let_go` does."""
    pool = client or _shared_pool(request.url)
    request.stream = True

    def attempt() -> OpenedStream:
        response = _urlopen(pool, model, request, model._sign(request))
        if response.status < 400 and _is_event_stream(response.headers):
            return OpenedStream(response, _meta(model, response.status, response.headers))
        try:
            raw = response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="reading the answer failed") from None
        finally:
            _let_go_sync(response)
        body, meta = _raise_for_answer(model, response.status, response.headers, raw)
        return OpenedStream(response, meta, whole_body=body)

    opened = _with_retries(model, attempt)
    try:
        yield opened
    finally:
        _let_go_sync(opened.response)


async def aopen(
    model: Exchange, request: VendorRequest, client: aiohttp.ClientSession | None = None
) -> OpenedStream:
    """The async twin of :func:`open_stream`'s opening: a streaming request sent and
    retried until the answer's headers say it is good. Whoever holds the stream must
    :func:`let_go` of it however it ends."""
    session = client or async_client()
    proxy = None if client else _proxy_of(request.url)
    request.stream = True

    async def attempt() -> OpenedStream:
        signature = await model._asign(request)
        try:
            response = await _asend_request(session, model, request, signature, proxy)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="request failed") from None
        if response.status < 400 and _is_event_stream(response.headers):
            return OpenedStream(response, _meta(model, response.status, response.headers))
        try:
            raw = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="reading the answer failed") from None
        finally:
            response.release()
        body, meta = _raise_for_answer(model, response.status, response.headers, raw)
        return OpenedStream(response, meta, whole_body=body)

    return await _awith_retries(model, attempt)


def let_go(response: aiohttp.ClientResponse) -> None:
    """Release a stream :func:`aopen` opened: back to the pool if the answer was read to
    its end, else the connection is closed at once (the only way to tell a vendor
    mid-answer to stop)."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()
